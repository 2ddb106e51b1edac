"""Safe loading of checkpoints with torch's ``weights_only=True`` unpickler.

The restricted unpickler builds tensors and plain containers only; anything else in a file (notably
a pickled ``__reduce__`` payload) is refused without being run. A caller that knows a format's
harmless classes (fairseq's, in :mod:`fairseq_plugins.checkpoint`) allows exactly those, for its
own loads.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Sequence

import torch

from lskd.errors import LSKDError


class CheckpointError(LSKDError, ValueError):
    """A checkpoint that is missing or unreadable; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects outside the allow-list; it was not executed."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    safe_globals: Sequence[Any] = ()) -> Any:
    """Load a checkpoint with the restricted unpickler, allowing ``safe_globals`` for this load only.

    Raises :class:`CheckpointError` for a missing or corrupt file and :class:`UnsafeCheckpointError`
    when the file holds anything that is not on the allow-list (the payload is never run).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with allowed(safe_globals):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise explain_unpickling_error(path, err) from err
    except (RuntimeError, EOFError, OSError) as err:  # truncated zip, not a zip, unreadable
        raise CheckpointError(f"{path} is unreadable as a torch checkpoint (corrupt or not a checkpoint): "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def allowed(safe_globals: Sequence[Any]) -> torch.serialization.safe_globals:
    """A context in which ``safe_globals`` load too. Those already allowed process-wide are left out, so
    that leaving the context (which removes what it added) does not withdraw them."""
    registered = set(torch.serialization.get_safe_globals())
    return torch.serialization.safe_globals([g for g in safe_globals if g not in registered])


def explain_unpickling_error(path: str, err: pickle.UnpicklingError) -> CheckpointError:
    """Tell a refused object (possible code payload) from a file that is simply not a checkpoint."""
    if "global" not in str(err).lower():
        return CheckpointError(f"{path} is unreadable as a torch checkpoint (corrupt or not a checkpoint): "
                               f"{str(err).splitlines()[-1] if str(err) else err}")
    return UnsafeCheckpointError(
        f"refused to load {path}: it holds objects that are not plain tensors or known fairseq "
        f"state, so it may run code when unpickled. Nothing from it was executed. "
        f"Only load it with an unrestricted loader if you trust its origin. Details: {err}"
    )
