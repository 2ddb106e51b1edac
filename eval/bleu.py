"""Translate a split with ``fairseq-generate`` and score it with sacrebleu against raw references.

The references are the untouched raw target lines recorded by ``lskd-prepare``; the hypotheses
are SentencePiece-decoded. Nothing is scored unless every reference has exactly one hypothesis,
in order: fairseq silently drops a tail batch unless ``--required-batch-size-multiple 1``.
A sentence pair longer than the model accepts (which ``fairseq-generate`` refuses) stops the run,
naming it, unless the ``skip`` policy leaves it out: the record then says which and how many.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import sacrebleu

from lskd.checkpoint import CheckpointError
from lskd.corpus import CorpusError, iter_lines, read_lines, write_lines
from lskd.errors import LSKDError, name_ids
from lskd.prepared import load_prepared
from lskd.provenance import provenance, sha256_file, write_json
from lskd.scoring import bleu_metric, corpus_metrics


class DecodingError(LSKDError, RuntimeError):
    """fairseq-generate failed; the message gives its last line and where its full log is."""


@dataclass(frozen=True)
class DecodeOptions:
    beam: int = 5
    lenpen: float = 1.0
    batch_size: int = 64
    max_len_a: float = 1.2
    max_len_b: int = 10
    cpu: bool = True


def plugin_dir() -> str:
    """Absolute path of the ``fairseq_plugins`` user dir (its import makes checkpoints load safely)."""
    import fairseq_plugins

    return str(Path(fairseq_plugins.__file__).resolve().parent)


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


def generate(checkpoint: Path, bin_dir: Path, split: str, options: DecodeOptions, log_path: Path,
             skip_too_long: bool = False) -> dict[int, str]:
    """Run fairseq-generate; return {sentence id: detokenized hypothesis}. ``skip_too_long``: leave out the
    sentences longer than the model accepts (fairseq's ``--skip-invalid-size-inputs-valid-test``)."""
    command = [
        sys.executable, "-m", "fairseq_cli.generate", str(bin_dir),
        "--user-dir", plugin_dir(),
        "--path", str(checkpoint), "--gen-subset", split,
        "--beam", str(options.beam), "--lenpen", str(options.lenpen),
        "--batch-size", str(options.batch_size), "--required-batch-size-multiple", "1",
        "--max-len-a", str(options.max_len_a), "--max-len-b", str(options.max_len_b),
        "--post-process", "sentencepiece", "--num-workers", "0",
    ] + (["--cpu"] if options.cpu else []) + (["--skip-invalid-size-inputs-valid-test"] if skip_too_long else [])
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=log)
    if result.returncode != 0:
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise DecodingError(f"fairseq-generate failed (exit {result.returncode}): {lines[-1] if lines else 'no output'}; "
                            f"full log: {log_path}")
    hypotheses = {}
    for line in iter_lines(io.BytesIO(result.stdout), "fairseq-generate output"):
        if line.startswith("D-"):
            ident, _, text = line.split("\t", 2)
            hypotheses[int(ident[2:])] = text
    return hypotheses


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
    system["teacher_label_smoothing"] = teacher_ls
    methods = (["seq-KD"] if distilled is not None else []) + (["word-KD"] if word_kd else [])
    system["method"] = " + ".join(methods) or ("CE" if data_found else "unknown")
    if not data_found:
        warnings.append("without its training data, whether it learned from a sequence-level KD corpus is unknown")
    return system


def _word_kd_teacher_smoothing(system: dict[str, Any], warnings: list[str]) -> list[float] | float | None:
    """The label smoothing of a word-KD student's teacher(s), from the top-k cache's manifest or the
    teacher checkpoints; None, with a warning, when they cannot be read."""
    if system["teacher_topk_cache"]:
        manifest = Path(system["teacher_topk_cache"]) / "train" / "manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8")).get("teacher_label_smoothing")
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
    return json.loads(manifest.read_text(encoding="utf-8"))


def evaluate(checkpoint: Path, data_dir: Path, split: str, out_dir: Path, options: DecodeOptions,
             tokenize: str | None = None, too_long: str = "error") -> dict[str, Any]:
    """Decode ``split`` of a ``lskd-prepare`` directory and write hypotheses plus a JSON record.

    BLEU is tokenized for the data's target language (``prep.json``), or by ``tokenize``. Sentence
    pairs longer than the model accepts stop it (:class:`lskd.too_long.TooLongError`, naming them)
    unless ``too_long="skip"``: they are then left out of decoding and scoring, and the record's
    ``too_long``, ``sentences`` and ``warnings`` say so; the scored references are written next to
    the hypotheses.
    """
    from fairseq_plugins.tasks import check_lengths, task_and_model

    data = load_prepared(data_dir)
    corpus_metrics(data.tgt, tokenize)  # a tokenizer that cannot run fails now, not after decoding
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    system = describe_system(checkpoint)  # reads it safely first: a refused checkpoint is never decoded
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
    out_dir.mkdir(parents=True, exist_ok=True)
    hypotheses = ordered(
        generate(checkpoint, data.bin_dir, split, options, out_dir / f"generate-{split}.log", bool(skipped)),
        scored_ids,
    )
    hypothesis_file = out_dir / f"{split}.hyp.{tgt}"
    write_lines(hypothesis_file, hypotheses)
    references_file = data.raw(split, tgt)
    if skipped:
        references_file = out_dir / f"{split}.ref.{tgt}"
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
        **provenance(),
    }
    write_json(out_dir / f"bleu-{split}.json", record)
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
    lines += [f"{label}: {warning}" for label, record in records for warning in record.get("warnings", [])]
    return "\n".join(lines)
