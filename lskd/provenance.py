"""Provenance for every file LSKD writes: tool versions, the command line, a timestamp, file hashes.

Like sacrebleu's signatures, a number in a report is only useful if one can tell how it was made.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from lskd.errors import LSKDError

_DISTRIBUTIONS = ("lskd", "ve-fairseq", "torch", "ctranslate2", "sentencepiece", "sacremoses", "sacrebleu", "numpy")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed (corpora and checkpoints need not fit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour shapes LSKD's outputs."""
    versions = {"python": platform.python_version()}
    for name in _DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance() -> dict[str, Any]:
    """The command, time and versions that produced a result."""
    return {
        "command": shlex.join(sys.argv),
        "cwd": os.getcwd(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": tool_versions(),
    }


class RecordError(LSKDError):
    """A JSON record (``prep.json``, ``export.json``, a score record) that cannot be read as one."""


def read_json(path: str | os.PathLike, required: Sequence[str] = (),
              advice: str = "rerun the command that wrote it") -> dict[str, Any]:
    """The JSON object in ``path``, which has every ``required`` key (dotted for nested ones, e.g.
    ``"checkpoint.sha256"``). A file that is unreadable, not JSON, not an object or short of a key is a
    :class:`RecordError` naming it and ending in ``advice`` (the caller's fix, e.g. ``--overwrite``): a
    damaged record would otherwise surface as a traceback far from it."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"{path}: not a readable JSON record ({error}); {advice}") from error
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, found a {type(record).__name__}; {advice}")
    for dotted in required:
        value: Any = record
        for key in dotted.split("."):
            if not isinstance(value, dict) or key not in value:
                writer = written_by(record)
                kind = f"written by '{writer}': another kind of record, or damaged" if writer else \
                    "damaged, or not written by LSKD"
                raise RecordError(f"{path}: the record has no '{dotted}' ({kind}); {advice}")
            value = value[key]
    return record


def written_by(record: dict[str, Any]) -> str | None:
    """The command that wrote ``record``, as its ``command`` field names it: the program and its
    subcommand (``lskd-eval stability``), so that a record given to the wrong reader says what it is."""
    words = str(record.get("command") or "").split()
    if not words:
        return None
    program = Path(words[0]).name
    subcommand = words[1] if len(words) > 1 and not words[1].startswith("-") else ""
    return f"{program} {subcommand}".strip()


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write a JSON record atomically, so a killed run never leaves half a manifest (the temporary
    file is per process: shards of one job may write the same record side by side)."""
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)
