"""Outputs that are never silently wrong: one writer per directory, files renamed into place, and
manifests that certify the files beside them.

Every resumable output of LSKD (distilled corpora, top-k caches, CTranslate2 exports) follows the
same three rules, kept here once:

* **one writer**: a command takes a lock on its output directory (:func:`writer_lock`), an
  ``flock`` on an open file, which the kernel releases when the holder exits or is killed, so no
  lock outlives its process (a marker file would, and would block every later run);
* **renamed into place**: a result is written beside its final place and renamed into it, so a
  kill leaves the old file or the new one, never half of one;
* **a certificate written last**: a manifest lists each file with its size and sha256
  (:func:`certify`) and is the last thing written; a reader refuses a file that does not match
  (:func:`verify_files`), naming it.

Nothing here changes process-wide state: locks are released when their context ends.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from lskd.errors import LSKDError
from lskd.provenance import sha256_file

LOCK_FILE = ".lskd.lock"


def default_cache_dir() -> Path:
    """LSKD's cache of downloads and conversions (the Bible database, CTranslate2 conversions of
    teachers): ``$LSKD_CACHE``, else ``~/.cache/lskd``."""
    return Path(os.environ.get("LSKD_CACHE", Path.home() / ".cache" / "lskd"))


class OutputError(LSKDError):
    """An output directory another process is writing, one that cannot be written, or files that do not
    match the manifest that certifies them."""


@contextlib.contextmanager
def writer_lock(directory: str | os.PathLike, *, name: str = LOCK_FILE, shared: bool = False,
                wait: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``directory/name`` for the body of the ``with``.

    ``shared``: several holders at once (shards of one job), but none while an exclusive holder runs.
    ``wait``: block until the lock is free (printing that it waits) instead of refusing.
    Raises :class:`OutputError` naming the directory (and the holder's pid, when an exclusive holder
    recorded it) when the lock is taken and ``wait`` is false. The lock file stays (an empty file);
    the lock itself dies with its holder, ``kill -9`` included."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise OutputError(f"{folder} is being written by another process{holder}: wait for it to finish, "
                                  f"or give another output directory") from None
            print(f"[lskd] waiting for another process{holder} writing {folder}", flush=True)
            fcntl.flock(fd, mode)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    """`` (pid N)`` for the exclusive holder that recorded its pid in the lock file, else empty."""
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(path.read_text().strip())})"
    return ""


def file_record(path: str | os.PathLike) -> dict[str, int | str]:
    """``{"bytes": size, "sha256": hex}`` of a file, for a manifest."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def certify(directory: str | os.PathLike, names: Iterable[str]) -> dict[str, dict[str, int | str]]:
    """Each file ``directory/NAME`` (NAME relative, ``/`` allowed) with its size and sha256, for the
    ``files`` entry of a manifest written after them."""
    root = Path(directory)
    return {name: file_record(root / name) for name in sorted(names)}


def mismatched_files(directory: str | os.PathLike, files: Mapping[str, Mapping[str, int | str]],
                     checksums: bool = True) -> list[str]:
    """The files of a manifest's ``files`` entry that are missing or differ in size (or, with
    ``checksums``, in sha256) from what it records, each as ``NAME (why)``."""
    root, wrong = Path(directory), []
    for name, expected in sorted(files.items()):
        path = root / name
        if not path.is_file():
            wrong.append(f"{name} (missing)")
        elif path.stat().st_size != expected.get("bytes"):
            wrong.append(f"{name} ({path.stat().st_size} bytes, the manifest says {expected.get('bytes')})")
        elif checksums and sha256_file(path) != expected.get("sha256"):
            wrong.append(f"{name} (sha256 differs from the manifest's)")
    return wrong


def verify_files(directory: str | os.PathLike, files: Mapping[str, Mapping[str, int | str]], manifest: str,
                 advice: str, checksums: bool = True) -> None:
    """Refuse (:class:`OutputError`) files in ``directory`` that do not match ``files``, the entry of
    the manifest ``manifest`` that certifies them, naming each, ending in ``advice`` (the fix)."""
    wrong = mismatched_files(directory, files, checksums)
    if wrong:
        raise OutputError(f"{directory}: {len(wrong)} file(s) do not match {manifest}: {', '.join(wrong)}; {advice}")


def check_writable(directory: str | os.PathLike, create: bool = True) -> None:
    """Make ``directory`` (and its parents) and write a probe file in it, so that a read-only or full
    location is an :class:`OutputError` naming it before any expensive work, not a traceback after.
    ``create=False`` makes nothing: a directory that does not exist yet is probed in its nearest
    existing parent (the file system it will be made on), so a command refused later leaves no trace."""
    folder = Path(directory)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probed = next((place for place in (folder, *folder.parents) if place.exists()), Path.cwd())
        with tempfile.NamedTemporaryFile(dir=probed, prefix=".lskd-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise OutputError(f"{folder}: cannot write here ({error.strerror or error})") from error


def preallocate(path: str | os.PathLike, size: int) -> None:
    """Reserve ``size`` bytes for the file at ``path`` now: a memory-mapped file that the disk cannot
    hold otherwise fails later with SIGBUS ("Bus error", no message) at the first page written.
    A full disk is an :class:`OutputError` naming the file and the bytes it needs."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, max(size, 1))
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise OutputError(f"{path}: not enough disk space for {size} bytes ({error.strerror})") from error
    finally:
        os.close(fd)


def changed_inputs(recorded: Mapping[str, object], wanted: Mapping[str, object],
                   labels: Mapping[str, str] | None = None) -> list[str]:
    """The inputs of an output whose recorded value differs from this run's, each as ``LABEL (OLD -> NEW)``
    (LABEL: ``labels[key]``, else the key; a hex digest shortened to 12 characters, a missing value
    ``unrecorded``), so that a refusal says what changed, e.g. ``the prepared data's fingerprint
    (3f2a09c41b77 -> 9c1b5e0d2a13)``."""
    labels = labels or {}
    return [f"{labels.get(key, key)} ({_shown(recorded.get(key))} -> {_shown(wanted.get(key))})"
            for key in sorted(set(recorded) | set(wanted)) if recorded.get(key) != wanted.get(key)]


def _shown(value: object) -> str:
    if value is None:
        return "unrecorded"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_shown, value)) or "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_shown(item)}" for key, item in value.items()) or "none"
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
