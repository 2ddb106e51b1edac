"""Parallel-corpus utilities: strict reading, line-count checks and empty-pair filtering.

Every data-producing step in LSKD reads through here, so that a bad byte, a mismatched pair of
files or a dropped line is reported with the file and line it concerns instead of vanishing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lskd.errors import LSKDError


class CorpusError(LSKDError, ValueError):
    """Input data that cannot be used as given; the message names the file and the problem."""


def read_lines(path: str | os.PathLike) -> list[str]:
    """Read a text file as UTF-8 lines without their line ends; name file and line on bad bytes."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{path}, line {number}: not valid UTF-8 (byte {raw[err.start]:#04x} at "
                    f"column {err.start + 1})"
                ) from None
            lines.append(text.rstrip("\r\n"))
    return lines


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> int:
    """Write one line per item (newline-terminated); return how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            if "\n" in line:
                raise CorpusError(f"{path}: item {count + 1} contains a newline")
            handle.write(line + "\n")
            count += 1
    return count


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines in a file, counting a last line without a newline."""
    count = 0
    last = b"\n"
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


@dataclass
class ParallelSplit:
    """One split of a parallel corpus after reading and filtering."""

    name: str
    source: list[str]
    target: list[str]
    dropped_empty: int


def read_parallel(name: str, source_path: str | os.PathLike, target_path: str | os.PathLike) -> ParallelSplit:
    """Read a source/target file pair, check they align, and drop (and count) empty-side pairs.

    An empty-side pair carries no translation, and leaving it in would make fairseq train on an
    end-of-sentence-only target; it is dropped and the count is returned for the manifest.
    """
    source = read_lines(source_path)
    target = read_lines(target_path)
    if len(source) != len(target):
        raise CorpusError(
            f"{name} split: line counts differ: {source_path} has {len(source)} lines, "
            f"{target_path} has {len(target)} lines"
        )
    if not source:
        raise CorpusError(f"{name} split is empty: {source_path} and {target_path} have no lines")
    kept = [(s, t) for s, t in zip(source, target) if s.strip() and t.strip()]
    if not kept:
        raise CorpusError(
            f"{name} split is empty after dropping pairs with an empty side "
            f"({source_path}, {target_path})"
        )
    return ParallelSplit(
        name=name,
        source=[s for s, _ in kept],
        target=[t for _, t in kept],
        dropped_empty=len(source) - len(kept),
    )
