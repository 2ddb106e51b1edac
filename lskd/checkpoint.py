"""Safe loading of fairseq checkpoints with torch's ``weights_only=True`` unpickler.

fairseq calls ``torch.load`` without ``weights_only``; since torch 2.6 that means the restricted
unpickler, which refuses ``argparse.Namespace`` (stored by fairseq in every checkpoint's ``args``).
Instead of disabling the protection for the whole process, we allow exactly the harmless classes
that fairseq writes. Anything else, notably a pickled ``__reduce__`` payload, stays refused.
"""
from __future__ import annotations

import argparse
import os
import pickle
from typing import Any

import torch

#: Classes that fairseq checkpoints carry besides tensors and builtin containers.
FAIRSEQ_SAFE_GLOBALS: list[Any] = [argparse.Namespace]


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds objects outside the allow-list; it was not executed."""


def register_fairseq_safe_globals() -> None:
    """Allow fairseq's checkpoint contents in ``torch.load(weights_only=True)`` (idempotent)."""
    known = set(map(id, torch.serialization.get_safe_globals()))
    missing = [g for g in FAIRSEQ_SAFE_GLOBALS if id(g) not in known]
    if missing:
        torch.serialization.add_safe_globals(missing)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with the restricted unpickler; explain a refusal instead of a traceback.

    Raises ``FileNotFoundError`` for a missing file and ``UnsafeCheckpointError`` when the file
    holds anything that is not on the allow-list (the payload is never run).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    register_fairseq_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise explain_unpickling_error(path, err) from err


def explain_unpickling_error(path: str, err: pickle.UnpicklingError) -> Exception:
    """Tell a refused object (possible code payload) from a file that is simply not a checkpoint."""
    if "global" not in str(err).lower():
        return ValueError(f"{path} is unreadable as a torch checkpoint (corrupt or not a checkpoint): "
                          f"{str(err).splitlines()[-1] if str(err) else err}")
    return UnsafeCheckpointError(
        f"refused to load {path}: it holds objects that are not plain tensors or known fairseq "
        f"state, so it may run code when unpickled. Nothing from it was executed. "
        f"Only load it with an unrestricted loader if you trust its origin. Details: {err}"
    )


def _get(config: Any, key: str, default: Any = None) -> Any:
    """Read a field from a checkpoint's config section, whether a dict or an argparse.Namespace."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """What a fairseq checkpoint says about how it was trained: criterion, smoothing, KD knobs, teacher.

    Reports use it so that every row says which teacher and which distillation settings made it.
    """
    state = load_checkpoint(path)
    cfg = state.get("cfg") or {}
    criterion, model, task = _get(cfg, "criterion", {}), _get(cfg, "model", {}), _get(cfg, "task", {})
    history = state.get("optimizer_history") or [{}]
    return {
        "criterion": _get(criterion, "_name"),
        "label_smoothing": _get(criterion, "label_smoothing"),
        "kd_alpha": _get(criterion, "kd_alpha"),
        "kd_temperature": _get(criterion, "kd_temperature"),
        "teacher_path": _get(criterion, "teacher_path"),
        "teacher_topk": _get(criterion, "teacher_topk"),
        "teacher_topk_cache": _get(criterion, "teacher_topk_cache"),
        "arch": _get(model, "arch") or _get(model, "_name"),
        "data": _get(task, "data"),
        "seed": _get(_get(cfg, "common", {}), "seed"),
        "num_updates": history[-1].get("num_updates"),
    }
