"""Translate a split with a decoding engine and score it with sacrebleu against raw references.

The references are the untouched raw target lines recorded by ``lskd-prepare``; the hypotheses
are SentencePiece-decoded as ``fairseq-generate --post-process sentencepiece`` does. The fairseq
engine decodes in ``fairseq-generate``'s batches, so its BLEU is ``fairseq-generate``'s
(:mod:`fairseq_plugins.decoding`). Nothing is scored unless every reference has exactly one
hypothesis, in order.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sacrebleu
from tqdm import tqdm

from lskd.checkpoint import CheckpointError
from lskd.corpus import CorpusError, read_lines, write_lines
from lskd.decoding import DecodingOptions, EngineSettings, is_too_long, pieces_to_text
from lskd.prepared import load_prepared
from lskd.provenance import provenance, sha256_file, write_json


def score(hypotheses: list[str], references: list[str]) -> dict[str, dict[str, Any]]:
    """Corpus BLEU, chrF and TER with their sacrebleu signatures; counts must match."""
    if len(hypotheses) != len(references):
        raise CorpusError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: refusing to score a partial output"
        )
    if not references:
        raise CorpusError("no references to score against")
    results = {}
    for name, metric in (("bleu", sacrebleu.BLEU()), ("chrf", sacrebleu.CHRF()), ("ter", sacrebleu.TER())):
        result = metric.corpus_score(hypotheses, [references])
        results[name] = {"score": round(result.score, 2), "signature": str(metric.get_signature()), "text": str(result)}
    return results


def paired_bootstrap(baseline: list[str], system: list[str], references: list[str], samples: int = 1000) -> dict[str, Any]:
    """sacrebleu's paired bootstrap resampling (``--paired-bs``): is ``system`` really better than ``baseline``?"""
    from sacrebleu.significance import PairedTest

    if not len(baseline) == len(system) == len(references):
        raise CorpusError(f"paired test needs equal counts: baseline {len(baseline)}, system {len(system)}, "
                          f"references {len(references)}")
    test = PairedTest([("baseline", baseline), ("system", system)],
                      {"BLEU": sacrebleu.BLEU(), "chrF": sacrebleu.CHRF()}, [references], test_type="bs", n_samples=samples)
    signatures, results = test()
    return {
        metric: {"baseline": results[metric][0].score, "system": results[metric][1].score,
                 "system_mean": results[metric][1].mean, "system_ci95": results[metric][1].ci,
                 "p_value": results[metric][1].p_value, "signature": str(signatures[metric])}
        for metric in signatures  # "BLEU", "chrF2"
    } | {"samples": samples}


def score_files(hypothesis_file: str | Path, reference_file: str | Path) -> dict[str, dict[str, Any]]:
    hypotheses, references = read_lines(hypothesis_file), read_lines(reference_file)
    if len(hypotheses) != len(references):
        raise CorpusError(
            f"{hypothesis_file} has {len(hypotheses)} lines but {reference_file} has {len(references)}"
        )
    return score(hypotheses, references)


def ordered(hypotheses: dict[int, str], expected: int) -> list[str]:
    """Hypotheses in sentence-id order; fail naming the ids that have none."""
    missing = [i for i in range(expected) if i not in hypotheses]
    extra = sorted(set(hypotheses) - set(range(expected)))
    if missing or extra:
        raise CorpusError(
            f"decoding returned {len(hypotheses)} hypotheses for {expected} sentences; "
            f"missing ids {missing[:20]}{'...' if len(missing) > 20 else ''}, unexpected ids {extra[:20]}"
        )
    return [hypotheses[i] for i in range(expected)]


def describe_system(checkpoint: Path) -> dict[str, Any]:
    """How the scored checkpoint was trained, including its teacher's label smoothing (for reports).

    ``method``: ``CE`` (trained on the data's own targets), ``word-KD`` (a teacher in the loss),
    ``seq-KD`` (trained on a corpus written by ``lskd-distill-corpus``), or ``seq-KD + word-KD``.
    """
    from fairseq_plugins.checkpoint import describe_checkpoint

    system = describe_checkpoint(checkpoint)
    word_kd = (system["kd_alpha"] or 0) > 0
    teacher_ls = _word_kd_teacher_smoothing(system) if word_kd else None
    distilled = _distillation_manifest(system["data"])
    if distilled is not None:
        teacher_ls = teacher_ls or [t.get("label_smoothing") for t in distilled["teachers"]]
        system["distill_beam"] = distilled["options"]["beam"]
        system["distill_teachers"] = [t["path"] for t in distilled["teachers"]]
    system["teacher_label_smoothing"] = teacher_ls
    methods = (["seq-KD"] if distilled is not None else []) + (["word-KD"] if word_kd else [])
    system["method"] = " + ".join(methods) or "CE"
    return system


def _word_kd_teacher_smoothing(system: dict[str, Any]) -> list[float] | float | None:
    if system["teacher_topk_cache"]:
        manifest = Path(system["teacher_topk_cache"]) / "train" / "manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8")).get("teacher_label_smoothing")
    elif system["teacher_path"]:
        paths = [p for p in system["teacher_path"].split(":") if p]
        if all(Path(p).is_file() for p in paths):
            from fairseq_plugins.checkpoint import describe_checkpoint

            return [describe_checkpoint(p)["label_smoothing"] for p in paths]
    return None


def _distillation_manifest(bin_dir: str | None) -> dict[str, Any] | None:
    """``distill.json`` of the sequence-level KD corpus a model was trained on, if it was."""
    manifest = Path(bin_dir).parent / "distill.json" if bin_dir else None
    if manifest is None or not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8"))


def evaluate(checkpoint: Path, data_dir: Path, split: str, out_dir: Path, options: DecodingOptions,
             settings: EngineSettings = EngineSettings()) -> dict[str, Any]:
    """Decode ``split`` of a ``lskd-prepare`` directory and write hypotheses plus a JSON record.

    The fairseq engine writes ``bleu-SPLIT.json`` and ``SPLIT.hyp.TGT`` (the report's BLEU: equal to
    ``fairseq-generate``'s); another engine adds its name, e.g. ``bleu-SPLIT-ctranslate2-int8.json``.
    """
    from fairseq_plugins.decoding import open_engine

    data = load_prepared(data_dir)
    ensemble = ":" in str(checkpoint)
    if ensemble and settings.engine == "fairseq":
        raise CheckpointError(f"lskd-eval bleu scores one checkpoint, not the ensemble {checkpoint}")
    if not ensemble and not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    src, tgt = data.src, data.tgt
    references = read_lines(data.raw(split, tgt))
    engine = open_engine(settings, data, split, str(checkpoint), options)  # CTranslate2 refuses an ensemble
    over = [i for i in range(len(references)) if is_too_long(engine, i)]
    if over:
        raise CorpusError(f"{len(over)} sources of {split} are longer than the model's {engine.max_source_tokens} "
                          f"positions (ids {over[:20]}): nothing scored")
    with tqdm(total=len(references), unit="sent", desc=f"translating {split} ({engine.name})") as progress:
        hypotheses = ordered({i: pieces_to_text(nbest[0].pieces)
                              for i, nbest in engine.translate(range(len(references)), progress.update).items()},
                             len(references))
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if engine.name == "fairseq" else f"-{engine.name}"
    hypothesis_file = out_dir / f"{split}{suffix}.hyp.{tgt}"
    write_lines(hypothesis_file, hypotheses)
    record = {
        "scores": score(hypotheses, references),
        "split": split,
        "pair": f"{src}-{tgt}",
        "sentences": len(references),
        "hypotheses_file": str(hypothesis_file),
        "references_file": str(data.raw(split, tgt)),
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
        "system": describe_system(checkpoint),
        "data": data.provenance(),
        "decoding": asdict(options),
        "engine": engine.describe(),
        "decode_seconds": round(engine.decode_seconds, 3),
        **provenance(),
    }
    write_json(out_dir / f"bleu-{split}{suffix}.json", record)
    return record


def format_table(record_paths: list[Path]) -> str:
    """A plain-text table of BLEU/chrF/TER records, labelled by their run directory, with signatures."""
    records = [(Path(p).resolve().parent.parent.name, json.loads(Path(p).read_text(encoding="utf-8")))
               for p in record_paths]
    width = max(len("system"), *(len(label) for label, _ in records))
    lines = [f"{'system':<{width}}   BLEU   chrF    TER  sentences"]
    for label, record in records:
        s = record["scores"]
        lines.append(f"{label:<{width}}  {s['bleu']['score']:5.1f}  {s['chrf']['score']:5.1f}  "
                     f"{s['ter']['score']:5.1f}  {record['sentences']:9d}")
    for metric in ("bleu", "chrf", "ter"):
        signatures = sorted({record["scores"][metric]["signature"] for _, record in records})
        lines.append(f"{metric} signature: {' / '.join(signatures)}")
    return "\n".join(lines)
