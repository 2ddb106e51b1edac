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
    state = load_fairseq_checkpoint(path)
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
