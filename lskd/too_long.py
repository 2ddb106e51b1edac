"""Sentences too long for a model: which ones, for what limits, and what a command does with them.

The decision itself is fairseq's (:func:`fairseq_plugins.tasks.check_lengths`); this is its
fairseq-free record. Every LSKD command names the same two policies: ``error`` stops with one line
naming the ids at fault, ``skip`` leaves them out, counted and listed in the command's JSON record.
Online KD names them too, for a student that accepts longer pairs than its teachers
(:class:`TeacherLimits`): ``error`` refuses it at start, ``skip`` leaves those pairs out of the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

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


#: fairseq-train's flags for a model's limits, per side (source, target)
POSITION_FLAGS = ("--max-source-positions", "--max-target-positions")


@dataclass(frozen=True)
class TeacherLimits:
    """The longest pair that every teacher of an ensemble accepts in online KD.

    ``positions``: per side (source, target), the tightest limit among the teachers, in tokens with
    the end of sentence (None = no limit); ``teachers``: the checkpoint that sets each limit. A
    learned-position teacher has no embedding past its limit; a sinusoidal one has, but never trained
    past it: either way its limit is the one in its config.
    """

    positions: tuple[int | None, int | None]
    teachers: tuple[str | None, str | None]

    @classmethod
    def tightest(cls, members: Sequence[tuple[str, tuple[int | None, int | None]]]) -> TeacherLimits:
        """The limits of an ensemble from its members' ``(checkpoint, (source, target) limits)``."""
        positions, teachers = [], []
        for side in (0, 1):
            limited = [(limits[side], path) for path, limits in members if limits[side] is not None]
            limit, path = min(limited) if limited else (None, None)
            positions.append(limit)
            teachers.append(path)
        return cls(tuple(positions), tuple(teachers))

    def exceeded_sides(self, student: tuple[int | None, int | None]) -> list[int]:
        """The sides (0 = source, 1 = target) on which ``student`` accepts longer sentences than the teachers."""
        return [side for side, (mine, theirs) in enumerate(zip(student, self.positions))
                if theirs is not None and (mine is None or mine > theirs)]

    def refusal(self, student: tuple[int | None, int | None], other_policy: str) -> str:
        """One line naming, for each exceeded side, both limits and the teacher, then the fix:
        the teacher's limits as the student's flags, or ``other_policy`` (the flag that skips instead)."""
        sides = self.exceeded_sides(student)
        by_teacher: dict[str | None, list[int]] = {}
        for side in sides:
            by_teacher.setdefault(self.teachers[side], []).append(side)
        excess = "; ".join(
            f"student {' and '.join(f'{POSITION_FLAGS[side]} {student[side]}' for side in its_sides)} "
            f"{'exceeds' if len(its_sides) == 1 else 'exceed'} the teacher's "
            f"{' and '.join(str(self.positions[side]) for side in its_sides)} ({teacher})"
            for teacher, its_sides in by_teacher.items())
        flags = " ".join(f"{POSITION_FLAGS[side]} {self.positions[side]}" for side in sides)
        return f"{excess}: train with {flags}, or pass {other_policy}"
