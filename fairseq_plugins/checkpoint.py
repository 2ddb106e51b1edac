"""fairseq checkpoints: what they may hold under safe loading, reading them, what they say about training.

fairseq calls ``torch.load`` without ``weights_only``; since torch 2.6 that means the restricted
unpickler, which refuses ``argparse.Namespace`` (stored in every fairseq checkpoint's ``args``).
Instead of disabling the protection for the whole process (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``),
the plugin package allows exactly the harmless classes fairseq writes, when fairseq imports it
(``--user-dir fairseq_plugins``): fairseq's own command-line tools load checkpoints themselves, so
this one registration is what lets ``fairseq-generate`` or a resumed ``fairseq-train`` read them.
Anything else, notably a pickled code payload, stays refused.
"""
from __future__ import annotations

import argparse
import os
import pickle
from typing import Any

import torch

from lskd.checkpoint import CheckpointError, allowed, explain_unpickling_error, load_checkpoint

#: Classes that fairseq checkpoints carry besides tensors and builtin containers.
FAIRSEQ_SAFE_GLOBALS: list[Any] = [argparse.Namespace]


def register_fairseq_safe_globals() -> None:
    """Allow fairseq's checkpoint contents in ``torch.load(weights_only=True)`` (idempotent).

    Called once, when fairseq imports the ``--user-dir`` package, for fairseq's own loaders.
    """
    known = set(map(id, torch.serialization.get_safe_globals()))
    missing = [g for g in FAIRSEQ_SAFE_GLOBALS if id(g) not in known]
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
        raise explain_unpickling_error(path, err) from err
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


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """What a fairseq checkpoint says about how it was trained: criterion, smoothing, KD knobs, teacher.

    Reports use it so that every row says which teacher and which distillation settings made it.
    """
    state = load_fairseq_checkpoint(path)
    cfg = state.get("cfg") or {}
    criterion, model, task = (config_value(cfg, section, {}) for section in ("criterion", "model", "task"))
    history = state.get("optimizer_history") or [{}]
    return {
        "criterion": config_value(criterion, "_name"),
        "label_smoothing": config_value(criterion, "label_smoothing"),
        "kd_alpha": config_value(criterion, "kd_alpha"),
        "kd_temperature": config_value(criterion, "kd_temperature"),
        "teacher_path": config_value(criterion, "teacher_path"),
        "teacher_topk": config_value(criterion, "teacher_topk"),
        "teacher_topk_cache": config_value(criterion, "teacher_topk_cache"),
        "arch": config_value(model, "arch") or config_value(model, "_name"),
        "data": config_value(task, "data"),
        "seed": config_value(config_value(cfg, "common", {}), "seed"),
        "num_updates": history[-1].get("num_updates"),
    }
