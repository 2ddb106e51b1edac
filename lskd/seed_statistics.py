"""Comparisons across training seeds: is a difference between two conditions larger than training variance?

A paired bootstrap over test sentences (sacrebleu's ``--paired-bs``) says whether two *trained models*
differ on one test set; it says nothing about the conditions that produced them (an LS teacher against a
non-LS teacher), because retraining with another seed moves a model by more than many such differences
(Clark et al. 2011, "Better Hypothesis Testing for Statistical Machine Translation: Controlling for
Optimizer Instability", ACL; Reimers & Gurevych 2017, "Reporting Score Distributions Makes a Difference",
EMNLP). Here the unit is the seed: seed ``s`` of condition A is paired with seed ``s`` of condition B
(the same student seed, so the same initialisation and data order), and the paired t-test over seeds
(Dror et al. 2018, "The Hitchhiker's Guide to Testing Statistical Significance in Natural Language
Processing", ACL, section 3: the t-test for a metric averaged over independent units) tests whether the
mean difference is zero. With 2 or 3 seeds it has little power: a real difference often stays unresolved.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class SeedComparison:
    """Condition A against condition B over ``n`` paired seeds (scores in the metric's units, e.g. BLEU).

    ``difference``: the mean of d_s = a_s - b_s; ``interval``: its two-sided ``confidence`` interval;
    ``p_value``: the paired t-test's two-sided p (None when every d_s is the same: no spread, no test).
    """

    seeds: tuple[int, ...]
    mean_a: float
    sd_a: float
    mean_b: float
    sd_b: float
    difference: float
    sd_difference: float
    interval: tuple[float, float]
    t: float | None
    p_value: float | None
    confidence: float

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def degrees_of_freedom(self) -> int:
        return self.n - 1

    def resolved(self, level: float = 0.05) -> bool:
        """True when the test rejects "no difference" at ``level`` (the interval then excludes 0)."""
        return self.p_value is not None and self.p_value < level


def paired_seeds(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[int, ...]:
    """The seeds both conditions were trained with, in order (the pairs of a paired test)."""
    return tuple(sorted(set(a) & set(b)))


def paired_t_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                  seeds: Sequence[int] | None = None) -> SeedComparison:
    """The paired t-test of ``a`` against ``b`` (``a[i]`` and ``b[i]`` from the same seed).

    With d_i = a_i - b_i, n pairs, d̄ their mean and s_d their sample standard deviation (n - 1 in the
    denominator): standard error se = s_d / sqrt(n), t = d̄ / se with n - 1 degrees of freedom, two-sided
    p = 2 * P(T_{n-1} > |t|), interval d̄ ± t_{(1 + confidence) / 2, n-1} * se (Student's t quantiles from
    scipy.stats). The per-condition sd are sample sd too. Raises ValueError for unequal lengths or fewer
    than two pairs (one seed measures no training variance: there is nothing to test against).
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a test over seeds needs at least two seeds, got {len(a)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    from scipy.stats import t as student_t  # scipy arrives with scikit-learn, which fairseq imports

    differences = [x - y for x, y in zip(a, b)]
    n, mean = len(differences), statistics.mean(differences)
    sd = statistics.stdev(differences)
    half_width = student_t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    t_value = mean / (sd / math.sqrt(n)) if sd > 0 else None
    p_value = float(2 * student_t.sf(abs(t_value), n - 1)) if t_value is not None else None
    return SeedComparison(
        seeds=tuple(seeds) if seeds is not None else tuple(range(1, n + 1)),
        mean_a=statistics.mean(a), sd_a=statistics.stdev(a), mean_b=statistics.mean(b), sd_b=statistics.stdev(b),
        difference=mean, sd_difference=sd, interval=(mean - half_width, mean + half_width),
        t=t_value, p_value=p_value, confidence=confidence,
    )


def compare_over_seeds(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> SeedComparison:
    """:func:`paired_t_test` of two conditions given as ``{seed: score}``, on the seeds both have."""
    seeds = paired_seeds(a, b)
    return paired_t_test([a[s] for s in seeds], [b[s] for s in seeds], confidence, seeds)


def difference_by_seed(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
    """``{seed: a[seed] - b[seed]}`` on the seeds both have: e.g. the LS-teacher gap of each seed at one
    temperature, so that two gaps can be compared over seeds in turn (an interaction contrast)."""
    return {seed: a[seed] - b[seed] for seed in paired_seeds(a, b)}
