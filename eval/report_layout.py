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
