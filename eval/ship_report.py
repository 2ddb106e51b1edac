"""``lskd-ship-report``: is the student good enough to ship, and how much faster and smaller is it?

    lskd-ship-report --data DATA --teacher-scores T/bleu-test.json --student-scores S/bleu-test.json \\
        --teacher-speed T/beam1/speed-test.json T/beam5/speed-test.json \\
        --student-speed S/beam1/speed-test.json S/beam5/speed-test.json \\
        --gate-metric chrf --gate-percent 90 [--comet-model DIR] --out RUN/ship

Reads the records of ``lskd-eval bleu`` (teacher and student on the same test set and beam) and
``lskd-eval speed`` (CTranslate2 int8 and float32 at one thread, one record per beam), adds the paired
bootstrap of the student against the teacher (sacrebleu's, as ``lskd-eval compare``) and, with
``--comet-model``, COMET (needs ``unbabel-comet``); writes OUT/ship.json and OUT/ship.md and prints their
first lines: ``student: N x faster, M x smaller, at K % of the teacher's chrF (BLEU, COMET)`` and the
ship gate's verdict (lskd.ship), then the records each number comes from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from eval.bleu import compare_files
from lskd.corpus import read_lines
from lskd.distill_config import comet_installed
from lskd.errors import console_script, finite_float
from lskd.output_files import check_writable
from lskd.prepared import load_prepared
from lskd.provenance import provenance, read_json, write_json
from lskd.ship import (METRICS, SHIPPED_ENGINE, ShipRecordError, check_comparable, comet_system_score, decide,
                       engine_run, headline, measured, record_beam, speed_at_beam)

SCORE_KEYS = ("scores.bleu.score", "scores.chrf.score", "scores.ter.score", "hypotheses_file", "references_file",
              "sentences", "decoding.beam")
SPEED_KEYS = ("engines", "runs", "decoding.beam")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-ship-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="the prepared directory both were scored on")
    parser.add_argument("--teacher-scores", required=True, type=Path, help="the teacher's bleu-SPLIT.json")
    parser.add_argument("--student-scores", required=True, type=Path, help="the student's bleu-SPLIT.json")
    parser.add_argument("--teacher-speed", required=True, type=Path, nargs="+", help="the teacher's speed-SPLIT.json, one per beam")
    parser.add_argument("--student-speed", required=True, type=Path, nargs="+", help="the student's speed-SPLIT.json, one per beam")
    parser.add_argument("--gate-metric", choices=list(METRICS), default="chrf")
    parser.add_argument("--gate-percent", type=finite_float, default=90.0,
                        help="ship when the student reaches this %% of the teacher's gate metric (default %(default)s)")
    parser.add_argument("--comet-model", help="a COMET model directory (checkpoints/model.ckpt); needs unbabel-comet")
    parser.add_argument("--samples", type=int, default=1000, help="paired bootstrap samples (default %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="directory for ship.json and ship.md")
    return parser


def read_records(paths: list[Path], required: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {str(path): read_json(path, required, "rerun the recipe's stage that wrote it") for path in paths}


def comet_scores(model_dir: str | None, sources: list[str], scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """COMET per model (``{"teacher": x, "student": y}``), or why it was not measured."""
    if model_dir is None:
        return {"measured": False, "why": "no COMET model directory given"}
    if not comet_installed():
        return {"measured": False, "why": "unbabel-comet is not installed (pip install unbabel-comet)"}
    return {"measured": True, "model": model_dir, **{
        who: comet_system_score(model_dir, sources, read_lines(record["hypotheses_file"]),
                                read_lines(record["references_file"])) for who, record in scores.items()}}


def ship_record(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the decision rests on, and the decision."""
    data = load_prepared(args.data)
    scores = {"teacher": read_json(args.teacher_scores, SCORE_KEYS, "rerun the teacher's lskd-eval bleu"),
              "student": read_json(args.student_scores, SCORE_KEYS, "rerun the student's lskd-eval bleu")}
    check_comparable(scores["teacher"], scores["student"])
    beam = record_beam(scores["teacher"])
    speeds = {"teacher": read_records(args.teacher_speed, SPEED_KEYS), "student": read_records(args.student_speed, SPEED_KEYS)}
    at_beam = {who: speed_at_beam(list(records.values()), beam, who) for who, records in speeds.items()}
    comet = comet_scores(args.comet_model, read_lines(data.raw("test", data.src)), scores)
    models = {who: measured(scores[who], at_beam[who], comet.get(who)) for who in scores}
    decision = decide(models["teacher"], models["student"], args.gate_metric, args.gate_percent)
    bootstrap = compare_files(Path(scores["teacher"]["hypotheses_file"]), Path(scores["student"]["hypotheses_file"]),
                              Path(scores["teacher"]["references_file"]), args.samples, tgt_lang=data.tgt)
    bootstrap = json.loads(json.dumps(bootstrap, default=float))  # sacrebleu's numpy numbers, as JSON numbers
    return {
        "headline": headline(decision), **decision, "beam": beam,
        "scores": {who: {metric: record["scores"][metric] for metric in ("bleu", "chrf", "ter")}
                   for who, record in scores.items()},
        "comet": comet,
        "paired_bootstrap": bootstrap,
        "speed": {who: [speed_row(path, record) for path, record in records.items()] for who, records in speeds.items()},
        "records": {"teacher_scores": str(args.teacher_scores), "student_scores": str(args.student_scores),
                    "teacher_speed": [str(p) for p in args.teacher_speed], "student_speed": [str(p) for p in args.student_speed]},
        **provenance(),
    }


def speed_row(path: str, record: dict[str, Any]) -> dict[str, Any]:
    """One speed record's numbers at one thread: int8 words/s, latency, peak memory, size; int8 and float32 BLEU."""
    int8 = engine_run(record)
    row = {"record": path, "beam": record_beam(record), "words_per_second": int8["words_per_second"],
           "latency_ms": int8["latency_ms"], "peak_resident_mb": int8["peak_resident_mb"],
           "parameters": int8["parameters"], "size_bytes": int8["size_bytes"], "bleu_int8": int8["bleu"]["score"]}
    if "ct2-float32" in record["engines"]:
        row["bleu_float32"] = record["engines"]["ct2-float32"]["bleu"]["score"]
    return row


def markdown(record: dict[str, Any]) -> str:
    """ship.md: the headline, where each number comes from, then the measurements side by side."""
    lines = [*record["headline"], "",
             f"- quality: {record['records']['teacher_scores']} (teacher), {record['records']['student_scores']} "
             f"(student), beam {record['beam']}",
             f"- speed and size ({SHIPPED_ENGINE}, 1 thread): {', '.join(record['records']['teacher_speed'])} (teacher), "
             f"{', '.join(record['records']['student_speed'])} (student)", ""]
    bootstrap = record["paired_bootstrap"]
    for metric in ("BLEU", "chrF2"):
        r = bootstrap[metric]
        lines.append(f"- paired bootstrap ({bootstrap['samples']} samples), {metric}: teacher {r['baseline']:.2f}, "
                     f"student {r['system']:.2f}, p = {r['p_value']:.4f} ({r['signature']})")
    comet = record["comet"]
    lines.append(f"- COMET: teacher {comet['teacher']:.4f}, student {comet['student']:.4f} ({comet['model']})"
                 if comet["measured"] else f"- COMET: not measured ({comet['why']})")
    lines += ["", "| model | BLEU | chrF | TER | beam | words/s (int8) | latency p50 ms | peak MB | params | MB (int8) "
              "| BLEU int8 | BLEU float32 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for who in ("teacher", "student"):
        s = record["scores"][who]
        for row in record["speed"][who]:
            lines.append(f"| {who} | {s['bleu']['score']} | {s['chrf']['score']} | {s['ter']['score']} | {row['beam']} "
                         f"| {row['words_per_second']} | {row['latency_ms']['p50']} | {row['peak_resident_mb']} "
                         f"| {row['parameters']:,} | {row['size_bytes'] / 1e6:.1f} | {row['bleu_int8']} "
                         f"| {row.get('bleu_float32', '-')} |")
    lines += ["", *(f"- {metric} signature: {record['scores']['teacher'][metric]['signature']}" for metric in ("bleu", "chrf", "ter"))]
    return "\n".join(lines) + "\n"


@console_script("lskd-ship-report")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.comet_model is not None and not Path(args.comet_model).is_dir():
        raise ShipRecordError(f"--comet-model {args.comet_model}: no such directory")
    check_writable(args.out)
    record = ship_record(args)
    write_json(args.out / "ship.json", record)
    (args.out / "ship.md").write_text(markdown(record), encoding="utf-8")
    print("\n".join(record["headline"]))
    print(f"records: {args.teacher_scores}, {args.student_scores} (quality); "
          f"{', '.join(map(str, args.teacher_speed + args.student_speed))} (speed, size); "
          f"report: {args.out / 'ship.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
