"""Translate a split with a decoding engine and score it with sacrebleu against raw references.

The references are the untouched raw target lines recorded by ``lskd-prepare``; the hypotheses
are SentencePiece-decoded as ``fairseq-generate --post-process sentencepiece`` does. The fairseq
engine decodes in ``fairseq-generate``'s batches, so its BLEU is ``fairseq-generate``'s
(:mod:`fairseq_plugins.decoding`). Nothing is scored unless every reference has exactly one
hypothesis, in order. A sentence pair longer than the model accepts stops the run, naming it,
unless the ``skip`` policy leaves it out: the record then says which and how many.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import sacrebleu
from tqdm import tqdm

from lskd.checkpoint import CheckpointError
from lskd.corpus import CorpusError, read_lines, write_lines
from lskd.decoding import DecodingOptions, EngineSettings, pieces_to_text, refuse_ensemble
from lskd.errors import name_ids
from lskd.prepared import load_prepared
from lskd.provenance import provenance, read_json, sha256_file, write_json
from lskd.scoring import bleu_metric, corpus_metrics

#: what a score record must hold to be tabled (``lskd-eval table``), and a BLEU record to be reported
SCORE_RECORD_KEYS = ("sentences", *(f"scores.{metric}.{field}" for metric in ("bleu", "chrf", "ter")
                                    for field in ("score", "signature")))
BLEU_RECORD_KEYS = ("checkpoint.path", "checkpoint.sha256", "split", *SCORE_RECORD_KEYS)


def score(hypotheses: list[str], references: list[str], tgt_lang: str | None = None,
          tokenize: str | None = None) -> dict[str, dict[str, Any]]:
    """Corpus BLEU, chrF and TER with their sacrebleu signatures; counts must match.

    BLEU is tokenized for ``tgt_lang`` as ``sacrebleu -l SRC-TGT`` does, or by ``tokenize``
    (:func:`lskd.scoring.bleu_metric`).
    """
    if len(hypotheses) != len(references):
        raise CorpusError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: refusing to score a partial output"
        )
    if not references:
        raise CorpusError("no references to score against")
    results = {}
    for name, metric in corpus_metrics(tgt_lang, tokenize).items():
        result = metric.corpus_score(hypotheses, [references])
        results[name] = {"score": round(result.score, 2), "signature": str(metric.get_signature()), "text": str(result)}
    return results


def paired_bootstrap(baseline: list[str], system: list[str], references: list[str], samples: int = 1000,
                     tgt_lang: str | None = None, tokenize: str | None = None) -> dict[str, Any]:
    """sacrebleu's paired bootstrap resampling (``--paired-bs``): is ``system`` really better than ``baseline``?"""
    from sacrebleu.significance import PairedTest

    if not len(baseline) == len(system) == len(references):
        raise CorpusError(f"paired test needs equal counts: baseline {len(baseline)}, system {len(system)}, "
                          f"references {len(references)}")
    if not references:  # sacrebleu's IndexError otherwise
        raise CorpusError("no references to score against")
    test = PairedTest([("baseline", baseline), ("system", system)],
                      {"BLEU": bleu_metric(tgt_lang, tokenize), "chrF": sacrebleu.CHRF()}, [references], test_type="bs",
                      n_samples=samples)
    signatures, results = test()
    return {
        metric: {"baseline": results[metric][0].score, "system": results[metric][1].score,
                 "system_mean": results[metric][1].mean, "system_ci95": results[metric][1].ci,
                 "p_value": results[metric][1].p_value, "signature": str(signatures[metric])}
        for metric in signatures  # "BLEU", "chrF2"
    } | {"samples": samples}


def score_files(hypothesis_file: str | Path, reference_file: str | Path, tgt_lang: str | None = None,
                tokenize: str | None = None) -> dict[str, dict[str, Any]]:
    hypotheses, references = read_lines(hypothesis_file), read_lines(reference_file)
    if len(hypotheses) != len(references):
        raise CorpusError(
            f"{hypothesis_file} has {len(hypotheses)} lines but {reference_file} has {len(references)}"
        )
    return score(hypotheses, references, tgt_lang, tokenize)


def ordered(hypotheses: dict[int, str], expected: Sequence[int]) -> list[str]:
    """Hypotheses of the ``expected`` sentence ids, in that order; fail naming the ids that have none
    and those not expected."""
    missing = [i for i in expected if i not in hypotheses]
    extra = sorted(set(hypotheses) - set(expected))
    if missing or extra:
        raise CorpusError(
            f"decoding returned {len(hypotheses)} hypotheses for {len(expected)} sentences; "
            f"missing ids [{name_ids(missing)}], unexpected ids [{name_ids(extra)}]"
        )
    return [hypotheses[i] for i in expected]


def describe_system(checkpoint: Path) -> dict[str, Any]:
    """How the scored checkpoint was trained, including its teacher's label smoothing (for reports).

    ``method``: ``CE`` (trained on the data's own targets), ``word-KD`` (the KD criterion with
    ``kd_alpha > 0``), ``seq-KD`` (trained on a corpus written by ``lskd-distill-corpus``), ``seq-KD +
    word-KD``, or ``unknown`` when the training data cannot be found, so that seq-KD cannot be told
    from CE (a word-KD student stays ``word-KD``). Paths are resolved from the checkpoint, not the
    current directory (:func:`fairseq_plugins.checkpoint.describe_checkpoint`); what cannot be found
    is a warning in ``warnings`` and an unknown (None) teacher label smoothing, never another method.
    """
    from fairseq_plugins.checkpoint import describe_checkpoint

    system = describe_checkpoint(checkpoint)
    warnings = system["warnings"]
    word_kd = (system["kd_alpha"] or 0) > 0  # kd_alpha is the KD criterion's own option
    teacher_ls = _word_kd_teacher_smoothing(system, warnings) if word_kd else None
    data_found = system["data"] is not None and Path(system["data"].split(":")[0]).is_dir()
    distilled = _distillation_manifest(system["data"]) if data_found else None
    if distilled is not None:
        teacher_ls = teacher_ls or [t.get("label_smoothing") for t in distilled["teachers"]]
        system["distill_beam"] = distilled["options"]["beam"]
        system["distill_teachers"] = [t["path"] for t in distilled["teachers"]]
        system["distilled_data"] = distilled_data_summary(distilled)
    system["teacher_label_smoothing"] = teacher_ls
    methods = (["seq-KD"] if distilled is not None else []) + (["word-KD"] if word_kd else [])
    system["method"] = " + ".join(methods) or ("CE" if data_found else "unknown")
    if not data_found:
        warnings.append("without its training data, whether it learned from a sequence-level KD corpus is unknown")
    return system


def distilled_data_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a report says about a sequence-level KD corpus (``distill.json``): how degenerate the
    teacher's outputs were (loop rate, length ratio, against the references), what was left out and why."""
    quality = manifest.get("quality", {})  # absent from manifests written before LSKD measured it
    counts = manifest.get("counts", {})
    left_out = {k: n for k, n in counts.items() if k.endswith(("_dropped", "_copied_reference"))}
    return {"inputs": counts.get("inputs"), "outputs": counts.get("outputs"), "left_out": left_out,
            "filter": (manifest.get("filter") or {}).get("enabled", False),
            "source_text_lines": sum(f["lines"] for f in manifest.get("source_text", [])),
            **{f"{side}_{key}": (quality.get(side) or {}).get(key)
               for side in ("teacher_outputs", "references", "written") for key in ("loop_rate", "length_ratio")}}


def _word_kd_teacher_smoothing(system: dict[str, Any], warnings: list[str]) -> list[float] | float | None:
    """The label smoothing of a word-KD student's teacher(s), from the top-k cache's manifest or the
    teacher checkpoints; None, with a warning, when they cannot be read."""
    if system["teacher_topk_cache"]:
        manifest = Path(system["teacher_topk_cache"]) / "train" / "manifest.json"
        if manifest.is_file():
            return read_json(manifest).get("teacher_label_smoothing")
        warnings.append(f"teacher label smoothing unknown: no top-k cache manifest {manifest}")
    elif system["teacher_path"]:
        paths = [p for p in system["teacher_path"].split(":") if p]
        if all(Path(p).is_file() for p in paths):
            from fairseq_plugins.checkpoint import describe_checkpoint

            return [describe_checkpoint(p)["label_smoothing"] for p in paths]
        warnings.append("teacher label smoothing unknown: its teacher checkpoint is not found")
    return None


def _distillation_manifest(bin_dir: str) -> dict[str, Any] | None:
    """``distill.json`` of the sequence-level KD corpus a model was trained on, if it was."""
    manifest = Path(bin_dir.split(":")[0]).parent / "distill.json"
    if not manifest.is_file():
        return None
    return read_json(manifest)


def evaluate(checkpoint: Path, data_dir: Path, split: str, out_dir: Path, options: DecodingOptions,
             settings: EngineSettings = EngineSettings(), tokenize: str | None = None,
             too_long: str = "error") -> dict[str, Any]:
    """Decode ``split`` of a ``lskd-prepare`` directory and write hypotheses plus a JSON record.

    The fairseq engine writes ``bleu-SPLIT.json`` and ``SPLIT.hyp.TGT`` (the report's BLEU: equal to
    ``fairseq-generate``'s); another engine adds its name, e.g. ``bleu-SPLIT-ctranslate2-int8.json``.
    BLEU is tokenized for the data's target language (``prep.json``), or by ``tokenize``. Sentence
    pairs longer than the model accepts stop it (:class:`lskd.too_long.TooLongError`, naming them)
    unless ``too_long="skip"``: they are then left out of decoding and scoring, and the record's
    ``too_long``, ``sentences`` and ``warnings`` say so; the scored references are written next to
    the hypotheses.
    """
    from fairseq_plugins.decoding import open_engine
    from fairseq_plugins.tasks import check_lengths, task_and_model

    data = load_prepared(data_dir)
    data.sentences(split)  # a split it lacks is named now, before an export or fairseq's "Dataset not found"
    corpus_metrics(data.tgt, tokenize)  # a tokenizer that cannot run fails now, not after decoding
    if ":" in str(checkpoint):
        if settings.engine == "ctranslate2":
            refuse_ensemble(checkpoint)  # says which engine averages ensembles
        raise CheckpointError(f"lskd-eval bleu scores one checkpoint, not the ensemble {checkpoint}")
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    system = describe_system(checkpoint)  # reads it safely first: a refused checkpoint is never decoded
    engine = open_engine(settings, data, split, str(checkpoint), options)  # an export for other data is refused
    task, model, _ = task_and_model(checkpoint, data)  # fairseq-generate's task defaults and the model's limits
    lengths = check_lengths(task, [model], split)
    lengths.enforce(too_long, hint="pass --too-long skip to score the other sentences (the record lists the ids "
                                   "left out)")
    src, tgt = data.src, data.tgt
    all_references = read_lines(data.raw(split, tgt))
    if len(all_references) != lengths.sentences:
        raise CorpusError(f"{data.raw(split, tgt)} has {len(all_references)} lines but the binarized '{split}' split "
                          f"{lengths.sentences} sentences: prepare the data again")
    skipped = set(lengths.too_long)
    scored_ids = [i for i in range(lengths.sentences) if i not in skipped]
    references = [all_references[i] for i in scored_ids]
    with tqdm(total=len(scored_ids), unit="sent", desc=f"translating {split} ({engine.name})") as progress:
        hypotheses = ordered({i: pieces_to_text(nbest[0].pieces)
                              for i, nbest in engine.translate(scored_ids, progress.update).items()}, scored_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if engine.name == "fairseq" else f"-{engine.name}"
    hypothesis_file = out_dir / f"{split}{suffix}.hyp.{tgt}"
    write_lines(hypothesis_file, hypotheses)
    references_file = data.raw(split, tgt)
    if skipped:
        references_file = out_dir / f"{split}{suffix}.ref.{tgt}"
        write_lines(references_file, references)
    record = {
        "scores": score(hypotheses, references, tgt, tokenize),
        "split": split,
        "pair": f"{src}-{tgt}",
        "sentences": len(references),
        "too_long": lengths.record(too_long),
        "warnings": [lengths.left_out_warning()] if skipped else [],
        "hypotheses_file": str(hypothesis_file),
        "references_file": str(references_file),
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
        "system": system,
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
    records = [(Path(p).resolve().parent.parent.name, read_json(p, required=SCORE_RECORD_KEYS))
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
    lines += [f"{label}: {warning}" for label, record in records for warning in record.get("warnings", [])]
    return "\n".join(lines)
