"""The parts of an ``lskd-report`` that NMT and image-classification reports share.

Records are found under a run directory and grouped into systems by directory name (seeds of one
setting become one row with mean ± sd); the report has one layout: summary, settings, results,
the temperature plot, every other picture, provenance.
"""
from __future__ import annotations

import os
import re
import statistics
from pathlib import Path
from typing import Any, Sequence

from lskd.provenance import provenance, read_json
from lskd.seed_statistics import SeedComparison, compare_over_seeds, difference_by_seed, paired_seeds, paired_t_test

_SEED_SUFFIX = re.compile(r"[_-]seed\d+$")


def load_records(run_dir: Path, pattern: str, required: Sequence[str] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """Every record under ``run_dir`` whose name matches ``pattern``, each with the ``required`` keys
    (:func:`lskd.provenance.read_json`: a damaged one is an error naming it)."""
    return [(path, read_json(path, required)) for path in sorted(run_dir.rglob(pattern))]


def system_name(record_path: Path, run_dir: Path) -> str:
    """The run directory holding ``eval/bleu-*.json`` (or the record's own folder), seed suffix removed."""
    folder = record_path.parent.parent if record_path.parent.name == "eval" else record_path.parent
    name = str(folder.relative_to(run_dir)) if folder != run_dir else folder.name
    return _SEED_SUFFIX.sub("", name)


def seed_of(record_path: Path, record: dict[str, Any]) -> int | None:
    """The training seed of a record's system: its directory's ``_seedN`` (the recipes' name for it), else
    the seed the record read from the checkpoint (``system.seed``; a teacher's directory has no suffix)."""
    folder = record_path.parent.parent if record_path.parent.name == "eval" else record_path.parent
    found = _SEED_SUFFIX.search(folder.name)
    if found:
        return int(found.group()[len("_seed"):])
    seed = record.get("system", {}).get("seed")
    return None if seed is None else int(seed)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "/".join(fmt(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_against_temperature(series: dict[str, list[tuple[float, float]]], ylabel: str, path: Path,
                             legend_size: int | None = None) -> Path | None:
    """One line per series of (T, score) points, T on a log2 axis; None when no series has two temperatures
    (a plot of single points would carry no information a table does not)."""
    if not any(len({t for t, _ in points}) > 1 for points in series.values()):
        return None
    from matplotlib.figure import Figure  # not pyplot: no process-wide backend or figure registry

    figure = Figure(figsize=(6, 4), dpi=100)
    axis = figure.subplots()
    for label, points in sorted(series.items()):
        points = sorted(points)
        axis.plot([t for t, _ in points], [v for _, v in points], marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("temperature T")
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=legend_size)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def report_pictures(out: Path, run_dir: Path) -> list[Path]:
    """The pictures a report shows: those it drew (``OUT_DIR/plots``) and the run's own (under
    ``run_dir``); a picture of a report written earlier into the run directory gives way to this
    report's picture of the same name."""
    drawn = set((out.parent / "plots").glob("*.png"))
    earlier_report = {run_dir / "plots" / picture.name for picture in drawn}
    return sorted(drawn | {p for p in run_dir.rglob("*.png") if p not in earlier_report})


def assemble_report(out: Path, run_dir: Path, summary: list[str], note: str | None, results: list[str],
                    plot: tuple[Path | None, str], provenance_markdown: str) -> Path:
    """The report layout shared by NMT and classification runs: summary, settings, results, the
    temperature plot, every other picture under the report's folder, provenance."""
    parts = [f"# LSKD report: {run_dir}", "", "## Summary", "", *[f"- {line}" for line in summary], ""]
    if note:
        parts += [f"Settings: {note}", ""]
    parts += [*results, ""]
    plot_path, plot_title = plot
    if plot_path:
        parts += [f"![{plot_title}]({os.path.relpath(plot_path, out.parent)})", ""]
    parts += [f"![{p.stem}]({os.path.relpath(p, out.parent)})" for p in report_pictures(out, run_dir)
              if p.name != getattr(plot_path, "name", None)] + [""]
    parts += [provenance_markdown, f"Report made by `{provenance()['command']}` at {provenance()['created']}."]
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return out


#: how the summary judges an LS-vs-non-LS gap (the legend under a report's table)
SEED_VERDICT_LEGEND = (
    "LS teacher - non-LS teacher (summary): with two or more seeds, the mean of the per-seed differences (the "
    "students of one seed paired), its 95 % interval and a paired t-test over seeds (Student's t with n - 1 degrees "
    "of freedom; Dror et al. 2018, Clark et al. 2011): the seed is the unit, so the gap is measured against training "
    "variance, and 'resolved' means p < 0.05 in that test.")
#: how to measure what one seed cannot (the recipes' knob)
MORE_SEEDS = 'LSKD_SEEDS="1 2 3" trains every student per seed and tests the difference over seeds'


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _seed_list(seeds: tuple[int | None, ...]) -> str:
    return ", ".join(str(s) for s in seeds) if all(s is not None for s in seeds) else f"{len(seeds)} seeds"


def _t_test_words(comparison: SeedComparison) -> str:
    """``95 % CI [-0.80, +1.64]; paired t-test over seeds: t(2) = 1.48, p = 0.277: not resolved (p >= 0.05)``"""
    low, high = comparison.interval
    interval = f"{100 * comparison.confidence:g} % CI [{_signed(low)}, {_signed(high)}]"
    if comparison.p_value is None:
        return (f"{interval}; the difference is the same on every seed (sd 0): the paired t-test is undefined, "
                "not resolved")
    verdict = "resolved (p < 0.05)" if comparison.resolved() else "not resolved (p >= 0.05)"
    return (f"{interval}; paired t-test over seeds: t({comparison.degrees_of_freedom}) = {comparison.t:.2f}, "
            f"p = {comparison.p_value:.3f}: {verdict}")


def ls_gap_over_seeds(smoothed: dict[int | None, float], plain: dict[int | None, float], unit: str,
                      teachers_per_seed: bool, teacher_seeds_knob: str | None = None) -> str:
    """The LS-teacher gap of two conditions (scores by training seed), judged with the seed as the unit
    (:func:`lskd.seed_statistics.compare_over_seeds`): ``: +0.42 BLEU, mean over seeds 1, 2, 3; 95 % CI
    [...]; paired t-test over seeds: t(2) = ...: not resolved`` (each condition's mean ± sd stands beside
    the line; those of the paired seeds are added when some seed has one condition only).
    ``teachers_per_seed`` False: one teacher per condition taught every seed, so the test covers the
    students' training variance, not the teachers' (``teacher_seeds_knob`` names the knob that varies them). With fewer than two seeds trained with both teachers, the plain words that one pair of trained
    models measures no training variance, and how to measure it."""
    seeds = paired_seeds(smoothed, plain)
    if len(seeds) < 2:
        return _one_seed_words(smoothed, plain, seeds, unit)
    comparison = compare_over_seeds(smoothed, plain)
    unpaired = sorted(set(smoothed) ^ set(plain), key=str)
    words = f": {_signed(comparison.difference)} {unit}, mean over seeds {_seed_list(comparison.seeds)}"
    if unpaired:  # the means and sd beside the line are over every seed: give those of the paired ones
        words += (f" (LS teacher {comparison.mean_a:.2f} ± {comparison.sd_a:.2f}, non-LS teacher "
                  f"{comparison.mean_b:.2f} ± {comparison.sd_b:.2f}; unpaired seeds left out: "
                  f"{', '.join(map(str, unpaired))})")
    words += f"; {_t_test_words(comparison)}"
    if not teachers_per_seed:
        words += ("; the seeds vary the students only: one teacher per label smoothing taught them all, and the "
                  "teachers' own training variance is not measured"
                  + (f" ({teacher_seeds_knob} trains a teacher per seed)" if teacher_seeds_knob else ""))
    return words


def _one_seed_words(smoothed: dict[int | None, float], plain: dict[int | None, float], seeds: tuple, unit: str) -> str:
    """The gap of a single pair of trained models, said as what it is."""
    if not seeds:
        gap = statistics.mean(smoothed.values()) - statistics.mean(plain.values())
        return (f": {_signed(gap)} {unit} between the means; no seed was trained with both teachers, so nothing "
                f"can be paired ({MORE_SEEDS})")
    seed = seeds[0]
    which = "one seed" if seed is None else f"seed {seed} alone"
    return (f": {_signed(smoothed[seed] - plain[seed])} {unit} on {which}: this compares two trained models, not an "
            f"LS teacher with a non-LS teacher; training variance is not measured ({MORE_SEEDS})")


def gap_change_over_temperature(gaps: dict[float, dict[int | None, float]], unit: str) -> str | None:
    """Whether the LS-teacher gap changes between the lowest and the highest temperature (the advantage at
    T = 1 and its reversal at high T): per seed, gap(T_high) - gap(T_low) (an interaction contrast), then
    the paired t-test over seeds; ``gaps`` maps T to ``{seed: LS-teacher score - non-LS-teacher score}``.
    None with fewer than two temperatures."""
    temperatures = sorted(t for t, by_seed in gaps.items() if by_seed)
    if len(temperatures) < 2:
        return None
    low, high = temperatures[0], temperatures[-1]
    means = ", ".join(f"{_signed(statistics.mean(gaps[t].values()))} at T={fmt(t)}" for t in (low, high))
    change = difference_by_seed(gaps[high], gaps[low])
    if len(change) < 2:
        return (f"LS-teacher gap {means}: from one seed, whether it changes with T is not tested; training "
                f"variance is not measured ({MORE_SEEDS})")
    comparison = paired_t_test([gaps[high][s] for s in change], [gaps[low][s] for s in change], seeds=tuple(change))
    return (f"LS-teacher gap {means}: change {_signed(comparison.difference)} {unit} over seeds "
            f"{_seed_list(comparison.seeds)}; {_t_test_words(comparison)} (a reversal also needs each gap resolved "
            "on its own, in the lines per T)")
