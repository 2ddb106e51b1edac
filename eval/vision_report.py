"""``lskd-report`` for image classification: the ``classification-*.json`` records of ``lskd-train`` runs.

Rows are systems grouped like the NMT rows (run directory, trailing ``_seedN`` removed; seeds
become mean ± sd). Every record carries its own stability ``1 - S`` and ECE (the trainer's final
evaluation), so no separate analysis pass is needed. ``lskd-report`` writes this report for a run
directory that holds classification records and no BLEU records.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from eval.report_layout import (SEED_VERDICT_LEGEND, assemble_report, fmt, gap_change_over_temperature, load_records,
                                ls_gap_over_seeds, mean_sd, plot_against_temperature, seed_of, system_name)
from lskd.seed_statistics import difference_by_seed


def data_label(data: dict[str, Any]) -> str:
    ratio = data.get("imbalance_ratio", 1)
    return "balanced" if ratio == 1 else f"LT {ratio:g}"


def classification_rows(run_dir: Path) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seeds: dict[str, list[int | None]] = defaultdict(list)
    records = load_records(run_dir, "classification-*.json")
    for path, record in records:
        groups[system_name(path, run_dir)].append(record)
        seeds[system_name(path, run_dir)].append(seed_of(path, record))
    teachers = {r["system"]["teacher"]["sha256"] for _, r in records if r["system"].get("teacher")}
    rows = []
    for name, members in sorted(groups.items()):
        system = members[0]["system"]
        rows.append({
            "system": name, "method": system["method"], "model": system["model"],
            "is_teacher": any(r["checkpoint"]["sha256"] in teachers for r in members),
            "label_smoothing": system["label_smoothing"], "teacher_label_smoothing": system["teacher_label_smoothing"],
            "temperature": system["kd_temperature"], "alpha": system["kd_alpha"], "data": data_label(members[0]["data"]),
            "seeds": len(members), "top1": [r["scores"]["top1"] for r in members],
            "top1_by_seed": {seed: r["scores"]["top1"] for seed, r in zip(seeds[name], members)},
            "teachers": {r["system"]["teacher"]["sha256"] for r in members if r["system"].get("teacher")},
            "top5": [r["scores"]["top5"] for r in members if "top5" in r["scores"]],
            "one_minus_s": [r["scores"]["one_minus_s"] for r in members],
            "ece": [r["scores"]["ece_15_bins"] for r in members], "records": members,
        })
    return rows


def classification_table(rows: list[dict[str, Any]]) -> str:
    header = ["system", "method", "model", "LS", "teacher LS", "T", "alpha", "data", "seeds", "top-1", "top-5",
              "1 - S", "ECE"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["system"], row["method"], row["model"], fmt(row["label_smoothing"]),
                 fmt(row["teacher_label_smoothing"]), fmt(row["temperature"]), fmt(row["alpha"]), row["data"],
                 str(row["seeds"]), mean_sd(row["top1"]), mean_sd(row["top5"]),
                 f"{statistics.mean(row['one_minus_s']):.4f}", f"{statistics.mean(row['ece']):.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_top1_vs_temperature(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Students' top-1 against T, one line per (student model, teacher LS, data); None without KD rows."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row["temperature"] is not None:
            label = f"{row['model']}, teacher LS {fmt(row['teacher_label_smoothing'])}, {row['data']}"
            series[label].append((row["temperature"], statistics.mean(row["top1"])))
    return plot_against_temperature(series, "test top-1 (%)", path, legend_size=7)


def classification_provenance(rows: list[dict[str, Any]]) -> str:
    lines = ["## Provenance (image classification)", ""]
    for row in rows:
        lines.append(f"**{row['system']}**")
        for record in row["records"]:
            versions = record.get("versions", {})
            lines.append(
                f"- checkpoint `{record['checkpoint']['path']}` (sha256 {record['checkpoint']['sha256'][:12]}), "
                f"data {record['data']['name']} {record['data']['fingerprint'][:12]} "
                f"({record['data']['train_examples']} training images), seed {record['system']['seed']}, "
                f"{record['system']['epochs']} epochs; torch {versions.get('torch', '?')}, lskd {versions.get('lskd', '?')}; "
                f"`{record['command']}`")
        lines.append("")
    return "\n".join(lines)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The paper's question per split: teachers' accuracy and stability, then each student's LS-teacher gain
    judged over seeds (:func:`eval.report_layout.ls_gap_over_seeds`), then per student model whether that gain
    changes between the lowest and the highest temperature."""
    lines = []
    for data in sorted({row["data"] for row in rows}):
        teachers = [r for r in rows if r["data"] == data and r["is_teacher"]]
        if teachers:
            lines.append(f"{data} teachers: " + " | ".join(
                f"LS {fmt(r['label_smoothing'])}: top-1 {mean_sd(r['top1'])}, 1 - S "
                f"{statistics.mean(r['one_minus_s']):.4f}, ECE {statistics.mean(r['ece']):.4f}" for r in teachers))
        students: dict[tuple[str, float], dict[Any, dict[str, Any]]] = defaultdict(dict)
        for row in rows:
            if row["data"] == data and row["temperature"] is not None:
                students[(row["model"], row["temperature"])][row["teacher_label_smoothing"]] = row
        gaps: dict[str, dict[float, dict[int | None, float]]] = defaultdict(dict)
        for (model, temperature), by_teacher in sorted(students.items()):
            if len(by_teacher) == 2 and 0 in by_teacher:
                smoothed_ls = next(ls for ls in by_teacher if ls != 0)
                smoothed, plain = by_teacher[smoothed_ls], by_teacher[0]
                gaps[model][temperature] = difference_by_seed(smoothed["top1_by_seed"], plain["top1_by_seed"])
                verdict = ls_gap_over_seeds(smoothed["top1_by_seed"], plain["top1_by_seed"], "top-1",
                                            min(len(smoothed["teachers"]), len(plain["teachers"])) > 1)
                lines.append(f"{data} {model} students, T={fmt(temperature)}: teacher LS {fmt(smoothed_ls)} "
                             f"{mean_sd(smoothed['top1'])}, LS 0 {mean_sd(plain['top1'])} (LS teacher - non-LS teacher"
                             f"{verdict})")
        lines += [f"{data} {model} students, {line}" for model, by_t in sorted(gaps.items())
                  if (line := gap_change_over_temperature(by_t, "top-1"))]
    return lines


def write_classification_report(run_dir: Path, out: Path | None = None, note: str | None = None) -> Path:
    """``report.md`` for a run of lskd-train models: summary, table, top-1 vs T, pictures, provenance."""
    rows = classification_rows(run_dir)
    out = out or run_dir / "report.md"
    plot = plot_top1_vs_temperature(rows, out.parent / "plots" / "top1_vs_temperature.png")
    legend = ("top-1/top-5: % of the test split; mean ± sd over seeds. LS: the model's own label smoothing "
              "(eps spread over the C - 1 other classes); teacher LS: its teacher's. 1 - S: stability (Shen et al. "
              "Eq. 2) of the model's test-set softmax, grouped by gold class; ECE: 15 bins. Data: balanced, or "
              "LT r, a long-tailed training split with n_max / n_min = r (the test split stays balanced). "
              + SEED_VERDICT_LEGEND)
    return assemble_report(out, run_dir, summary_lines(rows), note,
                           ["## Results (image classification)", "", classification_table(rows), "", legend],
                           (plot, "top-1 vs temperature"), classification_provenance(rows))
