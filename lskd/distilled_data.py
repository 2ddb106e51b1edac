"""Clean sequence-level KD data: which distilled pairs a student should not learn from, and why.

A teacher's beam search degenerates on some inputs: it loops ("and the and the and the ..."),
stops early, or runs on to the length limit; a student trained on those outputs learns them. These
are the three filters in common use for distilled corpora, each with a default that leaves a good
teacher's output almost untouched:

* **loops**: the target repeats one trigram more than ``max_trigram_repeats`` times. Counted on
  SentencePiece pieces, so that it means the same in every language (Chinese has no spaces);
* **length ratio**: target pieces / source pieces outside ``[min_length_ratio, max_length_ratio]``
  (the ratio filter of Moses' ``clean-corpus-n.perl``, on pieces);
* **teacher score**: the teacher's log-probability per target token (end of sentence included)
  in the lowest ``score_quantile`` of the corpus (the least confident translations).

An empty target is always left out (a student would learn to stop at once). Every left-out pair
is counted under the first reason that applies, in the order above.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from lskd.errors import InvalidValueError

#: Why a distilled pair is left out, in the order the reasons are checked.
REASONS = ("empty_target", "loop", "length_ratio", "low_score")


@dataclass(frozen=True)
class FilterOptions:
    """The bounds of :func:`reason_to_drop`; ``enabled=False`` drops only empty targets."""

    enabled: bool = False
    max_trigram_repeats: int = 3
    min_length_ratio: float = 0.4
    max_length_ratio: float = 2.5
    score_quantile: float = 0.05

    def __post_init__(self) -> None:
        if self.max_trigram_repeats < 1:
            raise InvalidValueError(f"--max-trigram-repeats {self.max_trigram_repeats} must be at least 1")
        if not 0 < self.min_length_ratio < self.max_length_ratio:
            raise InvalidValueError(f"length ratio bounds {self.min_length_ratio}, {self.max_length_ratio}: "
                                    f"need 0 < --min-length-ratio < --max-length-ratio")
        if not 0 <= self.score_quantile < 1:
            raise InvalidValueError(f"--score-quantile {self.score_quantile} must be in [0, 1)")


def max_trigram_count(pieces: Sequence[str]) -> int:
    """How often the most frequent trigram of ``pieces`` occurs (0 for fewer than three pieces)."""
    trigrams = Counter(zip(pieces, pieces[1:], pieces[2:]))
    return max(trigrams.values(), default=0)


def loops(pieces: Sequence[str], max_trigram_repeats: int = 3) -> bool:
    """Whether some trigram occurs more than ``max_trigram_repeats`` times."""
    return max_trigram_count(pieces) > max_trigram_repeats


def length_ratio(source_pieces: Sequence[str], target_pieces: Sequence[str]) -> float:
    """Target length over source length, in pieces (a source has at least one piece)."""
    return len(target_pieces) / max(len(source_pieces), 1)


def score_per_token(score: float, target_pieces: int, lenpen: float) -> float:
    """The log-probability per token of a hypothesis whose ``score`` is normalised as fairseq's beam
    search does it: the sum over its tokens, end of sentence included, divided by ``length ** lenpen``
    (``SequenceGenerator.finalize_hypos``). At ``lenpen`` 1 the score is already per token."""
    length = target_pieces + 1
    return score * length ** lenpen / length


def score_threshold(scores: Iterable[float], quantile: float) -> float:
    """The ``quantile`` of ``scores`` (lower empirical quantile); scores below it are the lowest
    ``quantile``. ``-inf`` for quantile 0 or no scores, so that nothing is below it."""
    ordered = sorted(scores)
    if quantile <= 0 or not ordered:
        return -math.inf
    return ordered[min(int(quantile * len(ordered)), len(ordered) - 1)]


def reason_to_drop(source_pieces: Sequence[str], target_pieces: Sequence[str], score: float | None,
                   options: FilterOptions, threshold: float = -math.inf) -> str | None:
    """The first of :data:`REASONS` that applies to a distilled pair, or None to keep it.

    ``score``: the teacher's log-probability per token (:func:`score_per_token`), compared with
    ``threshold`` (:func:`score_threshold` over the corpus); None when unknown.
    """
    if not target_pieces:
        return "empty_target"
    if not options.enabled:
        return None
    if loops(target_pieces, options.max_trigram_repeats):
        return "loop"
    if not options.min_length_ratio <= length_ratio(source_pieces, target_pieces) <= options.max_length_ratio:
        return "length_ratio"
    if score is not None and score < threshold:
        return "low_score"
    return None


def describe_targets(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], max_trigram_repeats: int = 3) -> dict:
    """Loop rate (share of targets with a trigram repeated more than ``max_trigram_repeats`` times) and
    the target/source length ratio (mean, 5th and 95th percentile) of (source pieces, target pieces) pairs."""
    if not pairs:
        return {"pairs": 0, "loop_rate": None, "length_ratio": None}
    ratios = sorted(length_ratio(s, t) for s, t in pairs)

    def percentile(p: float) -> float:
        return round(ratios[min(int(p * len(ratios)), len(ratios) - 1)], 3)

    return {"pairs": len(pairs),
            "loop_rate": round(sum(loops(t, max_trigram_repeats) for _, t in pairs) / len(pairs), 4),
            "length_ratio": {"mean": round(sum(ratios) / len(ratios), 3), "p5": percentile(0.05),
                             "p95": percentile(0.95)}}
