"""Load frozen fairseq teachers (one checkpoint or an ensemble) for a student's task.

Shared by the KD criterion and ``lskd-dump-topk``. A teacher is checked against the student's
target dictionary before it is built, so a mismatch names the differing tokens instead of failing
inside ``load_state_dict`` with a tensor-shape error.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fairseq_plugins.checkpoint import read_fairseq_state
from lskd.checkpoint import CheckpointError, UnsafeCheckpointError
from lskd.errors import LSKDError
from lskd.provenance import sha256_file

logger = logging.getLogger(__name__)


class TeacherError(LSKDError, ValueError):
    """A teacher that cannot be used with this student; the message says why."""


@dataclass
class TeacherInfo:
    path: str
    sha256: str
    label_smoothing: float | None
    criterion: str | None
    num_updates: int | None


def split_teacher_paths(teacher_path: str) -> list[str]:
    """``a.pt:b.pt`` -> two ensemble members (fairseq's own ``--path`` convention)."""
    paths = [p for p in teacher_path.split(":") if p]
    if not paths:
        raise TeacherError("--teacher-path is empty")
    return paths


def describe_teachers(teacher_path: str) -> list[TeacherInfo]:
    """What the manifest of a distillation says about each teacher, read without building a model."""
    from fairseq_plugins.checkpoint import describe_checkpoint

    infos = []
    for path in split_teacher_paths(teacher_path):
        described = describe_checkpoint(path)
        infos.append(TeacherInfo(path=os.path.abspath(path), sha256=sha256_file(path),
                                 label_smoothing=described["label_smoothing"], criterion=described["criterion"],
                                 num_updates=described["num_updates"]))
    return infos


def _read_state(path: str) -> dict:
    """The teacher's state through fairseq's loader; a missing or unreadable file is a :class:`TeacherError`."""
    try:
        return read_fairseq_state(path)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as err:
        raise TeacherError(f"teacher {err}") from err


def _output_vocab_size(model_state: dict) -> int | None:
    for key in ("decoder.output_projection.weight", "decoder.embed_tokens.weight"):
        if key in model_state:
            return int(model_state[key].shape[0])
    return None


def check_dictionary(path: str, state: dict, student_dict, target_lang: str) -> None:
    """Refuse a teacher whose target dictionary differs from the student's, naming the difference."""
    from fairseq.data import Dictionary

    task_cfg = state["cfg"]["task"]
    data = str(task_cfg.get("data", "") or "").split(":")[0]
    dict_file = Path(data) / f"dict.{task_cfg.get('target_lang') or target_lang}.txt"
    if data and dict_file.is_file():
        teacher_dict = Dictionary.load(str(dict_file))
        if teacher_dict.symbols != student_dict.symbols:
            differing = [
                (i, a, b) for i, (a, b) in enumerate(zip(teacher_dict.symbols, student_dict.symbols)) if a != b
            ][:5]
            raise TeacherError(
                f"teacher {path} was trained with target dictionary {dict_file} ({len(teacher_dict)} types) "
                f"but the student's has {len(student_dict)} types; first differences (index, teacher, student): "
                f"{differing}. Teacher and student must share one dictionary (lskd-prepare makes a joined one)."
            )
        return
    size = _output_vocab_size(state["model"])
    if size is not None and size != len(student_dict):
        raise TeacherError(
            f"teacher {path} predicts {size} target types but the student's dictionary has "
            f"{len(student_dict)}: they were not trained on the same dictionary"
        )
    logger.warning(f"teacher data {data!r} not found: checked only the dictionary size ({len(student_dict)})")


def load_teachers(teacher_path: str, task) -> tuple[list[torch.nn.Module], list[TeacherInfo]]:
    """Build each teacher in eval mode, on CPU; log its label smoothing.

    A teacher is frozen by use, not by flag: it runs only under ``torch.no_grad``
    (:func:`teacher_log_probs`, fairseq's ``inference_step``) and sits in no optimizer, so it never
    gets a gradient. Its parameters keep ``requires_grad=True`` on purpose: with a frozen weight,
    ``torch.matmul`` stops folding fairseq's strided (B, 1, C) decoder states into one ``mm`` and
    runs a ``bmm`` over an expanded output projection instead (pytorch/pytorch#186148), which
    made beam search 1.7x slower on CPU (``benchmarks/distill_throughput.py``).
    """
    from fairseq import checkpoint_utils

    models, infos = [], []
    for path in split_teacher_paths(teacher_path):
        state = _read_state(path)
        check_dictionary(path, state, task.target_dictionary, task.cfg.target_lang)
        criterion_cfg = state["cfg"].get("criterion") or {}
        history = state.get("optimizer_history") or [{}]
        info = TeacherInfo(
            path=os.path.abspath(path),
            sha256=sha256_file(path),
            label_smoothing=criterion_cfg.get("label_smoothing"),
            criterion=criterion_cfg.get("_name"),
            num_updates=history[-1].get("num_updates"),
        )
        (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([path], task=task, state=state)
        model.eval()
        logger.info(
            f"teacher {path}: criterion {info.criterion}, label smoothing {info.label_smoothing}, "
            f"{info.num_updates} updates, sha256 {info.sha256[:12]}"
        )
        models.append(model)
        infos.append(info)
    return models, infos


@torch.no_grad()
def teacher_log_probs(teachers: list[torch.nn.Module], net_input: dict) -> torch.Tensor:
    """(B, T, V) log-probabilities at T = 1 under teacher forcing; an ensemble averages probabilities."""
    from lskd.losses import ensemble_log_probs

    member_lprobs = [t.get_normalized_probs(t(**net_input), log_probs=True) for t in teachers]
    return member_lprobs[0] if len(member_lprobs) == 1 else ensemble_log_probs(member_lprobs)
