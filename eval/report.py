"""``lskd-report RUN_DIR``: the JSON records of a run as a markdown report with plots and provenance.

Rows are systems: every ``bleu-*.json`` under RUN_DIR, grouped by its directory name with a
trailing ``_seedN`` removed, so seeds of one setting become one row with mean +- sd. A teacher's
stability record (``stability-*.json``, matched by checkpoint sha256) fills its ``1 - S`` and ECE.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from lskd.provenance import provenance

_SEED_SUFFIX = re.compile(r"[_-]seed\d+$")


def load_records(run_dir: Path, pattern: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text(encoding="utf-8"))) for path in sorted(run_dir.rglob(pattern))]


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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "/".join(_fmt(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_label(system: dict[str, Any]) -> str:
    """The method with the knobs that define it, e.g. ``word-KD T=1 α=0.5`` or ``seq-KD beam 1``."""
    method = system.get("method") or "-"
    parts = []
    if "seq-KD" in method:
        parts.append(f"seq-KD beam {system.get('distill_beam', '?')}")
    if "word-KD" in method:
        parts.append(f"word-KD T={_fmt(system.get('kd_temperature'))} α={_fmt(system.get('kd_alpha'))}")
    return " + ".join(parts) or method


def teacher_label(system: dict[str, Any]) -> str:
    smoothing = system.get("teacher_label_smoothing")
    if smoothing is None or smoothing == []:
        return "none"
    return f"LS {_fmt(smoothing)}"


def _teacher_paths(records: list[dict[str, Any]]) -> set[str]:
    """Checkpoints that some scored system learned from (word-KD teacher or seq-KD decoder)."""
    paths = set()
    for record in records:
        system = record.get("system", {})
        paths.update(p for p in (system.get("teacher_path") or "").split(":") if p)
        paths.update(system.get("distill_teachers") or [])
    return {str(Path(p).resolve()) for p in paths}


def build_rows(run_dir: Path) -> list[dict[str, Any]]:
    stability = {rec["checkpoint"]["sha256"]: rec for _, rec in load_records(run_dir, "stability-*.json")}
    bleu_records = load_records(run_dir, "bleu-*.json")
    teachers = _teacher_paths([record for _, record in bleu_records])
    groups: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for path, record in bleu_records:
        groups[system_name(path, run_dir)].append((path, record))
    rows = []
    for name, members in sorted(groups.items()):
        system = members[0][1].get("system", {})
        analysed = [stability[r["checkpoint"]["sha256"]] for _, r in members if r["checkpoint"]["sha256"] in stability]
        rows.append({
            "system": name,
            "method": system.get("method", "-"),
            "method_label": method_label(system),
            "teacher": teacher_label(system),
            "is_teacher": any(str(Path(r["checkpoint"]["path"]).resolve()) in teachers for _, r in members),
            "label_smoothing": system.get("label_smoothing"),
            "teacher_label_smoothing": system.get("teacher_label_smoothing"),
            "temperature": system.get("kd_temperature") if "word-KD" in system.get("method", "") else None,
            "alpha": system.get("kd_alpha") if "word-KD" in system.get("method", "") else None,
            "seeds": len(members),
            "bleu": [r["scores"]["bleu"]["score"] for _, r in members],
            "chrf": [r["scores"]["chrf"]["score"] for _, r in members],
            "ter": [r["scores"]["ter"]["score"] for _, r in members],
            "one_minus_s": [a["one_minus_s"] for a in analysed],
            "ece": [a["ece_15_bins"] for a in analysed],
            "records": [str(p.relative_to(run_dir)) for p, _ in members],
            "provenance": [r for _, r in members] + analysed,
        })
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ["system", "method", "teacher", "LS", "seeds", "BLEU", "chrF", "TER", "1 - S", "ECE"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        stab = (f"{statistics.mean(row['one_minus_s']):.4f}" if row["one_minus_s"] else "-")
        ece = (f"{statistics.mean(row['ece']):.4f}" if row["ece"] else "-")
        cells = [row["system"], row["method_label"], row["teacher"], _fmt(row["label_smoothing"]), str(row["seeds"]),
                 mean_sd(row["bleu"]), mean_sd(row["chrf"]), mean_sd(row["ter"]), stab, ece]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A few lines with the paper's question answered: teachers, then each KD method by teacher."""
    lines = []
    teachers = [r for r in rows if r["is_teacher"]]
    if teachers:
        lines.append("teachers: " + " | ".join(
            f"LS {_fmt(r['label_smoothing'])}: BLEU {mean_sd(r['bleu'])}, 1 - S {_mean4(r['one_minus_s'])}, "
            f"ECE {_mean4(r['ece'])}" for r in teachers))
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if not row["is_teacher"]:
            by_method[row["method_label"]].append(row)
    taught = {label: members for label, members in by_method.items() if any(r["teacher"] != "none" for r in members)}
    for label, members in taught.items():
        lines.append(f"{label} students: " + " | ".join(
            f"teacher {r['teacher']}: BLEU {mean_sd(r['bleu'])}" for r in members) + _ls_gap(members))
    for label, members in by_method.items():
        if label not in taught:
            lines.append(f"{label} students without a teacher: BLEU " + " | ".join(mean_sd(r["bleu"]) for r in members))
    return lines


def _mean4(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f}" if values else "-"


def _ls_gap(members: list[dict[str, Any]]) -> str:
    """``(LS teacher - non-LS teacher: +0.42 BLEU)`` when exactly one student of each kind is present."""
    smoothed = [r for r in members if r["teacher"] not in ("none", "LS 0", "LS 0.0")]
    plain = [r for r in members if r["teacher"] in ("LS 0", "LS 0.0")]
    if len(smoothed) != 1 or len(plain) != 1:
        return ""
    gap = statistics.mean(smoothed[0]["bleu"]) - statistics.mean(plain[0]["bleu"])
    return f" (LS teacher - non-LS teacher: {gap:+.2f} BLEU)"


def plot_bleu_vs_temperature(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Students' BLEU against T, one line per teacher label smoothing; None when no KD rows exist."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row["temperature"] is not None and row["bleu"]:
            series[f"teacher LS {_fmt(row['teacher_label_smoothing'])}"].append(
                (row["temperature"], statistics.mean(row["bleu"])))
    return plot_against_temperature(series, "BLEU (sacrebleu)", path)


def plot_against_temperature(series: dict[str, list[tuple[float, float]]], ylabel: str, path: Path,
                             legend_size: int | None = None) -> Path | None:
    """One line per series of (T, score) points, T on a log2 axis; None when there is nothing to draw."""
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
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
    plt.close(figure)
    return path


def provenance_section(rows: list[dict[str, Any]]) -> str:
    lines = ["## Provenance", ""]
    for row in rows:
        lines.append(f"**{row['system']}**")
        for record in row["provenance"]:
            kind = "stability" if "one_minus_s" in record else "BLEU"
            signature = record["scores"]["bleu"]["signature"] if kind == "BLEU" else f"{record['classes']} classes"
            versions = record.get("versions", {})
            lines.append(
                f"- {kind}: checkpoint `{record['checkpoint']['path']}` (sha256 {record['checkpoint']['sha256'][:12]}), "
                f"data {record['data']['fingerprint'][:12]}, split {record['split']}, {signature}; "
                f"fairseq {versions.get('ve-fairseq', '?')}, sacrebleu {versions.get('sacrebleu', '?')}, "
                f"lskd {versions.get('lskd', '?')}; `{record['command']}`"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(run_dir: Path, out: Path | None = None, note: str | None = None) -> Path:
    """Write ``report.md`` (table, summary, plots, provenance); ``note`` records how the run was sized."""
    rows = build_rows(run_dir)
    if not rows and any(run_dir.rglob("classification-*.json")):  # lskd-train image classification runs
        from eval.vision_report import write_classification_report  # here: it imports this module

        return write_classification_report(run_dir, out, note)
    if not rows:
        raise FileNotFoundError(f"no bleu-*.json records under {run_dir}: run lskd-eval bleu first")
    out = out or run_dir / "report.md"
    plot = plot_bleu_vs_temperature(rows, out.parent / "plots" / "bleu_vs_temperature.png")
    legend = ("BLEU/chrF/TER: sacrebleu on detokenized output against raw references (signatures below); "
              "mean ± sd over seeds. LS: the system's own label smoothing (fairseq convention, eps spread over "
              "V - 1 classes); teacher: the label smoothing of the model it learned from. 1 - S: stability "
              "(Shen et al. Eq. 2) over the most frequent gold tokens; ECE: 15 bins. Both from a teacher-forced "
              "pass.")
    return assemble_report(out, run_dir, summary_lines(rows), note, ["## Results", "", markdown_table(rows), "", legend],
                           (plot, "BLEU vs temperature"), provenance_section(rows))


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
        parts += [f"![{plot_title}]({plot_path.relative_to(out.parent)})", ""]
    pictures = sorted(out.parent.rglob("*.png"))
    parts += [f"![{p.stem}]({p.relative_to(out.parent)})" for p in pictures if p != plot_path] + [""]
    parts += [provenance_markdown, f"Report made by `{provenance()['command']}` at {provenance()['created']}."]
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lskd-report", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="markdown file (default RUN_DIR/report.md)")
    parser.add_argument("--note", help="how the run was sized (model sizes, updates, beams), written into the report")
    parser.add_argument("--summary", action="store_true", help="also print the report's summary lines")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.run_dir, args.out, args.note)
    except FileNotFoundError as err:
        print(f"lskd-report: error: {err}", file=sys.stderr)
        return 2
    if args.summary:
        print("\n".join(summary_lines(build_rows(args.run_dir))))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
