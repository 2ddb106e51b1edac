"""Offline teacher cache: per target token, the teacher's top-k indices (int32) and probabilities (fp16).

Memory-mapped ``.npy`` files, addressed by sentence id, so a student reads its teacher's
distribution for whatever sentences fairseq put in a batch, in any order, without a teacher in
memory. A ``manifest.json`` records what the cache was built from; the reader refuses a cache that
does not match the data or the teacher it is used with. At k = 8 an entry costs 8 * (4 + 2) =
48 bytes per target token, against 4 * V bytes for a full fp32 distribution.

A sentence can be *skipped* on purpose (e.g. longer than the teacher accepts, which ``fairseq-train``
never batches either): it takes no space, the manifest counts it and lists its id with the reason,
and a lookup of it is refused, since it means the trainer and the cache disagree on what is trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch
from numpy.lib.format import open_memmap

from lskd.errors import LSKDError, name_ids
from lskd.provenance import read_json, write_json

MANIFEST = "manifest.json"


class TopKCacheError(LSKDError, ValueError):
    """A cache that is incomplete or does not belong to the data or teacher in use."""


class TopKCacheWriter:
    """Fill a cache sentence by sentence (any order); ``close`` checks that every sentence not in
    ``skipped`` is there. ``skip_reason`` says in the manifest why the skipped ones have no entry."""

    def __init__(self, directory: str | Path, k: int, target_lengths: Sequence[int], manifest: dict[str, Any],
                 skipped: Collection[int] = (), skip_reason: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
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
        (self.directory / MANIFEST).unlink(missing_ok=True)  # no manifest = not finished
        np.save(self.directory / "offsets.npy", self.offsets)
        shape = (max(int(self.offsets[-1]), 1), k)
        self.indices = open_memmap(self.directory / "indices.npy", mode="w+", dtype=np.int32, shape=shape)
        self.probs = open_memmap(self.directory / "probs.npy", mode="w+", dtype=np.float16, shape=shape)
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
        missing = np.flatnonzero(~self.written & ~self.skipped)
        if len(missing):
            raise TopKCacheError(
                f"{len(missing)} of {len(self.written)} sentences have no teacher entry "
                f"(ids: {name_ids(missing)}); the cache was not finalised"
            )
        self.indices.flush()
        self.probs.flush()
        write_json(self.directory / MANIFEST, self.manifest)
        return self.manifest


def splits_of_another_teacher(directory: str | Path, teacher_sha256: Sequence[str], k: int) -> list[Path]:
    """The finished split caches in ``directory`` made by other teachers or at another k. A cache
    directory holds one teacher's splits: training on one teacher's and validating on another's
    would be silently wrong."""
    found = []
    for manifest in sorted(Path(directory).glob(f"*/{MANIFEST}")):
        record = read_json(manifest, required=("k", "teacher_sha256"))
        if record["teacher_sha256"] != list(teacher_sha256) or record["k"] != k:
            found.append(manifest.parent)
    return found


class TopKCache:
    """Read side: look up a batch of sentences by id."""

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
        self.offsets = self._array("offsets", mmap_mode=None)
        self.indices, self.probs = self._array("indices"), self._array("probs")
        skipped = self.manifest.get("skipped") or {}  # caches written before skipping existed have none
        self.skipped = frozenset(skipped.get("ids", ()))
        self.skip_reason = skipped.get("reason")

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
