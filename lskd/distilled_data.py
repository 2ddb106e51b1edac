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

A fourth filter looks at the source: **unknown source**, a source whose pieces the teacher's
dictionary mostly maps to ``<unk>`` (share above ``max_unknown_share``): monolingual text in a script
the teacher's vocabulary does not cover, which it "translates" into loops of frequent words.

An empty target is always left out (a student would learn to stop at once). Every left-out pair
is counted under the first reason that applies: empty target, unknown source, then the three above
in their order.

A distilled directory is certified by its manifest ``distill.json`` (written last, listing the size
and sha256 of every file of ``bin/``, ``spm/`` and ``raw/``); :func:`read_distilled` is how a reader
gets it, refusing files that do not match.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from lskd.errors import InvalidValueError
from lskd.output_files import verify_files
from lskd.provenance import read_json

#: Why a distilled pair is left out, in the order the reasons are checked.
REASONS = ("empty_target", "unknown_source", "loop", "length_ratio", "low_score")
#: SentencePiece's word-boundary piece: alone, it precedes a character the model does not know.
WORD_BOUNDARY = "\u2581"
MANIFEST = "distill.json"


@dataclass(frozen=True)
class FilterOptions:
    """The bounds of :func:`reason_to_drop`; ``enabled=False`` drops only empty targets."""

    enabled: bool = False
    max_trigram_repeats: int = 3
    min_length_ratio: float = 0.4
    max_length_ratio: float = 2.5
    score_quantile: float = 0.05
    max_unknown_share: float = 0.5

    def __post_init__(self) -> None:
        if self.max_trigram_repeats < 1:
            raise InvalidValueError(f"--max-trigram-repeats {self.max_trigram_repeats} must be at least 1")
        if not 0 < self.min_length_ratio < self.max_length_ratio:
            raise InvalidValueError(f"length ratio bounds {self.min_length_ratio}, {self.max_length_ratio}: "
                                    f"need 0 < --min-length-ratio < --max-length-ratio")
        if not 0 <= self.score_quantile < 1:
            raise InvalidValueError(f"--score-quantile {self.score_quantile} must be in [0, 1)")
        if not 0 <= self.max_unknown_share <= 1:
            raise InvalidValueError(f"--max-unknown-share {self.max_unknown_share} must be in [0, 1]")


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


def unknown_share(source_pieces: Sequence[str], unknown: int) -> float:
    """The share of a source's pieces that the teacher's dictionary maps to ``<unk>`` (``unknown`` of
    them), bare word-boundary pieces not counted: SentencePiece splits ``\u2581`` off every word it cannot
    piece together, so a line in a script the vocabulary lacks is half ``\u2581`` and half ``<unk>``."""
    text_pieces = sum(piece != WORD_BOUNDARY for piece in source_pieces)
    return unknown / text_pieces if text_pieces else 0.0


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
                   options: FilterOptions, threshold: float = -math.inf, unknown_source: float = 0.0) -> str | None:
    """The first of :data:`REASONS` that applies to a distilled pair, or None to keep it.

    ``score``: the teacher's log-probability per token (:func:`score_per_token`), compared with
    ``threshold`` (:func:`score_threshold` over the corpus); None when unknown. ``unknown_source``:
    the source's share of ``<unk>`` pieces (:func:`unknown_share`).
    """
    if not target_pieces:
        return "empty_target"
    if not options.enabled:
        return None
    if unknown_source > options.max_unknown_share:
        return "unknown_source"
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


def read_distilled(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a distilled directory (``lskd-distill-corpus --out``), after checking that every
    file it certifies is there with its recorded size and sha256.

    Raises :class:`lskd.provenance.RecordError` for a missing or damaged ``distill.json`` and
    :class:`lskd.output_files.OutputError` naming each file that does not match it. A manifest written
    before LSKD certified its files (no ``files`` entry) is returned unchecked.
    """
    advice = f"run lskd-distill-corpus again on {directory} to remake it"
    manifest = read_json(Path(directory) / MANIFEST, advice=advice)
    if "files" in manifest:
        verify_files(directory, manifest["files"], MANIFEST, advice)
    return manifest
