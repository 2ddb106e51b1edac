"""The LS-vs-non-LS verdict across training seeds: the statistics against an independent computation on
made-up per-seed scores, and the report lines (several seeds, one seed, the temperature contrast)."""
import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from eval.report import build_rows, summary_lines, write_report
from eval.vision_report import classification_rows
from eval.vision_report import summary_lines as vision_summary_lines
from lskd.seed_statistics import compare_over_seeds, difference_by_seed, paired_t_test


def t2_cdf(t: float) -> float:
    """Student's t with 2 degrees of freedom has a closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def t2_quantile(u: float) -> float:
    """Its inverse: t = (2u - 1) sqrt(2 / (4u(1 - u)))."""
    return (2 * u - 1) * math.sqrt(2 / (4 * u * (1 - u)))


# LS-teacher and non-LS-teacher students of seeds 1, 2, 3: differences 1.0, 0.2, 1.2
SMOOTHED, PLAIN = [13.0, 12.5, 14.0], [12.0, 12.3, 12.8]


def test_the_paired_t_test_over_seeds_matches_the_formula_computed_by_hand():
    result = paired_t_test(SMOOTHED, PLAIN)
    # by hand: d = (1.0, 0.2, 1.2), mean 0.8, sd sqrt((0.2^2 + 0.6^2 + 0.4^2) / 2) = sqrt(0.28), se = sd / sqrt(3)
    se = math.sqrt(0.28) / math.sqrt(3)
    t = 0.8 / se
    assert (result.n, result.degrees_of_freedom) == (3, 2)
    assert result.difference == pytest.approx(0.8) and result.sd_difference == pytest.approx(math.sqrt(0.28))
    assert result.t == pytest.approx(t)
    assert result.p_value == pytest.approx(2 * (1 - t2_cdf(t)))  # 0.1201: not resolved at 3 seeds
    half = t2_quantile(0.975) * se  # t_{0.975, 2} = 4.303
    assert result.interval == pytest.approx((0.8 - half, 0.8 + half))
    assert (result.mean_a, result.sd_a) == pytest.approx((statistics.mean(SMOOTHED), 0.7637626158259734))
    assert (result.mean_b, result.sd_b) == pytest.approx((statistics.mean(PLAIN), 0.4041451884327381))
    assert not result.resolved()


def test_the_paired_t_test_agrees_with_scipys_own_paired_test():
    smoothed, plain = [13.1, 12.9, 13.6, 13.3, 12.8], [12.2, 12.5, 12.6, 12.9, 12.4]
    ours = paired_t_test(smoothed, plain)
    theirs = stats.ttest_rel(smoothed, plain)
    assert (ours.t, ours.p_value) == pytest.approx((theirs.statistic, theirs.pvalue))
    interval = theirs.confidence_interval(0.95)
    assert ours.interval == pytest.approx((interval.low, interval.high))
    assert ours.resolved() and ours.interval[0] > 0  # a consistent gap over five seeds


def test_two_seeds_use_the_cauchy_quantiles():
    """One degree of freedom: Student's t is the Cauchy distribution, F(t) = 1/2 + atan(t) / pi."""
    result = paired_t_test([10.0, 11.0], [9.0, 9.5])  # differences 1.0 and 1.5
    se = statistics.stdev([1.0, 1.5]) / math.sqrt(2)
    assert result.p_value == pytest.approx(2 * (0.5 - math.atan(1.25 / se) / math.pi))
    assert result.interval == pytest.approx((1.25 - math.tan(math.pi * 0.475) * se, 1.25 + math.tan(math.pi * 0.475) * se))


def test_seeds_are_paired_by_seed_not_by_position():
    smoothed = {3: 14.0, 1: 13.0, 2: 12.5, 4: 20.0}  # seed 4 has no partner
    plain = {2: 12.3, 3: 12.8, 1: 12.0}
    result = compare_over_seeds(smoothed, plain)
    assert result.seeds == (1, 2, 3) and result.difference == pytest.approx(0.8)
    assert result.p_value == pytest.approx(paired_t_test(SMOOTHED, PLAIN).p_value)
    assert difference_by_seed(smoothed, plain) == pytest.approx({1: 1.0, 2: 0.2, 3: 1.2})


def test_one_seed_or_unequal_pairs_have_no_test_and_no_spread_has_no_p_value():
    with pytest.raises(ValueError, match="at least two seeds, got 1"):
        paired_t_test([13.0], [12.0])
    with pytest.raises(ValueError, match="equal lengths, got 2 and 3"):
        paired_t_test([13.0, 12.0], [12.0, 11.0, 10.0])
    same = paired_t_test([13.0, 12.0], [12.5, 11.5])  # +0.5 on both seeds: sd 0, t undefined
    assert same.p_value is None and same.t is None and not same.resolved()
    assert same.interval == pytest.approx((0.5, 0.5))


# --- the report's lines ----------------------------------------------------------------------------------

def fake_bleu(path: Path, bleu: float, system: dict, sha: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "scores": {m: {"score": bleu, "signature": f"{m}-sig", "text": ""} for m in ("bleu", "chrf", "ter")},
        "split": "test", "sentences": 4, "checkpoint": {"path": f"/ckpt/{sha}.pt", "sha256": sha * 64},
        "data": {"fingerprint": "f" * 64}, "system": system, "command": "lskd-eval bleu ...", "versions": {}}))


def word_kd(teacher_path: str, teacher_ls: float, temperature: float, seed: int) -> dict:
    return {"method": "word-KD", "label_smoothing": 0.0, "teacher_label_smoothing": [teacher_ls],
            "kd_temperature": temperature, "kd_alpha": 0.5, "teacher_path": teacher_path, "seed": seed}


def nmt_run(tmp_path: Path, scores: dict[float, tuple[list[float], list[float]]], teachers_per_seed: bool = False):
    """Word-KD students at each T (``{T: (LS-teacher BLEU by seed, non-LS-teacher BLEU by seed)}``)."""
    for t, (smoothed, plain) in scores.items():
        for seed, (a, b) in enumerate(zip(smoothed, plain), start=1):
            for ls, bleu in (("0.1", a), ("0", b)):
                teacher = f"/ckpt/teacher_ls{ls}" + (f"_seed{seed}" if teachers_per_seed else "") + ".pt"
                fake_bleu(tmp_path / f"student_wordkd_ls{ls}_T{t:g}_seed{seed}" / "eval" / "bleu-test.json", bleu,
                          word_kd(teacher, float(ls), t, seed), f"{ls}-{t:g}-{seed}")
    return build_rows(tmp_path)


def test_several_seeds_give_mean_sd_interval_and_the_paired_test_over_seeds(tmp_path):
    """The numbers of the hand computation above: CI 0.8 -+ 4.303 * 0.3055, t = 2.62, p = 0.120."""
    lines = summary_lines(nmt_run(tmp_path, {1.0: (SMOOTHED, PLAIN)}))
    assert lines == [
        "word-KD T=1 α=0.5 students: teacher LS 0.1: BLEU 13.17 ± 0.76 | teacher LS 0: BLEU 12.37 ± 0.40 "
        "(LS teacher - non-LS teacher: +0.80 BLEU, mean over seeds 1, 2, 3; 95 % CI [-0.51, +2.11]; paired t-test "
        "over seeds: t(2) = 2.62, p = 0.120: not resolved (p >= 0.05); the seeds vary the students only: one teacher "
        "per label smoothing taught them all, and the teachers' own training variance is not measured "
        "(LSKD_TEACHER_SEEDS trains a teacher per seed))"]
    assert "a paired t-test over seeds (Student's t with n - 1 degrees" in write_report(tmp_path).read_text()


def test_a_seed_with_one_teachers_student_only_is_left_out_and_named(tmp_path):
    nmt_run(tmp_path, {1.0: (SMOOTHED, PLAIN)})
    fake_bleu(tmp_path / "student_wordkd_ls0.1_T1_seed4" / "eval" / "bleu-test.json", 20.0,
              word_kd("/ckpt/teacher_ls0.1.pt", 0.1, 1.0, 4), "extra")
    line = summary_lines(build_rows(tmp_path))[0]
    assert line.startswith("word-KD T=1 α=0.5 students: teacher LS 0.1: BLEU 14.88 ± 3.47 | teacher LS 0: BLEU "
                           "12.37 ± 0.40 (LS teacher - non-LS teacher: +0.80 BLEU, mean over seeds 1, 2, 3 (LS teacher "
                           "13.17 ± 0.76, non-LS teacher 12.37 ± 0.40; unpaired seeds left out: 4); 95 % CI [-0.51, +2.11]; paired t-test over seeds: t(2) = 2.62, p = 0.120: not "
                           "resolved"), line


def test_a_resolved_gap_over_seeds_with_a_teacher_per_seed(tmp_path):
    smoothed, plain = [13.1, 12.9, 13.6, 13.3, 12.8], [12.2, 12.5, 12.6, 12.9, 12.4]
    line = summary_lines(nmt_run(tmp_path, {1.0: (smoothed, plain)}, teachers_per_seed=True))[0]
    assert line.endswith(f"p = {stats.ttest_rel(smoothed, plain).pvalue:.3f}: resolved (p < 0.05))"), line
    assert "one teacher per label smoothing" not in line


def test_one_seed_says_it_compares_two_trained_models_and_how_to_measure_training_variance(tmp_path):
    line = summary_lines(nmt_run(tmp_path, {1.0: ([13.78], [12.27])}))[0]
    assert line.endswith(
        "(LS teacher - non-LS teacher: +1.51 BLEU on seed 1 alone: this compares two trained models, not an LS "
        "teacher with a non-LS teacher; training variance is not measured (LSKD_SEEDS=\"1 2 3\" trains every student "
        "per seed and tests the difference over seeds))"), line
    assert "resolved" not in line


def test_the_change_of_the_gap_from_low_to_high_temperature_is_tested_over_seeds(tmp_path):
    """The advantage at T = 1 and its reversal at high T: per seed, gap(T=64) - gap(T=1), then the paired test."""
    high_smoothed, high_plain = [11.0, 11.2, 10.6], [11.5, 11.4, 11.9]  # gaps -0.5, -0.2, -1.3
    lines = summary_lines(nmt_run(tmp_path, {1.0: (SMOOTHED, PLAIN), 2.0: (SMOOTHED, PLAIN),
                                             64.0: (high_smoothed, high_plain)}))
    change = [(a - b) - (c - d) for a, b, c, d in zip(high_smoothed, high_plain, SMOOTHED, PLAIN)]
    theirs = stats.ttest_1samp(change, 0.0)  # the contrast per seed against zero: an independent computation
    contrast = [line for line in lines if "LS-teacher gap" in line]
    assert contrast == [
        f"word-KD α=0.5 students, LS-teacher gap +0.80 at T=1, -0.67 at T=64: change {statistics.mean(change):+.2f} "
        f"BLEU over seeds 1, 2, 3; 95 % CI [{theirs.confidence_interval().low:+.2f}, {theirs.confidence_interval().high:+.2f}]; "
        f"paired t-test over seeds: t(2) = {theirs.statistic:.2f}, p = {theirs.pvalue:.3f}: "
        f"{'resolved (p < 0.05)' if theirs.pvalue < 0.05 else 'not resolved (p >= 0.05)'} (a reversal also needs "
        "each gap resolved on its own, in the lines per T)"]


def test_one_seed_does_not_test_the_change_with_temperature(tmp_path):
    lines = summary_lines(nmt_run(tmp_path, {1.0: ([13.0], [12.0]), 64.0: ([11.0], [11.5])}))
    assert lines[-1] == ("word-KD α=0.5 students, LS-teacher gap +1.00 at T=1, -0.50 at T=64: from one seed, whether "
                        "it changes with T is not tested; training variance is not measured (LSKD_SEEDS=\"1 2 3\" "
                        "trains every student per seed and tests the difference over seeds)")


def vision_record(path: Path, top1: float, seed: int, teacher: str, temperature: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "split": "test", "command": "lskd-train ...", "versions": {},
        "scores": {"top1": top1, "one_minus_s": 0.25, "ece_15_bins": 0.03},
        "checkpoint": {"path": f"/runs/{path.parent.name}.pt", "sha256": f"{path.parent.parent.name}{teacher}{seed}"},
        "data": {"name": "fashion_mnist", "fingerprint": "f" * 64, "imbalance_ratio": 1, "train_examples": 600},
        "system": {"seed": seed, "epochs": 1, "method": "KD", "model": "resnet8", "label_smoothing": 0.0,
                   "kd_alpha": 1.0, "kd_temperature": temperature, "teacher": {"sha256": teacher},
                   "teacher_label_smoothing": 0.1 if teacher == "a" else 0.0}}))


def test_the_vision_report_judges_the_ls_teacher_gap_over_seeds(tmp_path):
    smoothed, plain = [90.0, 92.0, 91.0], [89.0, 89.5, 90.5]
    for seed, (a, b) in enumerate(zip(smoothed, plain), start=1):
        vision_record(tmp_path / f"balanced/student_cnn_ls0.1_T1_seed{seed}/eval/classification-test.json", a, seed, "a", 1.0)
        vision_record(tmp_path / f"balanced/student_cnn_ls0_T1_seed{seed}/eval/classification-test.json", b, seed, "b", 1.0)
        vision_record(tmp_path / f"balanced/student_cnn_ls0.1_T64_seed{seed}/eval/classification-test.json", b, seed, "a", 64.0)
        vision_record(tmp_path / f"balanced/student_cnn_ls0_T64_seed{seed}/eval/classification-test.json", a, seed, "b", 64.0)
    lines = vision_summary_lines(classification_rows(tmp_path))
    theirs = stats.ttest_rel(smoothed, plain)
    assert lines[0].startswith("balanced resnet8 students, T=1: teacher LS 0.1 91.00 ± 1.00, LS 0 89.67 ± 0.76 "
                               "(LS teacher - non-LS teacher: +1.33 top-1, mean over seeds 1, 2, 3")
    assert f"t(2) = {theirs.statistic:.2f}, p = {theirs.pvalue:.3f}: not resolved (p >= 0.05)" in lines[0]
    assert "one teacher per label smoothing taught them all" in lines[0]
    assert "a paired t-test over seeds (Student's t" in write_report(tmp_path).read_text()
    assert lines[2].startswith("balanced resnet8 students, LS-teacher gap +1.33 at T=1, -1.33 at T=64: change -2.67 "
                               "top-1 over seeds 1, 2, 3")


def test_the_vision_report_from_one_seed_says_so(tmp_path):
    vision_record(tmp_path / "balanced/student_cnn_ls0.1_T1_seed1/eval/classification-test.json", 91.0, 1, "a", 1.0)
    vision_record(tmp_path / "balanced/student_cnn_ls0_T1_seed1/eval/classification-test.json", 89.5, 1, "b", 1.0)
    assert vision_summary_lines(classification_rows(tmp_path)) == [
        "balanced resnet8 students, T=1: teacher LS 0.1 91.00, LS 0 89.50 (LS teacher - non-LS teacher: +1.50 top-1 "
        "on seed 1 alone: this compares two trained models, not an LS teacher with a non-LS teacher; training "
        "variance is not measured (LSKD_SEEDS=\"1 2 3\" trains every student per seed and tests the difference over "
        "seeds))"]
