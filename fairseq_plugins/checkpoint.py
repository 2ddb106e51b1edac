"""fairseq checkpoints: what they may hold under safe loading, reading them, what they say about training.

fairseq calls ``torch.load`` without ``weights_only``; since torch 2.6 that means the restricted
unpickler, which refuses ``argparse.Namespace`` (stored in every fairseq checkpoint's ``args``).
Instead of disabling the protection for the whole process (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``),
the plugin package allows exactly the harmless classes fairseq writes, when fairseq imports it
(``--user-dir fairseq_plugins``): fairseq's own command-line tools load checkpoints themselves, so
this one registration is what lets ``fairseq-generate`` or a resumed ``fairseq-train`` read them.
Anything else, notably a pickled code payload, stays refused.

What stock fairseq 0.12 writes, checked with real ``fairseq-train`` runs (``tests/test_safe_loading.py``):
``args`` (``argparse.Namespace``, older checkpoints), and with ``--eval-bleu`` the BLEU meters of
``extra_state["metrics"]``, which sum numpy integer arrays. fp16 / ``--amp`` trainer state
(``loss_scale``), ``--store-ema``, ``--keep-best-checkpoints`` and ``--patience`` add only tensors,
numbers and containers.
"""
from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from lskd.checkpoint import NUMPY_DATA_GLOBALS, CheckpointError, allowed, explain_unpickling_error, load_checkpoint

#: Classes that fairseq checkpoints carry besides tensors and builtin containers: the legacy ``args``
#: and numpy's numeric arrays and scalars (``--eval-bleu``'s meters).
FAIRSEQ_SAFE_GLOBALS: list[Any] = [argparse.Namespace, *NUMPY_DATA_GLOBALS]


def register_fairseq_safe_globals() -> None:
    """Allow fairseq's checkpoint contents in ``torch.load(weights_only=True)`` (idempotent).

    Called once, when fairseq imports the ``--user-dir`` package, for fairseq's own loaders.
    """
    known = set(torch.serialization.get_safe_globals())
    missing = [g for g in FAIRSEQ_SAFE_GLOBALS if g not in known]
    if missing:
        torch.serialization.add_safe_globals(missing)


def load_fairseq_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw state of a fairseq checkpoint, on CPU, with the restricted unpickler.

    Raises :class:`lskd.checkpoint.CheckpointError` (missing, corrupt) or
    :class:`lskd.checkpoint.UnsafeCheckpointError` (objects outside the allow-list; nothing run).
    """
    return load_checkpoint(path, safe_globals=FAIRSEQ_SAFE_GLOBALS)


def read_fairseq_state(path: str) -> dict[str, Any]:
    """A checkpoint through fairseq's own loader, which upgrades old checkpoints and makes ``cfg`` an
    OmegaConf object, as a model is built from it. Errors as :func:`load_fairseq_checkpoint`."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with allowed(FAIRSEQ_SAFE_GLOBALS):
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except pickle.UnpicklingError as err:
        raise explain_unpickling_error(path, err, FAIRSEQ_SAFE_GLOBALS) from err
    except Exception as err:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"checkpoint {path} is unreadable: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or "model" not in state or state.get("cfg") is None:
        raise CheckpointError(f"{path} is not a fairseq checkpoint (no 'model' and 'cfg' entries)")
    return state


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """A field of a checkpoint's config section, whether a dict, an OmegaConf node or an
    argparse.Namespace; ``default`` when the section is None or lacks the field."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


#: How many directories above a checkpoint's own a relative path it stores is looked for, when the
#: directory fairseq-train ran in cannot be inferred (``runs/NAME/SYSTEM/seedN/`` is four deep).
SEARCH_PARENTS = 4


def training_directory(checkpoint: str | os.PathLike, cfg: Any) -> Path | None:
    """The directory ``fairseq-train`` ran in, inferred from its ``--save-dir`` (fairseq records no working
    directory): a relative ``runs/x`` holding ``/work/runs/x/checkpoint_last.pt`` means ``/work``.

    None when ``--save-dir`` was absolute, climbs (``..``), or the checkpoint no longer lies under it.
    """
    save_dir = config_value(config_value(cfg, "checkpoint", {}), "save_dir")
    if not save_dir or os.path.isabs(save_dir):
        return None
    parts = Path(os.path.normpath(save_dir)).parts
    folder = Path(os.path.abspath(checkpoint)).parent
    if ".." in parts:
        return None
    if not parts:  # "."
        return folder
    return Path(*folder.parts[: -len(parts)]) if folder.parts[-len(parts):] == parts else None


def search_bases(checkpoint: str | os.PathLike, cfg: Any) -> list[Path]:
    """Where a relative path from a checkpoint's config is looked up, in order: the training directory
    (:func:`training_directory`), then the checkpoint's directory and its :data:`SEARCH_PARENTS`
    parents. Never the current directory: a record must not depend on where a command runs."""
    folder = Path(os.path.abspath(checkpoint)).parent
    bases = [training_directory(checkpoint, cfg), folder, *folder.parents[:SEARCH_PARENTS]]
    return list(dict.fromkeys(base for base in bases if base is not None))


def resolve_stored_paths(label: str, stored: str | None, checkpoint: str | os.PathLike, cfg: Any,
                         warnings: list[str]) -> str | None:
    """``stored`` (one path, or several joined by ``:`` as fairseq's data shards and LSKD's teacher
    ensembles are) with each part made absolute where it exists (:func:`search_bases`); a part found
    nowhere stays as stored and adds a warning to ``warnings`` that says where it was looked for."""
    if not stored:
        return stored
    bases = search_bases(checkpoint, cfg)
    resolved = []
    for part in str(stored).split(":"):
        candidates = [Path(part)] if os.path.isabs(part) else [Path(os.path.normpath(b / part)) for b in bases]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            warnings.append(f"{label} {part} not found" if os.path.isabs(part) else
                            f"{label} {part} (relative to where fairseq-train ran) not found under "
                            f"{', '.join(map(str, bases))}")
        resolved.append(str(found) if found else part)
    return ":".join(resolved)


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """What a fairseq checkpoint says about how it was trained: criterion, smoothing, KD knobs, teacher.

    Reports use it so that every row says which teacher and which distillation settings made it. The
    paths fairseq stored as given (teacher, top-k cache, data) come back absolute, resolved by
    :func:`resolve_stored_paths` so that the answer does not depend on the current directory; one
    that cannot be found is kept as stored and named in ``warnings``.
    """
    state = load_fairseq_checkpoint(path)
    cfg = state.get("cfg") or {}
    criterion, model, task = (config_value(cfg, section, {}) for section in ("criterion", "model", "task"))
    history = state.get("optimizer_history") or [{}]
    warnings: list[str] = []
    return {
        "criterion": config_value(criterion, "_name"),
        "label_smoothing": config_value(criterion, "label_smoothing"),
        "kd_alpha": config_value(criterion, "kd_alpha"),
        "kd_temperature": config_value(criterion, "kd_temperature"),
        "teacher_path": resolve_stored_paths("teacher", config_value(criterion, "teacher_path"), path, cfg, warnings),
        "teacher_topk": config_value(criterion, "teacher_topk"),
        "teacher_topk_cache": resolve_stored_paths("top-k cache", config_value(criterion, "teacher_topk_cache"), path, cfg,
                                                   warnings),
        "arch": config_value(model, "arch") or config_value(model, "_name"),
        "data": resolve_stored_paths("training data", config_value(task, "data"), path, cfg, warnings),
        "seed": config_value(config_value(cfg, "common", {}), "seed"),
        "num_updates": history[-1].get("num_updates"),
        "warnings": warnings,
    }
