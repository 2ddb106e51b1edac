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
from typing import Any

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


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write a JSON record atomically, so a killed run never leaves half a manifest (the temporary
    file is per process: shards of one job may write the same record side by side)."""
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)
