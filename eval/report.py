"""``lskd-report RUN_DIR``: the JSON records of a run as a markdown report with plots and provenance.

NMT rows are systems: every ``bleu-*.json`` of the fairseq engine under RUN_DIR, grouped by its
directory name with a trailing ``_seedN`` removed, so seeds of one setting become one row with
mean +- sd. A teacher's stability record (``stability-*.json``, matched by checkpoint sha256) fills
its ``1 - S`` and ECE; a speed record (``speed-*.json``, from ``lskd-eval speed``) its parameters,
size, words/s and int8 BLEU, the summary's "N x faster and M x smaller than its teacher" lines and
the picture of BLEU against words/s.
A run directory of ``lskd-train`` image-classification runs gets :mod:`eval.vision_report`'s report.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.bleu import BLEU_RECORD_KEYS, paired_bootstrap
from eval.report_layout import (SEED_VERDICT_LEGEND, assemble_report, fmt, gap_change_over_temperature, load_records,
                                ls_gap_over_seeds, mean_sd, plot_against_temperature, seed_of, system_name)
from eval.vision_report import write_classification_report
from lskd.corpus import read_lines
from lskd.errors import LSKDError, console_script
from lskd.output_files import check_writable
from lskd.seed_statistics import difference_by_seed

#: the engine whose speed and size the report compares (``lskd-eval speed --engines ... ct2-int8``)
INT8 = "ct2-int8"
STABILITY_RECORD_KEYS = ("checkpoint.sha256", "split", "one_minus_s", "ece_15_bins")
SPEED_RECORD_KEYS = ("checkpoint.sha256", "split", "engines")
logger = logging.getLogger(__name__)


@dataclass
class SystemRow:
    """One NMT system of a report: its settings, and its scores over seeds."""

    system: str
    method: str  # CE, word-KD, seq-KD, seq-KD + word-KD, unknown
    method_label: str  # the method with the knobs that define it, e.g. "word-KD T=1 α=0.5"
    label_smoothing: float | None  # the system's own
    teacher_label_smoothing: list[float] | float | None  # of the teacher(s) it learned from; None: no teacher
    temperature: float | None
    alpha: float | None
    is_teacher: bool  # some other scored system learned from it
    bleu: list[float] = field(default_factory=list)
    bleu_by_seed: dict[int | None, float] = field(default_factory=dict)  # the same scores by training seed
    chrf: list[float] = field(default_factory=list)
    ter: list[float] = field(default_factory=list)
    one_minus_s: list[float] = field(default_factory=list)
    ece: list[float] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what its records could not establish or left out
    checkpoints: set[str] = field(default_factory=set)  # resolved paths of the scored checkpoints
    teacher_checkpoints: set[str] = field(default_factory=set)  # resolved paths of what it learned from
    speed: dict[str, Any] | None = None  # its lskd-eval speed record (the first seed's)
    int8_bleu: list[float] = field(default_factory=list)  # BLEU with CTranslate2 int8

    def engine_speed(self, engine: str, threads: int = 1) -> float | None:
        """Source words/s with ``engine`` (``fairseq``, ``ct2-int8``) at ``threads``, if measured."""
        runs = (self.speed or {}).get("runs", [])
        return next((r["words_per_second"] for r in runs if r["engine"] == engine and r["threads"] == threads), None)

    @property
    def parameters(self) -> int | None:
        engines = (self.speed or {}).get("engines", {})
        return next((e["parameters"] for e in engines.values()), None)

    @property
    def int8_megabytes(self) -> float | None:
        int8 = (self.speed or {}).get("engines", {}).get(INT8)
        return int8["size_bytes"] / 1e6 if int8 else None

    @property
    def seeds(self) -> int:
        return len(self.bleu)

    @property
    def teacher(self) -> str:
        """``LS 0.1``, ``none`` for a system trained without a teacher, ``unknown`` when the records
        could not read its teacher's label smoothing."""
        if self.teacher_label_smoothing in (None, []):
            return "unknown" if "KD" in self.method or self.method == "unknown" else "none"
        return f"LS {fmt(self.teacher_label_smoothing)}"

    @property
    def teacher_smoothed(self) -> bool | None:
        """True when every teacher it learned from used label smoothing, False when none did, else None."""
        values = self.teacher_label_smoothing
        values = values if isinstance(values, list) else [values] if values is not None else []
        if not values or any(v is None for v in values):
            return None
        if all(v > 0 for v in values):
            return True
        return False if all(v == 0 for v in values) else None


def method_label(system: dict[str, Any]) -> str:
    """The method with the knobs that define it, e.g. ``word-KD T=1 α=0.5`` or ``seq-KD beam 1``."""
    method = system.get("method") or "-"
    parts = []
    if "seq-KD" in method:
        parts.append(f"seq-KD beam {system.get('distill_beam', '?')}")
    if "word-KD" in method:
        parts.append(f"word-KD T={fmt(system.get('kd_temperature'))} α={fmt(system.get('kd_alpha'))}")
    return " + ".join(parts) or method


def _teacher_paths(records: list[dict[str, Any]]) -> set[str]:
    """Checkpoints that some scored system learned from (word-KD teacher or seq-KD decoder)."""
    paths = set()
    for record in records:
        system = record.get("system", {})
        paths.update(p for p in (system.get("teacher_path") or "").split(":") if p)
        paths.update(system.get("distill_teachers") or [])
    return {str(Path(p).resolve()) for p in paths}


def _engine(record: dict[str, Any]) -> str:
    """The engine that decoded a BLEU record (records older than the engines were fairseq's)."""
    return record.get("engine", {}).get("name", "fairseq")


def _measured(record: dict[str, Any]) -> tuple[str, str]:
    """What a record measured: a checkpoint (its sha256) on a split. A system's BLEU, stability, speed and
    int8 BLEU records are matched by it, so that a record of another split is never taken for this one."""
    return record["checkpoint"]["sha256"], record["split"]


def _warn_unmatched(records: list[tuple[Path, dict[str, Any]]], reported: set[tuple[str, str]]) -> None:
    """Name every record the report leaves out: nothing is dropped without a word."""
    for path, record in records:
        if _measured(record) not in reported:
            logger.warning(f"{path}: no BLEU record (fairseq engine) of its checkpoint on split "
                           f"'{record['split']}' in this run directory: left out of the report")


def build_rows(run_dir: Path) -> list[SystemRow]:
    stability_records = load_records(run_dir, "stability-*.json", STABILITY_RECORD_KEYS)
    speed_records = load_records(run_dir, "speed-*.json", SPEED_RECORD_KEYS)
    all_bleu = load_records(run_dir, "bleu-*.json", BLEU_RECORD_KEYS)
    int8_records = [(path, rec) for path, rec in all_bleu if _engine(rec) == f"ctranslate2-{INT8.removeprefix('ct2-')}"]
    bleu_records = [(path, record) for path, record in all_bleu if _engine(record) == "fairseq"]
    _warn_unmatched(stability_records + speed_records + int8_records, {_measured(r) for _, r in bleu_records})
    stability = {_measured(rec): rec for _, rec in stability_records}
    speed = {_measured(rec): rec for _, rec in speed_records}
    int8_bleu = {_measured(rec): rec["scores"]["bleu"]["score"] for _, rec in int8_records}
    teachers = _teacher_paths([record for _, record in bleu_records])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seeds: dict[str, list[int | None]] = defaultdict(list)
    for path, record in bleu_records:
        groups[system_name(path, run_dir)].append(record)
        seeds[system_name(path, run_dir)].append(seed_of(path, record))
    rows = []
    for name, members in sorted(groups.items()):
        system = members[0].get("system", {})
        word_kd = "word-KD" in system.get("method", "")
        analysed = [stability[_measured(r)] for r in members if _measured(r) in stability]
        rows.append(SystemRow(
            system=name, method=system.get("method", "-"), method_label=method_label(system),
            label_smoothing=system.get("label_smoothing"),
            teacher_label_smoothing=system.get("teacher_label_smoothing"),
            temperature=system.get("kd_temperature") if word_kd else None,
            alpha=system.get("kd_alpha") if word_kd else None,
            is_teacher=any(str(Path(r["checkpoint"]["path"]).resolve()) in teachers for r in members),
            bleu=[r["scores"]["bleu"]["score"] for r in members],
            bleu_by_seed={seed: r["scores"]["bleu"]["score"] for seed, r in zip(seeds[name], members)},
            chrf=[r["scores"]["chrf"]["score"] for r in members],
            ter=[r["scores"]["ter"]["score"] for r in members],
            one_minus_s=[a["one_minus_s"] for a in analysed],
            ece=[a["ece_15_bins"] for a in analysed],
            provenance=members + analysed,
            warnings=list(dict.fromkeys([*(w for r in members for w in r.get("system", {}).get("warnings", [])),
                                         *(w for r in members + analysed for w in r.get("warnings", []))])),
            checkpoints={str(Path(r["checkpoint"]["path"]).resolve()) for r in members},
            teacher_checkpoints=_teacher_paths(members),
            speed=next((speed[_measured(r)] for r in members if _measured(r) in speed), None),
            int8_bleu=[score for r in members if (score := _int8_bleu(_measured(r), int8_bleu, speed)) is not None],
        ))
    return rows


def _int8_bleu(measured_on: tuple[str, str], bleu_records: dict[tuple[str, str], float],
               speed: dict[tuple[str, str], dict[str, Any]]) -> float | None:
    """A checkpoint's BLEU on a split with CTranslate2 int8: from ``lskd-eval bleu --engine ctranslate2
    --quantization int8``, else from its speed record (the same decoding)."""
    if measured_on in bleu_records:
        return bleu_records[measured_on]
    measured = speed.get(measured_on, {}).get("engines", {}).get(INT8, {})
    return measured["bleu"]["score"] if "bleu" in measured else None


def _mean4(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f}" if values else "-"


def markdown_table(rows: list[SystemRow]) -> str:
    """The results table; the size and speed columns only when some system has a speed record."""
    header = ["system", "method", "teacher", "LS", "seeds", "BLEU", "chrF", "TER", "1 - S", "ECE"]
    measured = any(row.speed for row in rows)
    if measured:
        header += ["params", "MB (int8)", "words/s (int8, 1 thread)", "int8 BLEU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.system, row.method_label, row.teacher, fmt(row.label_smoothing), str(row.seeds),
                 mean_sd(row.bleu), mean_sd(row.chrf), mean_sd(row.ter), _mean4(row.one_minus_s), _mean4(row.ece)]
        if measured:
            words = row.engine_speed(INT8)
            cells += [f"{row.parameters / 1e6:.2f} M" if row.parameters else "-",
                      f"{row.int8_megabytes:.1f}" if row.int8_megabytes else "-",
                      f"{words:.0f}" if words else "-", mean_sd(row.int8_bleu) if row.int8_bleu else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(rows: list[SystemRow]) -> list[str]:
    """A few lines with the paper's question answered: teachers, then each KD method by teacher."""
    lines = []
    teachers = [r for r in rows if r.is_teacher]
    if teachers:
        lines.append("teachers: " + " | ".join(
            f"LS {fmt(r.label_smoothing)}: BLEU {mean_sd(r.bleu)}, 1 - S {_mean4(r.one_minus_s)}, "
            f"ECE {_mean4(r.ece)}" for r in teachers))
    by_method: dict[str, list[SystemRow]] = defaultdict(list)
    for row in rows:
        if not row.is_teacher:
            by_method[row.method_label].append(row)
    taught = {label: members for label, members in by_method.items() if any(r.teacher != "none" for r in members)}
    for label, members in taught.items():
        lines.append(f"{label} students: " + " | ".join(
            f"teacher {r.teacher}: BLEU {mean_sd(r.bleu)}" for r in members) + _ls_gap(members))
    for label, members in by_method.items():
        if label not in taught:
            lines.append(f"{label} students without a teacher: BLEU " + " | ".join(mean_sd(r.bleu) for r in members))
    return lines + temperature_lines(rows) + [line for row in rows if (line := _against_teacher(row, rows))]


def _against_teacher(student: SystemRow, rows: list[SystemRow]) -> str | None:
    """``S: 3.1 x faster and 4.2 x smaller than its teacher T, at 93 % of its BLEU`` (CTranslate2 int8, 1 thread)."""
    teachers = [r for r in rows if r.checkpoints & student.teacher_checkpoints]
    if len(teachers) != 1 or not student.bleu:
        return None
    teacher = teachers[0]
    speeds, sizes = (student.engine_speed(INT8), teacher.engine_speed(INT8)), (student.int8_megabytes, teacher.int8_megabytes)
    if None in speeds or None in sizes or not teacher.bleu:
        return None
    bleu = statistics.mean(student.bleu), statistics.mean(teacher.bleu)
    share = f"at {100 * bleu[0] / bleu[1]:.0f} % of its BLEU" if bleu[1] > 0 else f"at BLEU {bleu[0]:.2f} to its {bleu[1]:.2f}"
    return (f"{student.system}: {speeds[0] / speeds[1]:.1f} x faster and {sizes[1] / sizes[0]:.1f} x smaller than its "
            f"teacher {teacher.system}, {share} (CTranslate2 int8, 1 thread; BLEU with fairseq)")


def _smoothed_and_plain(members: list[SystemRow]) -> tuple[SystemRow, SystemRow] | None:
    """The student of the LS teacher and that of the non-LS teacher, when there is exactly one of each."""
    smoothed = [r for r in members if r.teacher_smoothed is True]
    plain = [r for r in members if r.teacher_smoothed is False]
    return (smoothed[0], plain[0]) if len(smoothed) == 1 and len(plain) == 1 else None


def _ls_gap(members: list[SystemRow]) -> str:
    """`` (LS teacher - non-LS teacher: +0.42 BLEU, mean over seeds 1, 2, 3 ...: not resolved ...)``: the gap
    judged over seeds (:func:`eval.report_layout.ls_gap_over_seeds`); from one seed, the plain words that it
    compares two trained models, and the paired bootstrap of those two models over test sentences."""
    pair = _smoothed_and_plain(members)
    if pair is None:
        return ""
    smoothed, plain = pair
    teachers_per_seed = min(len(smoothed.teacher_checkpoints), len(plain.teacher_checkpoints)) > 1
    verdict = ls_gap_over_seeds(smoothed.bleu_by_seed, plain.bleu_by_seed, "BLEU", teachers_per_seed,
                                "LSKD_TEACHER_SEEDS")
    bootstrap = _significance(smoothed, plain) if len(smoothed.bleu) == len(plain.bleu) == 1 else ""
    return f" (LS teacher - non-LS teacher{verdict}{bootstrap})"


def _significance(smoothed: SystemRow, plain: SystemRow) -> str:
    """``; paired bootstrap over test sentences p = 0.210: these two models do not differ measurably on this
    test set`` for two single-seed systems whose hypotheses are at hand (sacrebleu's paired bootstrap, 1000
    samples): it resamples sentences, so it speaks of these two trained models only. Empty otherwise."""
    files = []
    for row in (plain, smoothed):
        records = [r for r in row.provenance if "scores" in r]
        if len(records) != 1 or not all(Path(records[0].get(k, "")).is_file() for k in ("hypotheses_file", "references_file")):
            return ""
        files.append(records[0])
    if files[0]["references_file"] != files[1]["references_file"]:
        return ""
    test = paired_bootstrap(read_lines(files[0]["hypotheses_file"]), read_lines(files[1]["hypotheses_file"]),
                            read_lines(files[0]["references_file"]))
    if test["BLEU"]["system"] == test["BLEU"]["baseline"]:  # sacrebleu reports p = 1 / (samples + 1) here
        return "; paired bootstrap over test sentences: the same BLEU"
    p = test["BLEU"]["p_value"]
    verdict = "differ" if p < 0.05 else "do not differ measurably"
    return f"; paired bootstrap over test sentences p = {p:.3f}: these two models {verdict} on this test set"


def temperature_lines(rows: list[SystemRow]) -> list[str]:
    """Per word-KD alpha with students at two or more temperatures: does the LS-teacher gap change between
    the lowest and the highest T (:func:`eval.report_layout.gap_change_over_temperature`)?"""
    gaps: dict[float | None, dict[float, dict[int | None, float]]] = defaultdict(dict)
    for temperature in sorted({r.temperature for r in rows if r.temperature is not None and r.method == "word-KD"}):
        at_t = [r for r in rows if r.temperature == temperature and r.method == "word-KD" and not r.is_teacher]
        for alpha in sorted({r.alpha for r in at_t}, key=str):
            pair = _smoothed_and_plain([r for r in at_t if r.alpha == alpha])
            if pair:
                gaps[alpha][temperature] = difference_by_seed(pair[0].bleu_by_seed, pair[1].bleu_by_seed)
    return [f"word-KD α={fmt(alpha)} students, {line}" for alpha, by_t in gaps.items()
            if (line := gap_change_over_temperature(by_t, "BLEU"))]


def plot_bleu_vs_temperature(rows: list[SystemRow], path: Path) -> Path | None:
    """Students' BLEU against T, one line per teacher label smoothing; None without two temperatures."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row.temperature is not None and row.bleu:
            series[f"teacher LS {fmt(row.teacher_label_smoothing)}"].append((row.temperature, statistics.mean(row.bleu)))
    return plot_against_temperature(series, "BLEU (sacrebleu)", path)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _ratio(value: dict[str, float] | None) -> str:
    return "-" if not value else f"{value['mean']:.2f}"


def distilled_data_section(rows: list[SystemRow]) -> list[str]:
    """For each sequence-level KD system: how degenerate its teacher's outputs were (a trigram repeated
    more than three times; target/source length in pieces) against the references, and what was left out."""
    lines = []
    for row in rows:
        data = next((r["system"]["distilled_data"] for r in row.provenance if "distilled_data" in r.get("system", {})),
                    None)
        if data is None:
            continue
        left_out = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(data["left_out"].items())) or "none"
        lines.append(f"| {row.system} | {_share(data['teacher_outputs_loop_rate'])} | "
                     f"{_share(data['references_loop_rate'])} | {_ratio(data['teacher_outputs_length_ratio'])} | "
                     f"{_ratio(data['references_length_ratio'])} | {'on' if data['filter'] else 'off'} | "
                     f"{data['inputs']} | {data['outputs']} | {left_out} |")
    if not lines:
        return []
    return ["## Distilled data", "", "Loops: share of targets repeating a trigram of pieces more than three times; "
            "length: mean target/source length in pieces (lskd-distill-corpus, distill.json).", "",
            "| system | teacher loops | reference loops | teacher length | reference length | filter | inputs | "
            "pairs | left out |", "|---|---|---|---|---|---|---|---|---|", *lines, ""]


def warnings_section(rows: list[SystemRow]) -> list[str]:
    """What the records of each system could not establish (a teacher or data not found) or left out
    (too-long sentences), if anything."""
    lines = [f"- **{row.system}**: {warning}" for row in rows for warning in row.warnings]
    return ["## Warnings", "", *lines, ""] if lines else []


def plot_bleu_vs_speed(rows: list[SystemRow], path: Path) -> Path | None:
    """BLEU against source words/s (1 thread, log scale) for every system and engine of the speed records:
    the distillation trade-off at a glance. None with fewer than two points."""
    series: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for row in rows:
        for engine, summary in (row.speed or {}).get("engines", {}).items():
            words = row.engine_speed(engine)
            if words and "bleu" in summary:
                series[engine].append((words, summary["bleu"]["score"], row.system))
    if sum(len(points) for points in series.values()) < 2:
        return None
    from matplotlib.figure import Figure  # not pyplot: no process-wide backend or figure registry

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axis = figure.subplots()
    for engine, points in sorted(series.items()):
        axis.scatter([w for w, _, _ in points], [b for _, b, _ in points], label=engine)
        for words, bleu, system in points:
            axis.annotate(system, (words, bleu), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("source words/s, 1 thread (lskd-eval speed)")
    axis.set_ylabel("BLEU (sacrebleu)")
    axis.legend(title="engine")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _kind_and_detail(record: dict[str, Any]) -> tuple[str, str]:
    """What a record measured, and what one needs to read its number (signature, classes, engines)."""
    if "one_minus_s" in record:
        return "stability", f"{record['classes']} classes"
    if "runs" in record:
        runs = ", ".join(f"{r['engine']} x {r['threads']}" for r in record["runs"])
        return "speed", f"{runs} threads, beam {record['decoding']['beam']}, {record['cores']} cores; {record['measurement']}"
    return "BLEU", record["scores"]["bleu"]["signature"]


def provenance_section(rows: list[SystemRow]) -> str:
    lines = ["## Provenance", ""]
    for row in rows:
        lines.append(f"**{row.system}**")
        for record in row.provenance + ([row.speed] if row.speed else []):
            kind, signature = _kind_and_detail(record)
            versions = record.get("versions", {})
            lines.append(
                f"- {kind}: checkpoint `{record['checkpoint']['path']}` (sha256 {record['checkpoint']['sha256'][:12]}), "
                f"data {record['data']['fingerprint'][:12]}, split {record['split']}, {signature}; "
                f"fairseq {versions.get('ve-fairseq', '?')}, ctranslate2 {versions.get('ctranslate2', '-')}, "
                f"sacrebleu {versions.get('sacrebleu', '?')}, "
                f"lskd {versions.get('lskd', '?')}; `{record['command']}`"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(run_dir: Path, out: Path | None = None, note: str | None = None) -> Path:
    """Write ``report.md`` (table, summary, plots, provenance); ``note`` records how the run was sized."""
    rows = build_rows(run_dir)
    if not rows and any(run_dir.rglob("classification-*.json")):  # lskd-train image classification runs
        return write_classification_report(run_dir, out, note)
    if not rows:
        raise LSKDError(f"no bleu-*.json records under {run_dir}: run lskd-eval bleu first")
    out = out or run_dir / "report.md"
    plot = plot_bleu_vs_temperature(rows, out.parent / "plots" / "bleu_vs_temperature.png")
    plot_bleu_vs_speed(rows, out.parent / "plots" / "bleu_vs_words_per_second.png")
    legend = ("BLEU/chrF/TER: sacrebleu on detokenized output against raw references (signatures below); "
              "mean ± sd over seeds. LS: the system's own label smoothing (fairseq convention, eps spread over "
              "V - 1 classes); teacher: the label smoothing of the model it learned from. 1 - S: stability "
              "(Shen et al. Eq. 2) over the most frequent gold tokens; ECE: 15 bins. Both from a teacher-forced "
              "pass. " + SEED_VERDICT_LEGEND + " With one seed, the paired bootstrap over test sentences only says "
              "whether those two trained models differ on this test set.")
    if any(row.speed for row in rows):
        legend += (" params: trainable parameters; MB (int8): the CTranslate2 int8 export on disk; words/s: source "
                   "words per second translating the split with CTranslate2 int8 on 1 thread; int8 BLEU: BLEU of "
                   "that output (all from lskd-eval speed, which also records fairseq and float32).")
    return assemble_report(out, run_dir, summary_lines(rows), note,
                           ["## Results", "", markdown_table(rows), "", legend, "", *distilled_data_section(rows),
                            *warnings_section(rows)],
                           (plot, "BLEU vs temperature"), provenance_section(rows))


@console_script("lskd-report")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lskd-report", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="markdown file (default RUN_DIR/report.md)")
    parser.add_argument("--note", help="how the run was sized (model sizes, updates, beams), written into the report")
    parser.add_argument("--summary", action="store_true", help="also print the report's summary lines")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():  # else "no bleu-*.json records", which hides a typo
        raise LSKDError(f"{args.run_dir}: no such directory")
    check_writable((args.out or args.run_dir / "report.md").parent)  # the report and its plots/
    report = write_report(args.run_dir, args.out, args.note)
    if args.summary:
        print("\n".join(summary_lines(build_rows(args.run_dir))))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
