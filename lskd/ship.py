"""Should this student ship? Its speed, size and quality against its teacher's, and the ship gate.

Production distillation pipelines decide from numbers measured the same way for both models:
Bergamot's students keep 92-99 % of their teacher's BLEU and run about 10x faster on one CPU core;
Mozilla's translations ships a model only when its COMET is within a stated margin. Here:

- **faster**: the student's source words/s over the teacher's, both CTranslate2 int8 at one thread and
  the scores' beam (``lskd-eval speed`` records, :data:`SHIPPED_ENGINE`);
- **smaller**: the teacher's bytes on disk over the student's, both as int8 CTranslate2 exports;
- **% of the teacher**: 100 x student / teacher for chrF, BLEU and COMET (higher is better for each;
  TER is not, so it has no "% of the teacher"), from ``lskd-eval bleu`` records on the same test set;
- **the gate**: the student's share of the teacher's ``metric`` is at least ``percent_of_teacher``.

Everything here is pure: records in, numbers and lines out (:mod:`eval.ship_report` reads and writes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lskd.errors import LSKDError

#: the deployable form both models are timed and weighed in
SHIPPED_ENGINE = "ct2-int8"
#: quality metrics with a "% of the teacher", as the records name them, and as people write them
METRICS = {"chrf": "chrF", "bleu": "BLEU", "comet": "COMET"}


class ShipRecordError(LSKDError, ValueError):
    """A record that cannot support the decision: a missing engine, thread count or beam, or two records
    measured differently (another beam, another test set)."""


@dataclass(frozen=True)
class Measured:
    """One model as measured: ``scores`` by metric name (:data:`METRICS`; None where not measured),
    ``words_per_second`` (source words/s, :data:`SHIPPED_ENGINE` at one thread) and ``size_bytes`` (on disk,
    the same engine's export)."""

    scores: Mapping[str, float | None]
    words_per_second: float
    size_bytes: int


def percent_of_teacher(teacher: float | None, student: float | None) -> float | None:
    """100 x ``student`` / ``teacher``; None where either was not measured or the teacher scored <= 0 (a
    share of nothing says nothing)."""
    if teacher is None or student is None or teacher <= 0:
        return None
    return 100 * student / teacher


def decide(teacher: Measured, student: Measured, metric: str, percent: float) -> dict[str, Any]:
    """The decision as a record: ``faster`` (student words/s / teacher's), ``smaller`` (teacher bytes /
    student's), ``scores`` and ``percent_of_teacher`` per metric, and ``gate`` ``{"metric",
    "percent_of_teacher", "passed"}``; passed needs the student's share of the teacher's ``metric`` >=
    ``percent`` (unrounded)."""
    if metric not in METRICS:
        raise ShipRecordError(f"ship gate metric {metric!r} is not one of {', '.join(METRICS)}")
    shares = {name: percent_of_teacher(teacher.scores.get(name), student.scores.get(name)) for name in METRICS}
    return {
        "faster": student.words_per_second / teacher.words_per_second,
        "smaller": teacher.size_bytes / student.size_bytes,
        "scores": {name: {"teacher": teacher.scores.get(name), "student": student.scores.get(name)} for name in METRICS},
        "percent_of_teacher": shares,
        "gate": {"metric": metric, "percent_of_teacher": percent,
                 "passed": shares[metric] is not None and shares[metric] >= percent},
    }


def _share(decision: Mapping[str, Any], metric: str) -> str:
    """``93.50 %``; ``not measured``; or ``n/a (teacher 0.00)`` when the teacher's score is not positive."""
    share, teacher = decision["percent_of_teacher"][metric], decision["scores"][metric]["teacher"]
    if share is not None:
        return f"{share:.2f} %"
    return "not measured" if teacher is None or decision["scores"][metric]["student"] is None else f"n/a (teacher {teacher:.2f})"


def headline(decision: Mapping[str, Any]) -> list[str]:
    """The report's first two lines: ``student: N x faster, M x smaller, at K % of the teacher's chrF (BLEU
    ..., COMET ...)`` and ``ship gate chrF >= G % of the teacher's: passed`` (or ``not passed``)."""
    gate = decision["gate"]
    lead = METRICS[gate["metric"]]
    others = ", ".join(f"{METRICS[name]} {_share(decision, name)}" for name in METRICS if name != gate["metric"])
    quality = (f"at {_share(decision, gate['metric'])} of the teacher's {lead}"
               if decision["percent_of_teacher"][gate["metric"]] is not None else f"{lead} {_share(decision, gate['metric'])}")
    return [f"student: {decision['faster']:.2f} x faster, {decision['smaller']:.2f} x smaller, {quality} ({others})",
            f"ship gate {lead} >= {gate['percent_of_teacher']:g} % of the teacher's: "
            + ("passed" if gate["passed"] else "not passed")]


def engine_run(speed_record: Mapping[str, Any], engine: str = SHIPPED_ENGINE, threads: int = 1) -> dict[str, Any]:
    """The run of ``engine`` at ``threads`` in an ``lskd-eval speed`` record (words/s, latency, peak memory),
    with the engine's ``parameters``, ``size_bytes`` and ``bleu``; a :class:`ShipRecordError` if absent."""
    runs = [run for run in speed_record.get("runs", []) if run.get("engine") == engine and run.get("threads") == threads]
    if not runs or engine not in speed_record.get("engines", {}):
        raise ShipRecordError(f"no {engine} run at {threads} thread(s) in the speed record (measured: "
                              + ", ".join(f"{run.get('engine')} at {run.get('threads')}" for run in
                                          speed_record.get("runs", [])) + ")")
    return {**speed_record["engines"][engine], **runs[0]}


def record_beam(record: Mapping[str, Any]) -> int:
    """The beam an ``lskd-eval bleu`` or ``speed`` record decoded with."""
    return record["decoding"]["beam"]


def check_comparable(teacher_scores: Mapping[str, Any], student_scores: Mapping[str, Any]) -> None:
    """Teacher and student scored on the same references, sentences and beam, or a :class:`ShipRecordError`."""
    for what, value in (("references", lambda r: r["references_file"]), ("sentences", lambda r: r["sentences"]),
                        ("beam", record_beam)):
        if value(teacher_scores) != value(student_scores):
            raise ShipRecordError(f"teacher and student were scored with other {what}: {value(teacher_scores)} "
                                  f"and {value(student_scores)}")


def speed_at_beam(speed_records: list[Mapping[str, Any]], beam: int, who: str) -> Mapping[str, Any]:
    """The one speed record of ``speed_records`` decoded at ``beam``, or a :class:`ShipRecordError`."""
    found = [record for record in speed_records if record_beam(record) == beam]
    if not found:
        raise ShipRecordError(f"no speed record of the {who} at beam {beam} (beams: "
                              f"{', '.join(str(record_beam(r)) for r in speed_records) or 'none'})")
    return found[0]


def measured(scores: Mapping[str, Any], speed_record: Mapping[str, Any], comet: float | None) -> Measured:
    """A model as :func:`decide` takes it, from its ``lskd-eval bleu`` record, its speed record at the same
    beam, and its COMET system score (None: not measured)."""
    run = engine_run(speed_record)
    return Measured({"chrf": scores["scores"]["chrf"]["score"], "bleu": scores["scores"]["bleu"]["score"],
                     "comet": comet}, run["words_per_second"], run["size_bytes"])


def comet_system_score(model_dir: str, sources: list[str], hypotheses: list[str], references: list[str]) -> float:
    """COMET's system score with the model in ``model_dir`` (a directory holding ``checkpoints/model.ckpt``,
    as COMET's downloads are laid out), on the CPU. Needs ``unbabel-comet`` (an optional install)."""
    from comet import load_from_checkpoint

    model = load_from_checkpoint(str(Path(model_dir) / "checkpoints" / "model.ckpt"))
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
    return float(model.predict(data, batch_size=16, gpus=0, progress_bar=False).system_score)
