"""The ship decision (lskd.ship): ratios, the gate and the report's first lines against hand computation."""
from __future__ import annotations

import pytest

from lskd.ship import Measured, ShipRecordError, check_comparable, decide, engine_run, headline, percent_of_teacher

TEACHER = Measured({"chrf": 50.0, "bleu": 20.0, "comet": None}, words_per_second=1000.0, size_bytes=40_000_000)


def student(chrf: float, bleu: float = 18.0) -> Measured:
    return Measured({"chrf": chrf, "bleu": bleu, "comet": None}, words_per_second=3500.0, size_bytes=8_000_000)


def test_ratios_and_shares_match_hand_computation():
    decision = decide(TEACHER, student(46.0), "chrf", 90)
    assert decision["faster"] == 3.5  # 3500 / 1000 words/s
    assert decision["smaller"] == 5.0  # 40 MB / 8 MB
    assert decision["percent_of_teacher"] == {"chrf": pytest.approx(92.0), "bleu": pytest.approx(90.0), "comet": None}
    assert decision["gate"] == {"metric": "chrf", "percent_of_teacher": 90, "passed": True}
    assert headline(decision) == [
        "student: 3.50 x faster, 5.00 x smaller, at 92.00 % of the teacher's chrF (BLEU 90.00 %, COMET not measured)",
        "ship gate chrF >= 90 % of the teacher's: passed"]


@pytest.mark.parametrize("chrf,passed", [(45.0, True), (44.995, False), (45.005, True)])
def test_the_gate_compares_the_unrounded_share(chrf, passed):
    """45 / 50 is exactly 90 %: passed; 44.995 / 50 = 89.99 % is not, whatever the rounding shows."""
    assert decide(TEACHER, student(chrf), "chrf", 90)["gate"]["passed"] is passed


def test_the_gate_on_another_metric_leads_the_line_and_a_teacher_at_zero_says_so():
    decision = decide(TEACHER, student(30.0, bleu=19.0), "bleu", 95)
    assert headline(decision) == [
        "student: 3.50 x faster, 5.00 x smaller, at 95.00 % of the teacher's BLEU (chrF 60.00 %, COMET not measured)",
        "ship gate BLEU >= 95 % of the teacher's: passed"]
    zero = Measured({"chrf": 50.0, "bleu": 0.0, "comet": None}, 1000.0, 40_000_000)
    decision = decide(zero, student(46.0), "bleu", 90)
    assert decision["percent_of_teacher"]["bleu"] is None and not decision["gate"]["passed"]
    assert headline(decision)[0].endswith("BLEU n/a (teacher 0.00) (chrF 92.00 %, COMET not measured)")
    assert percent_of_teacher(None, 3.0) is None and percent_of_teacher(-0.1, 0.2) is None


def test_comet_counts_where_it_was_measured():
    teacher = Measured({"chrf": 50.0, "bleu": 20.0, "comet": 0.80}, 1000.0, 40_000_000)
    pupil = Measured({"chrf": 40.0, "bleu": 15.0, "comet": 0.76}, 2000.0, 10_000_000)
    decision = decide(teacher, pupil, "comet", 95)
    assert decision["percent_of_teacher"]["comet"] == pytest.approx(95.0) and decision["gate"]["passed"]
    assert "COMET >= 95 % of the teacher's: passed" in headline(decision)[1]


SPEED = {"engines": {"ct2-int8": {"parameters": 10, "size_bytes": 20, "bleu": {"score": 1.0}}},
         "runs": [{"engine": "ct2-int8", "threads": 2, "words_per_second": 9.0},
                  {"engine": "ct2-int8", "threads": 1, "words_per_second": 5.0}]}


def test_the_speed_is_read_at_one_thread_of_the_int8_engine_or_refused_naming_what_was_measured():
    assert engine_run(SPEED)["words_per_second"] == 5.0 and engine_run(SPEED)["size_bytes"] == 20
    with pytest.raises(ShipRecordError, match=r"no ct2-float32 run at 1 thread\(s\) .*measured: ct2-int8 at 2, ct2-int8 at 1"):
        engine_run(SPEED, "ct2-float32")


def test_teacher_and_student_scored_otherwise_are_refused():
    teacher = {"references_file": "ref.en", "sentences": 10, "decoding": {"beam": 5}}
    check_comparable(teacher, dict(teacher))
    with pytest.raises(ShipRecordError, match="other beam: 5 and 1"):
        check_comparable(teacher, {**teacher, "decoding": {"beam": 1}})
    with pytest.raises(ShipRecordError, match="other references: ref.en and other.en"):
        check_comparable(teacher, {**teacher, "references_file": "other.en"})
