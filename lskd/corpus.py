"""Parallel-corpus utilities: strict line reading, line-count checks and what counts as empty.

Every data-producing step in LSKD reads through here, so that a bad byte, a mismatched pair of
files or a dropped line is reported with the file and line it concerns instead of vanishing.
"""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from lskd.errors import LSKDError


class CorpusError(LSKDError, ValueError):
    """Input data that cannot be used as given; the message names the file and the problem."""


def iter_lines(stream: BinaryIO, origin: str) -> Iterator[str]:
    """The UTF-8 lines of a binary stream, split at ``\\n`` only, without their ``\\n`` or ``\\r\\n`` end.

    The one line splitter of LSKD: every text it reads (corpus files, archive members, decoder
    output, chunk files) comes through here. It splits where the Perl and shell tools of fairseq's
    recipes split; ``str.splitlines`` also breaks inside a sentence at U+2028, U+2029, U+0085, VT,
    FF, FS, GS, RS and a lone CR, which misaligns parallel lines. (fairseq-preprocess itself also
    splits at a lone CR, but the SentencePiece text LSKD hands it holds none: the ``nmt_nfkc``
    normalisation removes control characters.)

    Raises:
        CorpusError: a line is not valid UTF-8; the message names ``origin``, the line and column.
    """
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorpusError(
                f"{origin}, line {number}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
            ) from None
        yield text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def read_lines(path: str | os.PathLike) -> list[str]:
    """Read a text file as UTF-8 lines (see :func:`iter_lines`); name file and line on bad bytes."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    with open(path, "rb") as handle:
        return list(iter_lines(handle, str(path)))


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


#: Unicode categories that print nothing: separators, controls and format characters (U+200B
#: zero-width space, U+FEFF byte-order mark, soft hyphen, direction marks).
_INVISIBLE = {"Zs", "Zl", "Zp", "Cc", "Cf"}


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character that prints; a side without one carries no translation."""
    return any(unicodedata.category(char) not in _INVISIBLE for char in text)


@dataclass
class ParallelSplit:
    """One split of a parallel corpus: aligned source and target lines, as read."""

    name: str
    source: list[str]
    target: list[str]


def read_parallel(name: str, source_path: str | os.PathLike, target_path: str | os.PathLike) -> ParallelSplit:
    """Read a source/target file pair and check that they align and are not empty.

    Pairs with an empty side are kept here: whether a side is empty is judged on what gets
    binarized, after normalisation and subword encoding (see ``data_prep.pipeline``).
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
    return ParallelSplit(name=name, source=source, target=target)
