"""Load frozen fairseq teachers (one checkpoint or an ensemble) for a student's task.

Shared by the KD criterion and ``lskd-dump-topk``, and by the commands that translate or measure a
checkpoint on prepared data (their errors speak of a checkpoint and the data: :data:`EVAL_ROLES`).
A teacher is checked against the student's target and source dictionaries before it is built, so a
mismatch names both dictionary files and the differing tokens instead of failing inside
``load_state_dict`` with a tensor-shape error. The
teacher's architecture is its own (any fairseq encoder-decoder: a post-norm Transformer, an LSTM):
only its vocabulary must be the student's.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import NamedTuple

import torch

from fairseq_plugins.checkpoint import read_fairseq_state
from lskd.checkpoint import CheckpointError, UnsafeCheckpointError
from lskd.errors import LSKDError
from lskd.provenance import sha256_file
from lskd.teacher_spec import read_teacher_spec
from lskd.too_long import TeacherLimits

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


def split_teacher_paths(teacher_path: str, *, fairseq_only: bool = True) -> list[str]:
    """``a.pt:b.pt`` -> two ensemble members (fairseq's own ``--path`` convention). With ``fairseq_only``
    (what every reader of fairseq checkpoints asks: the KD criterion, ``lskd-dump-topk``, ``lskd-eval``'s
    analyses), a Hugging Face or CTranslate2 model directory is a :class:`TeacherError` pointing to
    sequence-level KD, the one way LSKD distils such a teacher yet."""
    paths = [p for p in teacher_path.split(":") if p]
    if not paths:
        raise TeacherError("--teacher-path is empty")
    if fairseq_only:
        for path in paths:
            refuse_outside_teacher(path)
    return paths


def refuse_outside_teacher(path: str) -> None:
    """A directory given where a fairseq checkpoint is read: a Hugging Face or CTranslate2 teacher (or a
    directory of no known kind) is refused in one line, instead of fairseq's error on a directory."""
    if not os.path.isdir(path):
        return
    spec = read_teacher_spec(path)  # a directory of no known kind: says what was looked for
    raise TeacherError(f"{path} is a {spec.kind} model directory ({spec.architecture}): word-level KD from a Hugging "
                       f"Face or CTranslate2 teacher is not supported yet, and this command reads fairseq checkpoints; "
                       f"distil it at sequence level with lskd-distill-corpus --teacher-path {path}")


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


def _read_state(path: str, roles: Roles) -> dict:
    """The checkpoint's state through fairseq's loader; a missing or unreadable file is a :class:`TeacherError`."""
    try:
        return read_fairseq_state(path)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as err:
        raise TeacherError(f"{roles.model} {err}") from err


#: Where a fairseq model keeps its embedding tables, per side: (source input, target output).
_VOCABULARY_WEIGHTS = {
    "source": ("encoder.embed_tokens.weight",),
    "target": ("decoder.output_projection.weight", "decoder.fc_out.weight", "decoder.embed_tokens.weight"),
}


class Roles(NamedTuple):
    """How a dictionary mismatch names its two sides: the checkpoint's role, whose dictionaries the
    data's are (``the student's``), the two in a list of differences, why each side must match, and the fix."""

    model: str
    data: str
    columns: str
    why: dict[str, str]
    fix: str


#: A teacher against a student's data (the KD criterion, lskd-dump-topk)
KD_ROLES = Roles("teacher", "the student's", "teacher, student", {
    "target": "word-level KD compares teacher and student distributions over one target dictionary",
    "source": "the teacher reads the student's source tokens (online KD, lskd-dump-topk), so the source "
              "dictionaries must match too",
}, "prepare the student's data in the teacher's vocabulary (lskd-prepare text ... --teacher TEACHER)")
#: A model translated or measured on prepared data (lskd-eval, lskd-distill-corpus)
EVAL_ROLES = Roles("checkpoint", "the data's", "checkpoint, data", {
    "target": "the model's output ids must be the data's target tokens",
    "source": "the model reads the data's source token ids",
}, "prepare the data in the checkpoint's vocabulary (lskd-prepare text ... --teacher CHECKPOINT)")


def _vocabulary_size(model_state: dict, side: str) -> int | None:
    """Rows of the teacher's source embedding or target output layer, as its weights hold them."""
    for key in _VOCABULARY_WEIGHTS[side]:
        if key in model_state:
            return int(model_state[key].shape[0])
    return None


def output_embeddings(model: torch.nn.Module) -> torch.Tensor:
    """The (V, d) weights of a fairseq model's target output layer (a transformer's ``output_projection``,
    an LSTM's ``fc_out``, or the tied embeddings): one template vector per target class, as the
    penultimate-layer picture needs them. A model without one (adaptive softmax) is a :class:`TeacherError`."""
    state = model.state_dict(keep_vars=True)  # every name of a tied weight, unlike named_parameters
    for key in _VOCABULARY_WEIGHTS["target"]:
        if key in state:
            return state[key].detach()
    raise TeacherError(f"{type(model).__name__} has no target output layer among "
                       f"{', '.join(_VOCABULARY_WEIGHTS['target'])} (an adaptive softmax?): no class templates")


def decoder_features(model: torch.nn.Module, net_input: dict) -> torch.Tensor:
    """(batch, target length, d) decoder states that the output layer turns into logits, teacher-forced
    on ``net_input`` (a fairseq batch's). Through ``encoder`` and ``decoder.extract_features``, which
    transformers and LSTMs share (an LSTM model's forward has no ``features_only``)."""
    encoder_out = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
    return model.decoder.extract_features(net_input["prev_output_tokens"], encoder_out)[0]


def _first_differences(model: list[str], data: list[str], limit: int = 5) -> list[tuple[int, str | None, str | None]]:
    """(index, checkpoint's symbol, data's symbol) where the two dictionaries differ (None past an end)."""
    return [(i, a, b) for i, (a, b) in enumerate(zip_longest(model, data)) if a != b][:limit]


def check_dictionaries(path: str, state: dict, task, roles: Roles = KD_ROLES) -> None:
    """Refuse a teacher whose target or source dictionary differs from the student's, naming both files
    (``roles``: the words for the two sides, :data:`KD_ROLES` or :data:`EVAL_ROLES`).

    The teacher's dictionaries are found beside its checkpoint (a published model directory) or in
    the data directory its config names; where neither holds one, the sizes of its embedding
    tables are compared instead (a warning says so).
    """
    from fairseq.data import Dictionary

    from fairseq_plugins.teacher_vocabulary import checkpoint_dictionary

    teacher_task = state["cfg"]["task"]
    student_data = Path(str(task.cfg.data).split(os.pathsep)[0])
    sides = {
        "target": (teacher_task.get("target_lang") or task.cfg.target_lang, task.cfg.target_lang, task.target_dictionary),
        "source": (teacher_task.get("source_lang") or task.cfg.source_lang, task.cfg.source_lang, task.source_dictionary),
    }
    for side, (teacher_lang, student_lang, student_dict) in sides.items():
        student_file = student_data / f"dict.{student_lang}.txt"
        teacher_file = checkpoint_dictionary(path, state["cfg"], teacher_lang)
        if teacher_file is not None:
            teacher_dict = Dictionary.load(str(teacher_file))
            if teacher_dict.symbols != student_dict.symbols:
                raise TeacherError(
                    f"{roles.model} {path} was trained with {side} dictionary {teacher_file} ({len(teacher_dict)} "
                    f"types) but {roles.data} {side} dictionary is {student_file} ({len(student_dict)} types); first "
                    f"differences (index, {roles.columns}): "
                    f"{_first_differences(teacher_dict.symbols, student_dict.symbols)}. {roles.why[side]}: {roles.fix}"
                )
            continue
        size = _vocabulary_size(state["model"], side)
        if size is not None and size != len(student_dict):
            raise TeacherError(
                f"{roles.model} {path} has {size} {side} types but {roles.data} {side} dictionary {student_file} has "
                f"{len(student_dict)}: they were not trained on the same dictionary ({roles.why[side]})"
            )
        logger.warning(f"{roles.model} {path}: no {side} dictionary found beside it or in its data directory; "
                       f"checked only the {side} vocabulary size ({len(student_dict)})")


def load_teachers(teacher_path: str, task, roles: Roles = KD_ROLES) -> tuple[list[torch.nn.Module], list[TeacherInfo]]:
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
        state = _read_state(path, roles)
        check_dictionaries(path, state, task, roles)
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


def teacher_limits(teachers: list[torch.nn.Module], paths: list[str]) -> TeacherLimits:
    """The (source, target) positions every teacher accepts (each model's ``max_positions()``, which
    is its config's limit for learned and sinusoidal positions alike), naming the checkpoint of each."""
    from fairseq import utils

    return TeacherLimits.tightest([(path, tuple(utils.resolve_max_positions((None, None), model.max_positions())))
                                   for path, model in zip(paths, teachers)])


@torch.no_grad()
def teacher_log_probs(teachers: list[torch.nn.Module], net_input: dict) -> torch.Tensor:
    """(B, T, V) log-probabilities at T = 1 under teacher forcing; an ensemble averages probabilities."""
    from lskd.losses import ensemble_log_probs

    member_lprobs = [t.get_normalized_probs(t(**net_input), log_probs=True) for t in teachers]
    return member_lprobs[0] if len(member_lprobs) == 1 else ensemble_log_probs(member_lprobs)
