"""lskd.distilled_data: which distilled pairs are left out, checked against counts made by hand."""
import math
from itertools import product

import pytest

from data_prep.distill import Candidate, decide
from lskd.distilled_data import (FilterOptions, describe_targets, length_ratio, loops, max_trigram_count,
                                 reason_to_drop, score_per_token, score_threshold)
from lskd.errors import InvalidValueError


def test_a_loop_is_a_trigram_seen_more_than_the_allowed_times():
    looping = "▁and ▁the ▁lord " * 4 + "▁said"
    assert max_trigram_count(looping.split()) == 4 and loops(looping.split(), 3) and not loops(looping.split(), 4)
    assert not loops(("▁and ▁the ▁lord " * 3).split(), 3)
    assert max_trigram_count(["a", "b"]) == 0
    # against a count by brute force over every position
    pieces = "a b a b a b a b a".split()
    brute = max(sum(pieces[j:j + 3] == pieces[i:i + 3] for j in range(len(pieces) - 2)) for i in range(len(pieces) - 2))
    assert max_trigram_count(pieces) == brute == 4


def test_score_per_token_undoes_fairseqs_length_normalisation():
    token_logprobs = [-0.5, -1.0, -2.0, -0.25]  # three pieces and the end of sentence
    for lenpen in (0.6, 1.0, 1.4):
        fairseq_score = sum(token_logprobs) / len(token_logprobs) ** lenpen  # SequenceGenerator.finalize_hypos
        assert score_per_token(fairseq_score, 3, lenpen) == pytest.approx(sum(token_logprobs) / 4)


def test_the_score_threshold_leaves_out_exactly_the_lowest_share():
    scores = [float(s) for s in range(100, 0, -1)]
    threshold = score_threshold(scores, 0.05)
    assert sum(s < threshold for s in scores) == 5
    assert score_threshold(scores, 0) == -math.inf and score_threshold([], 0.1) == -math.inf


def test_reasons_are_checked_in_order_and_only_with_the_filter_on():
    on, off = FilterOptions(enabled=True), FilterOptions()
    source = "▁in ▁the ▁beginning ▁was ▁the ▁word".split()
    loop = ("▁the ▁word ▁was " * 5).split()  # loops and is too long (ratio 15 / 6)
    assert reason_to_drop(source, [], -0.1, off) == "empty_target"
    assert reason_to_drop(source, loop, -9.0, off) is None
    assert reason_to_drop(source, loop, -9.0, on, threshold=-1.0) == "loop"
    assert reason_to_drop(source, ["▁in"], -0.1, on) == "length_ratio" and length_ratio(source, ["▁in"]) == 1 / 6
    assert reason_to_drop(source, source, -2.0, on, threshold=-1.0) == "low_score"
    assert reason_to_drop(source, source, -0.5, on, threshold=-1.0) is None
    assert reason_to_drop(source, source, None, on, threshold=-1.0) is None


@pytest.mark.parametrize("bad", [{"max_trigram_repeats": 0}, {"min_length_ratio": 3.0}, {"min_length_ratio": 0},
                                 {"score_quantile": 1.0}, {"score_quantile": -0.1}])
def test_bounds_that_cannot_filter_are_refused(bad):
    with pytest.raises(InvalidValueError):
        FilterOptions(enabled=True, **bad)


def test_loop_rate_and_length_ratio_of_a_corpus():
    pairs = [("a b".split(), "x y z x y z x y z x y z".split()), ("a b c d".split(), "x y".split())]
    described = describe_targets(pairs)
    assert described["loop_rate"] == 0.5 and described["length_ratio"]["mean"] == (6 + 0.5) / 2
    assert describe_targets([])["loop_rate"] is None


@pytest.mark.parametrize("filtered, too_long", product(["drop", "copy-reference"], ["drop", "copy-reference"]))
def test_every_input_has_one_outcome_and_copies_need_a_reference(filtered, too_long):
    source = "▁a ▁b ▁c ▁d"
    candidates = [Candidate(source, "A", "▁w ▁x ▁y ▁z", -0.1, "▁r", "R"),  # kept
                  Candidate(source, "B", None, None, "▁r", "R"),  # too long
                  Candidate(source, "C", "", -0.1, "▁r", "R"),  # empty output
                  Candidate(source, "D", "▁o ▁p ▁q ▁r ▁s ▁t ▁u ▁v ▁w ▁x ▁y", -0.1, "▁r", "R"),  # 11 / 4 pieces
                  Candidate(source, "E", "", -0.1)]  # source text: no reference
    written, outcomes = decide(candidates, too_long, FilterOptions(enabled=True), filtered, -math.inf, 1.0)
    copy = "copied_reference" if filtered == "copy-reference" else "dropped"
    assert outcomes == ["decoded", f"too_long_{'copied_reference' if too_long == 'copy-reference' else 'dropped'}",
                        f"empty_target_{copy}", f"length_ratio_{copy}", "empty_target_dropped"]
    assert [(c.raw_source, target, raw) for c, target, raw in written] == (
        [("A", "▁w ▁x ▁y ▁z", None)] + ([("B", "▁r", "R")] if too_long == "copy-reference" else [])
        + ([("C", "▁r", "R"), ("D", "▁r", "R")] if filtered == "copy-reference" else []))
