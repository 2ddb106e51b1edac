"""Safe loading of checkpoints with torch's ``weights_only=True`` unpickler.

The restricted unpickler builds tensors and plain containers only; anything else in a file (notably
a pickled ``__reduce__`` payload) is refused without being run. A caller that knows a format's
harmless classes (fairseq's, in :mod:`fairseq_plugins.checkpoint`) allows exactly those, for its
own loads. A refusal names each refused global and where in the state it sits, found by reading the
pickle without calling anything in it.
"""
from __future__ import annotations

import _compat_pickle
import os
import pickle
import re
import zipfile
from collections import Counter
from typing import Any, Iterator, Sequence

import numpy
import torch

from lskd.errors import LSKDError, one_line

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

#: The numpy globals that rebuild numeric arrays, dtypes and scalars, as torch's serialization notes
#: list them for ``weights_only=True`` (``_reconstruct``, ``ndarray``, ``dtype``, the concrete dtype
#: classes, ``scalar``). ``_reconstruct`` and ``scalar`` are named as numpy 1.x (``numpy.core``) and
#: numpy 2.x (``numpy._core``) write them. Only bool, integer and floating-point dtypes: an object,
#: string or structured array stays refused.
NUMPY_DATA_GLOBALS: list[Any] = [
    *[(getattr(_multiarray, name), f"{module}.multiarray.{name}")
      for name in ("_reconstruct", "scalar") for module in ("numpy.core", "numpy._core")],
    numpy.ndarray, numpy.dtype,
    *[type(numpy.dtype(t)) for t in (numpy.bool_, numpy.int8, numpy.int16, numpy.int32, numpy.int64, numpy.uint8,
                                     numpy.uint16, numpy.uint32, numpy.uint64, numpy.float16, numpy.float32,
                                     numpy.float64)],
]


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
        raise explain_unpickling_error(path, err, safe_globals) from err
    except (RuntimeError, EOFError, OSError) as err:  # truncated zip, not a zip, unreadable
        raise CheckpointError(f"checkpoint {path} is unreadable (corrupt, or not a torch checkpoint): "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def allowed(safe_globals: Sequence[Any]) -> torch.serialization.safe_globals:
    """A context in which ``safe_globals`` load too. Those already allowed process-wide are left out, so
    that leaving the context (which removes what it added) does not withdraw them."""
    registered = set(torch.serialization.get_safe_globals())
    return torch.serialization.safe_globals([g for g in safe_globals if g not in registered])


def explain_unpickling_error(path: str, err: pickle.UnpicklingError,
                             safe_globals: Sequence[Any] = ()) -> CheckpointError:
    """Tell a refused object (possible code payload) from a file that is simply not a checkpoint.

    A refusal names each global outside the allow-list (``safe_globals`` and torch's own) with where
    in the state it first sits, e.g. ``extra_state.metrics.valid[3][3].sum``; torch's own text,
    which advises turning the protection off, is not passed on.
    """
    text = str(err)
    if "global" not in text.lower() and "Can only build" not in text:  # e.g. "Unsupported operand 110"
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
        return CheckpointError(f"checkpoint {path} is unreadable (corrupt, or not a torch checkpoint): "
                               f"{one_line(reason.group(1) if reason else text)}")
    with allowed(safe_globals):
        refused = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    built = re.search(r"Can only build .* but got <class '([^']+)'>", text)
    if built:  # a class that an allowed callable returned, e.g. numpy's dtype of an object array
        refused.append(built.group(1))
    places = global_locations(path)
    order = list(places)
    refused = sorted(set(refused), key=lambda name: order.index(name) if name in places else len(order))
    described = [f"{name} (at {places[name][0]}{_more(places[name][1])})" if name in places else name
                 for name in refused]
    return UnsafeCheckpointError(
        f"refused to load {path}: unpickling it would call {', '.join(described) or 'an unknown global'}, "
        f"outside the allow-list of tensors, plain data and known checkpoint contents (a checkpoint can "
        f"run code this way). Nothing from it was executed. Load it only if you trust its origin, with "
        f"a loader that allows exactly what it holds."
    )


def _more(count: int) -> str:
    return f" and {count - 1} more place{'s' if count > 2 else ''}" if count > 1 else ""


class _Recorded:
    """What the pickle of a checkpoint builds from one global: recorded, never called."""

    name = "?"

    def __new__(cls, *args: Any) -> "_Recorded":  # both REDUCE (a call) and NEWOBJ come here
        obj = super().__new__(cls)
        obj.args, obj.state, obj.items = args, None, []
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append((len(self.items), value))

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


class _RecordingUnpickler(pickle.Unpickler):
    """Reads a pickle's structure: every global becomes a :class:`_Recorded` class, every tensor storage
    a placeholder. Nothing named in the pickle is imported or run."""

    def find_class(self, module: str, name: str) -> type:
        # the names Python 2 used, as protocol 2 writes them (``__builtin__``), mapped as pickle does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return type(name, (_Recorded,), {"name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        return None


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """(path step, child) of a container or a recorded object: ``.key`` or ``[index]``, and ``""`` for
    the parts of an object that no key reaches (a constructor's arguments, a state that is no dict)."""
    if isinstance(obj, _Recorded):
        yield from (("", arg) for arg in obj.args)
        if isinstance(obj.state, dict):
            yield from _children(obj.state)
        elif isinstance(obj.state, tuple):
            yield from (("", part) for part in obj.state)
        elif obj.state is not None:
            yield "", obj.state
        pairs = obj.items
    elif isinstance(obj, dict):
        pairs = obj.items()
    elif isinstance(obj, (list, tuple)):
        pairs = enumerate(obj)
    else:
        return
    for key, value in pairs:
        yield (f".{key}" if isinstance(key, str) else f"[{key!r}]"), value


def global_locations(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """{global name: (first path in the state where it is used, how many places use it)} of a
    ``torch.save`` zip file, read without unpickling anything; ``{}`` for other files."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            root = _RecordingUnpickler(archive.open(name)).load()
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, OSError, EOFError):
        return {}
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    stack, seen = [("", root)], set()
    while stack:
        where, obj = stack.pop()
        if isinstance(obj, _Recorded) or (isinstance(obj, type) and issubclass(obj, _Recorded)):
            first.setdefault(obj.name, where.lstrip(".") or "the top level")
            counts[obj.name] += 1
        if id(obj) in seen:  # an object the pickle refers to twice: its insides are counted once
            continue
        seen.add(id(obj))
        stack.extend((where + step, child) for step, child in reversed(list(_children(obj))))
    return {name: (first[name], counts[name]) for name in first}
