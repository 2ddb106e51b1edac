"""Errors a user can fix, and the one way every LSKD console script reports them.

A console script prints such an error as one line, ``lskd-xxx: error: MESSAGE``, and exits with
status 2, as argparse does for a bad flag; ``LSKD_DEBUG=1`` shows the traceback instead. Anything
else (a bug) keeps its traceback. A disk that is full or read-only, or a file that may not be
written, is such an error too (:func:`disk_error_line`): the message names the path, never a signal or
an ``OSError`` traceback.
"""
from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

DEBUG_VARIABLE = "LSKD_DEBUG"


class LSKDError(Exception):
    """Input, settings or files that cannot be used as given; the message names the file, line or id
    at fault and, where there is one, the fix."""


class InvalidValueError(LSKDError, ValueError):
    """A setting or an input value outside what can make a run (a depth, a ratio, a file's contents)."""


def one_line(message: str) -> str:
    """``message`` with its line breaks folded, so that an error is one line of a log."""
    return " | ".join(part.strip() for part in str(message).splitlines() if part.strip())


def name_ids(ids: Sequence[int], shown: int = 20) -> str:
    """``ids`` for a one-line message: the first ``shown`` and how many more, e.g. ``3, 8, 9 and 41 more``."""
    ids = [int(i) for i in ids]
    listed = ", ".join(map(str, ids[:shown]))
    return f"{listed} and {len(ids) - shown} more" if len(ids) > shown else listed


def count_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for a count flag: an integer >= ``minimum``, else argparse's usage error
    (exit status 2), before any work; a negative count would otherwise slice lists from the end."""

    def parse(text: str) -> int:
        try:
            count = int(text)
        except ValueError:
            count = None
        if count is None or count < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return count

    return parse


def file_in_the_way(directory: str | os.PathLike) -> Path | None:
    """The existing file (not a directory) at ``directory`` or a folder above it, which would stop
    ``mkdir``; None if the directory exists or can be made."""
    path = Path(directory)
    for folder in (path, *path.parents):
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def output_directory(text: str) -> Path:
    """An argparse ``type`` for a directory a command writes: refused (argparse's usage error, exit
    status 2, before any work) if it or a folder above it is an existing file; it need not exist yet.
    Without it, ``mkdir`` would fail with a traceback, after the decoding in ``lskd-eval bleu``."""
    blocker = file_in_the_way(text)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text}: {blocker} is a file, not a directory")
    return Path(text)


#: errno values that say the output location, not LSKD, is at fault (full, read-only, not permitted)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def disk_error_line(error: OSError) -> str | None:
    """The one-line message for a disk error (``PATH: No space left on device``), None for any other
    ``OSError`` (a bug, which keeps its traceback)."""
    if error.errno not in DISK_ERRNOS:
        return None
    where = error.filename if error.filename is not None else "the output location"
    return f"{where}: {error.strerror or error}"


def finite_float(text: str) -> float:
    """An argparse ``type`` for a real-valued knob: a float that is finite. ``inf`` and ``nan`` parse
    as floats, and a temperature or weight of either makes the first update's gradients NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def console_script(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable[[Sequence[str] | None], int]]:
    """Decorate a console script's ``main(argv) -> exit status``: an :class:`LSKDError` or a disk error
    (:func:`disk_error_line`) becomes ``prog: error: ...`` on stderr and exit status 2 (a traceback only
    with ``LSKD_DEBUG=1``)."""

    def decorate(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            # a command's logging, as fairseq's own commands set it; without it, importing fairseq's
            # tasks (text_to_speech.py calls basicConfig(level=DEBUG)) prints hydra's debug lines
            logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
            logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # it narrates every paired bootstrap at INFO
            try:
                return main(argv)
            except (LSKDError, OSError) as err:
                message = str(err) if isinstance(err, LSKDError) else disk_error_line(err)
                if message is None or os.environ.get(DEBUG_VARIABLE) == "1":
                    raise
                print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
                return 2

        return run

    return decorate
