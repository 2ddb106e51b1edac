"""Sentences too long for a model: which ones, for what limits, and what a command does with them.

The decision itself is fairseq's (:func:`fairseq_plugins.tasks.check_lengths`); this is its
fairseq-free record. Every LSKD command names the same two policies: ``error`` stops with one line
naming the ids at fault, ``skip`` leaves them out, counted and listed in the command's JSON record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lskd.errors import LSKDError, name_ids

#: What a command does with too-long sentences: stop naming them, or leave them out (counted, ids recorded).
TOO_LONG_POLICIES = ("error", "skip")


class TooLongError(LSKDError, ValueError):
    """Sentences longer than the models accept, and no policy that leaves them out."""


@dataclass(frozen=True)
class LengthCheck:
    """Which sentences of a split fairseq will not batch for given models.

    ``max_positions``: (source, target) tokens accepted, end of sentence included; None = no limit on
    that side. ``too_long``: sorted ids whose source or target is longer.
    """

    split: str
    max_positions: tuple[int | None, int | None]
    sentences: int
    too_long: tuple[int, ...]

    @property
    def kept(self) -> int:
        return self.sentences - len(self.too_long)

    @property
    def limits(self) -> str:
        """What "too long" means here, e.g. ``source > 40 or target > 40 tokens``."""
        source, target = self.max_positions
        sides = [f"{side} > {limit}" for side, limit in (("source", source), ("target", target)) if limit is not None]
        return " or ".join(sides) + " tokens"

    def describe(self) -> str:
        """One line: how many sentences are too long, for what limits, and their ids (first 20)."""
        return (f"{len(self.too_long)} of {self.sentences} '{self.split}' sentences are longer than the model "
                f"accepts ({self.limits}, end of sentence included): ids {name_ids(self.too_long)}")

    def left_out_warning(self) -> str:
        """The line a record (and the report made from it) carries when a number leaves sentences out."""
        return (f"{self.kept} of {self.sentences} '{self.split}' sentences used: {len(self.too_long)} longer than "
                f"the model accepts ({self.limits}) left out, ids {name_ids(self.too_long)}")

    def enforce(self, policy: str, hint: str) -> None:
        """Raise :class:`TooLongError` (with ``hint``, the flag that names the other policy) when sentences
        are too long and ``policy`` is ``error``."""
        if policy not in TOO_LONG_POLICIES:
            raise TooLongError(f"too-long policy {policy!r} is not one of {', '.join(TOO_LONG_POLICIES)}")
        if self.too_long and policy == "error":
            raise TooLongError(f"{self.describe()}; {hint}")

    def record(self, policy: str) -> dict[str, Any]:
        """The policy, the limits and the ids left out, for a JSON record."""
        source, target = self.max_positions
        return {"policy": policy, "max_source_positions": source, "max_target_positions": target,
                "sentences": self.sentences, "skipped": len(self.too_long), "skipped_ids": list(self.too_long)}
