"""Offline teacher cache: per target token, the teacher's top-k indices (int32) and probabilities (fp16).

Memory-mapped ``.npy`` files, addressed by sentence id, so a student reads its teacher's
distribution for whatever sentences fairseq put in a batch, in any order, without a teacher in
memory. A ``manifest.json`` records what the cache was built from and certifies its arrays (sizes
and sha256, :func:`lskd.output_files.certify`); the reader refuses a cache whose arrays do not match
it, or that does not match the data or the teacher it is used with. At k = 8 an entry costs
8 * (4 + 2) = 48 bytes per target token, against 4 * V bytes for a full fp32 distribution.

A cache is written in a temporary directory beside its place (``.SPLIT.partial-PID``) and renamed
into place complete, manifest included: a killed writer leaves the old cache or the new one, and a
leftover (:func:`remove_leftovers`) that the next writer holding the directory's lock removes.

A sentence can be *skipped* on purpose (e.g. longer than the teacher accepts, which ``fairseq-train``
never batches either): it takes no space, the manifest counts it and lists its id with the reason,
and a lookup of it is refused, since it means the trainer and the cache disagree on what is trained.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import torch
from numpy.lib.format import dtype_to_descr, open_memmap, write_array_header_1_0
from numpy.typing import DTypeLike

from lskd import output_files
from lskd.errors import LSKDError, name_ids
from lskd.output_files import OutputError, certify, preallocate, verify_files
from lskd.provenance import read_json, write_json

MANIFEST = "manifest.json"
#: the files of a cache, each certified (size, sha256) in the manifest's ``files``
ARRAYS = ("offsets.npy", "indices.npy", "probs.npy")
#: the temporary directories beside a cache: one being written, one being replaced
TEMPORARY = ("partial", "replaced")
#: what a manifest records of the inputs that made a cache, and how a message names each
INPUTS = {"data_sha256": "data sha256", "teacher_sha256": "teacher sha256", "k": "k", "too_long": "too-long limits"}
REBUILD = "rebuild the cache with lskd-dump-topk --overwrite"


class TopKCacheError(LSKDError, ValueError):
    """A cache that is incomplete or does not belong to the data or teacher in use."""


class TopKCacheWriter:
    """Fill a cache sentence by sentence (any order); ``close`` checks that every sentence not in
    ``skipped`` is there. ``skip_reason`` says in the manifest why the skipped ones have no entry.

    The cache is written in a temporary directory beside ``directory`` (``.NAME.partial-PID``) and renamed
    into place by ``close``, its manifest written last: a cache already at ``directory`` stays whole
    until then. The arrays' disk space is reserved here, so a full disk is an
    :class:`~lskd.output_files.OutputError` naming the file before any entry, not SIGBUS mid-pass."""

    def __init__(self, directory: str | Path, k: int, target_lengths: Sequence[int], manifest: dict[str, Any],
                 skipped: Collection[int] = (), skip_reason: str | None = None):
        self.directory = Path(directory)
        lengths = np.array(target_lengths, dtype=np.int64)
        skipped = sorted({int(i) for i in skipped})
        outside = [i for i in skipped if not 0 <= i < len(lengths)]
        if outside:
            raise TopKCacheError(f"skipped sentence ids {name_ids(outside)} are not in the split ({len(lengths)} sentences)")
        self.skipped = np.zeros(len(lengths), dtype=bool)
        self.skipped[skipped] = True
        lengths[self.skipped] = 0  # no entry, no space
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.k = k
        self.manifest = dict(manifest, k=k, sentences=len(lengths), tokens=int(self.offsets[-1]),
                             skipped={"count": len(skipped), "ids": skipped, "reason": skip_reason})
        self.partial = _fresh_directory(_beside(self.directory, "partial"))
        np.save(self.partial / "offsets.npy", self.offsets)
        shape = (max(int(self.offsets[-1]), 1), k)
        self.indices = _reserved_array(self.partial / "indices.npy", np.int32, shape)
        self.probs = _reserved_array(self.partial / "probs.npy", np.float16, shape)
        self.written = np.zeros(len(lengths), dtype=bool)

    def write(self, sentence_id: int, indices: torch.Tensor, probs: torch.Tensor) -> None:
        if self.skipped[sentence_id]:
            raise TopKCacheError(f"sentence {sentence_id} is recorded as skipped: it takes no entry")
        start, end = self.offsets[sentence_id], self.offsets[sentence_id + 1]
        if indices.shape != (end - start, self.k):
            raise TopKCacheError(
                f"sentence {sentence_id}: expected {end - start} target tokens x k={self.k}, got {tuple(indices.shape)}"
            )
        self.indices[start:end] = indices.cpu().numpy().astype(np.int32)
        self.probs[start:end] = probs.cpu().float().numpy().astype(np.float16)
        self.written[sentence_id] = True

    def close(self) -> dict[str, Any]:
        """Certify the arrays in the manifest, written last, and rename the cache into place; returns the manifest."""
        missing = np.flatnonzero(~self.written & ~self.skipped)
        if len(missing):
            raise TopKCacheError(
                f"{len(missing)} of {len(self.written)} sentences have no teacher entry "
                f"(ids: {name_ids(missing)}); the cache was not finalised"
            )
        self.indices.flush()
        self.probs.flush()
        self.manifest["files"] = certify(self.partial, ARRAYS)
        write_json(self.partial / MANIFEST, self.manifest)
        _rename_into_place(self.partial, self.directory)
        return self.manifest


def _beside(directory: Path, role: str) -> Path:
    """``.NAME.ROLE-PID`` next to ``directory``: hidden from the splits of a cache directory, one per process."""
    return directory.parent / f".{directory.name}.{role}-{os.getpid()}"


def _fresh_directory(path: Path) -> Path:
    """``path``, made empty (one of a dead process with the same pid may be there)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _reserved_array(path: Path, dtype: DTypeLike, shape: tuple[int, int]) -> np.memmap:
    """A writable memory-mapped ``.npy`` file of ``shape`` (zeros), its disk space reserved before it is
    mapped (:func:`~lskd.output_files.preallocate`): a sparse file is SIGBUS at the first page the disk
    cannot hold."""
    with open(path, "wb") as file:
        write_array_header_1_0(file, {"descr": dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
        header_bytes = file.tell()
    preallocate(path, header_bytes + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return open_memmap(path, mode="r+")


def _rename_into_place(partial: Path, directory: Path) -> None:
    """Rename the finished ``partial`` to ``directory``; a cache already there is renamed aside first,
    then removed, so a kill leaves the old cache or the new one in place (or, between the two renames,
    none), never a mix."""
    if directory.exists():
        aside = _beside(directory, "replaced")
        shutil.rmtree(aside, ignore_errors=True)
        directory.rename(aside)
        partial.rename(directory)
        shutil.rmtree(aside)
    else:
        partial.rename(directory)


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Remove the temporary directories that killed writers left in ``directory`` (of split caches);
    returns them. Only for the holder of the directory's :func:`~lskd.output_files.writer_lock`: another
    writer's are in use."""
    leftovers = sorted(path for role in TEMPORARY for path in Path(directory).glob(f".*.{role}-*") if path.is_dir())
    for path in leftovers:
        shutil.rmtree(path)
    return leftovers


def changed_inputs(manifest: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
    """Each of ``inputs`` (keys of :data:`INPUTS`: what makes a cache) that ``manifest`` records
    otherwise, as ``NAME (OLD -> NEW)`` (:func:`lskd.output_files.changed_inputs`)."""
    return output_files.changed_inputs({key: manifest.get(key) for key in inputs}, inputs, INPUTS)


def splits_of_another_teacher(directory: str | Path, teacher_sha256: Sequence[str], k: int) -> list[Path]:
    """The finished split caches in ``directory`` made by other teachers or at another k. A cache
    directory holds one teacher's splits: training on one teacher's and validating on another's
    would be silently wrong."""
    found = []
    for manifest in sorted(Path(directory).glob(f"*/{MANIFEST}")):
        record = read_json(manifest, required=("k", "teacher_sha256"))
        if changed_inputs(record, {"teacher_sha256": list(teacher_sha256), "k": k}):
            found.append(manifest.parent)
    return found


class TopKCache:
    """Read side: look up a batch of sentences by id. Arrays that differ from what the manifest
    certifies (size or sha256) are refused, naming them, as is a cache whose manifest certifies none."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise TopKCacheError(f"{self.directory} is not a finished top-k cache (no {MANIFEST})")
        self.manifest = read_json(manifest_path, required=("k",))
        if not isinstance(self.manifest["k"], int) or self.manifest["k"] < 1:
            raise TopKCacheError(f"{manifest_path}: k = {self.manifest['k']!r} is not a count; rebuild the cache "
                                 f"with lskd-dump-topk")
        self.k = self.manifest["k"]
        self._verify_arrays(manifest_path)
        self.offsets = self._array("offsets", mmap_mode=None)
        self.indices, self.probs = self._array("indices"), self._array("probs")
        skipped = self.manifest.get("skipped") or {}  # caches written before skipping existed have none
        self.skipped = frozenset(skipped.get("ids", ()))
        self.skip_reason = skipped.get("reason")

    def _verify_arrays(self, manifest_path: Path) -> None:
        """A truncated or zeroed array would be read as entries (NaN gradients at the first update)."""
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not set(ARRAYS) <= set(files):
            raise TopKCacheError(f"{manifest_path} certifies no arrays (a cache written before lskd-dump-topk recorded "
                                 f"their sizes and sha256, or a damaged manifest): they cannot be checked; {REBUILD}")
        try:
            verify_files(self.directory, {name: files[name] for name in ARRAYS}, MANIFEST, REBUILD)
        except OutputError as error:
            raise TopKCacheError(str(error)) from error

    def _array(self, name: str, mmap_mode: str | None = "r") -> np.ndarray:
        """``NAME.npy`` of the cache; a truncated or missing file is named (numpy's own message does
        not say which)."""
        path = self.directory / f"{name}.npy"
        try:
            return np.load(path, mmap_mode=mmap_mode)
        except (OSError, ValueError) as error:
            raise TopKCacheError(f"{path}: unreadable ({error}); rebuild the cache with lskd-dump-topk") from error

    def check(self, *, data_sha256: str, vocab_size: int | None = None, teacher_sha256: Sequence[str] | None = None) -> None:
        """Refuse a cache made for other data or another teacher, or one with k beyond the vocabulary."""
        if self.manifest.get("data_sha256") != data_sha256:
            raise TopKCacheError(
                f"top-k cache {self.directory} was built for data {self.manifest.get('data_sha256', '?')[:12]} "
                f"({self.manifest.get('data', '?')}), not for this data ({data_sha256[:12]}); rebuild it with lskd-dump-topk"
            )
        if teacher_sha256 is not None and list(teacher_sha256) != self.manifest.get("teacher_sha256"):
            raise TopKCacheError(
                f"top-k cache {self.directory} was built with teacher(s) {self.manifest.get('teacher_sha256')}, "
                f"not {list(teacher_sha256)}"
            )
        if vocab_size is not None and self.k > vocab_size:
            raise TopKCacheError(f"top-k cache k={self.k} is larger than the vocabulary ({vocab_size})")

    def lookup(self, sentence_ids: Sequence[int], target_lengths: Sequence[int], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_length, k) indices and teacher log-probabilities; padding positions hold index 0, log-prob 0.

        A sentence id out of range, skipped when the cache was built, or of another length is a
        :class:`TopKCacheError`."""
        batch = len(sentence_ids)
        indices = np.zeros((batch, max_length, self.k), dtype=np.int64)
        log_probs = np.zeros((batch, max_length, self.k), dtype=np.float32)
        for row, (sid, length) in enumerate(zip(sentence_ids, target_lengths)):
            if not 0 <= sid < len(self.offsets) - 1:
                raise TopKCacheError(f"sentence id {sid} is not in the top-k cache ({len(self.offsets) - 1} sentences)")
            if sid in self.skipped:
                raise TopKCacheError(
                    f"sentence {sid} has no entry in top-k cache {self.directory}: it was skipped when the cache was "
                    f"built ({self.skip_reason or 'no reason recorded'}), yet the trainer asked for it"
                )
            start, end = self.offsets[sid], self.offsets[sid + 1]
            if end - start != length:
                raise TopKCacheError(
                    f"sentence {sid}: the cache has {end - start} target tokens but the data has {length}: "
                    f"the cache was built for other data"
                )
            indices[row, :length] = self.indices[start:end]
            with np.errstate(divide="ignore"):
                log_probs[row, :length] = np.log(self.probs[start:end].astype(np.float32))
        return torch.from_numpy(indices), torch.from_numpy(log_probs)
