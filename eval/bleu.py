"""Translate a split with a decoding engine and score it with sacrebleu against raw references.

The references are the untouched raw target lines recorded by ``lskd-prepare``; the hypotheses
are SentencePiece-decoded as ``fairseq-generate --post-process sentencepiece`` does. The fairseq
engine decodes in ``fairseq-generate``'s batches, so its BLEU is ``fairseq-generate``'s
(:mod:`fairseq_plugins.decoding`). Nothing is scored unless every reference has exactly one
hypothesis, in order. A sentence pair longer than the model accepts stops the run, naming it,
unless the ``skip`` policy leaves it out: the record then says which and how many. Both sides are
scored in a stated Unicode normalisation form (:mod:`lskd.unicode_form`; NFC by default, so that a
score does not depend on how a file encodes the same text), and every file scored is inspected for
text the model cannot produce (decomposed or compatibility characters, encoding damage): the record's
``warnings`` name each such file with the share of its lines.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import sacrebleu
from tqdm import tqdm

from lskd.checkpoint import CheckpointError
from lskd.corpus import CorpusError, read_lines, write_lines
from lskd.decoding import (DecodingOptions, EngineSettings, Progress, TranslationEngine, is_too_long, pieces_to_text,
                           refuse_ensemble)
from lskd.distilled_data import read_distilled
from lskd.errors import name_ids
from lskd.hf_teacher import TeacherEngine, check_engine, teacher_engine_on_split, teacher_identity
from lskd.output_files import check_writable
from lskd.prepared import PreparedData, load_prepared
from lskd.provenance import provenance, read_json, sha256_file, write_json
from lskd.scoring import bleu_metric, corpus_metrics
from lskd.teacher_spec import read_teacher_spec
from lskd.too_long import LengthCheck
from lskd.unicode_form import DEFAULT_UNICODE_FORM, normalize_lines, unicode_warnings

#: what a score record must hold to be tabled (``lskd-eval table``), and a BLEU record to be reported
SCORE_RECORD_KEYS = ("sentences", *(f"scores.{metric}.{field}" for metric in ("bleu", "chrf", "ter")
                                    for field in ("score", "signature")))
BLEU_RECORD_KEYS = ("checkpoint.path", "checkpoint.sha256", "split", *SCORE_RECORD_KEYS)


def score(hypotheses: list[str], references: list[str], tgt_lang: str | None = None,
          tokenize: str | None = None, unicode_form: str = DEFAULT_UNICODE_FORM) -> dict[str, dict[str, Any]]:
    """Corpus BLEU, chrF and TER with their sacrebleu signatures and ``unicode_form``; counts must match.

    BLEU is tokenized for ``tgt_lang`` as ``sacrebleu -l SRC-TGT`` does, or by ``tokenize``
    (:func:`lskd.scoring.bleu_metric`). Both sides are brought to ``unicode_form`` first
    (:func:`lskd.unicode_form.normalize_lines`: ``nfc``, ``nfkc`` or ``none``, sacrebleu's raw numbers).
    """
    if len(hypotheses) != len(references):
        raise CorpusError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: refusing to score a partial output"
        )
    if not references:
        raise CorpusError("no references to score against")
    hypotheses, references = normalize_lines(hypotheses, unicode_form), normalize_lines(references, unicode_form)
    results = {}
    for name, metric in corpus_metrics(tgt_lang, tokenize).items():
        result = metric.corpus_score(hypotheses, [references])
        results[name] = {"score": round(result.score, 2), "signature": str(metric.get_signature()), "text": str(result),
                         "unicode_form": unicode_form}
    return results


def paired_bootstrap(baseline: list[str], system: list[str], references: list[str], samples: int = 1000,
                     tgt_lang: str | None = None, tokenize: str | None = None,
                     unicode_form: str = DEFAULT_UNICODE_FORM) -> dict[str, Any]:
    """sacrebleu's paired bootstrap resampling (``--paired-bs``): is ``system`` really better than ``baseline``?
    All three sides are scored in ``unicode_form`` (:func:`score`)."""
    from sacrebleu.significance import PairedTest

    if not len(baseline) == len(system) == len(references):
        raise CorpusError(f"paired test needs equal counts: baseline {len(baseline)}, system {len(system)}, "
                          f"references {len(references)}")
    if not references:  # sacrebleu's IndexError otherwise
        raise CorpusError("no references to score against")
    baseline, system, references = (normalize_lines(lines, unicode_form) for lines in (baseline, system, references))
    test = PairedTest([("baseline", baseline), ("system", system)],
                      {"BLEU": bleu_metric(tgt_lang, tokenize), "chrF": sacrebleu.CHRF()}, [references], test_type="bs",
                      n_samples=samples)
    signatures, results = test()
    return {
        metric: {"baseline": results[metric][0].score, "system": results[metric][1].score,
                 "system_mean": results[metric][1].mean, "system_ci95": results[metric][1].ci,
                 "p_value": results[metric][1].p_value, "signature": str(signatures[metric])}
        for metric in signatures  # "BLEU", "chrF2"
    } | {"samples": samples, "unicode_form": unicode_form}


def compare_files(baseline_file: Path, system_file: Path, reference_file: Path, samples: int = 1000,
                  tgt_lang: str | None = None, tokenize: str | None = None,
                  unicode_form: str = DEFAULT_UNICODE_FORM) -> dict[str, Any]:
    """:func:`paired_bootstrap` of two hypothesis files against a reference file, which must have as many
    lines, plus ``warnings``: each file with text the model cannot produce
    (:func:`lskd.unicode_form.unicode_warnings`)."""
    paths = (baseline_file, system_file, reference_file)
    files = [read_lines(path) for path in paths]
    if len({len(lines) for lines in files}) > 1:
        raise CorpusError("a paired test needs the same number of lines in every file: "
                          + ", ".join(f"{path} has {len(lines)}" for path, lines in zip(paths, files)))
    result = paired_bootstrap(*files, samples, tgt_lang, tokenize, unicode_form)
    return result | {"warnings": unicode_warnings({str(p): lines for p, lines in zip(paths, files)}, unicode_form)}


def score_files(hypothesis_file: str | Path, reference_file: str | Path, tgt_lang: str | None = None,
                tokenize: str | None = None, unicode_form: str = DEFAULT_UNICODE_FORM) -> dict[str, dict[str, Any]]:
    """:func:`score` of a hypothesis file against a reference file with as many lines."""
    hypotheses, references = read_lines(hypothesis_file), read_lines(reference_file)
    if len(hypotheses) != len(references):
        raise CorpusError(
            f"{hypothesis_file} has {len(hypotheses)} lines but {reference_file} has {len(references)}"
        )
    return score(hypotheses, references, tgt_lang, tokenize, unicode_form)


def file_warnings(paths: Sequence[str | Path], unicode_form: str = DEFAULT_UNICODE_FORM) -> list[str]:
    """A warning per file and kind of text a model cannot produce, with the share of its lines
    (:func:`lskd.unicode_form.unicode_warnings`), for files scored in ``unicode_form``."""
    return unicode_warnings({str(path): read_lines(path) for path in dict.fromkeys(paths)}, unicode_form)


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
    """``distill.json`` of the sequence-level KD corpus a model was trained on, if it was; files that do
    not match it are refused, named (:func:`lskd.distilled_data.read_distilled`)."""
    manifest = Path(bin_dir.split(":")[0]).parent / "distill.json"
    if not manifest.is_file():
        return None
    return read_distilled(manifest.parent)


def evaluate(checkpoint: Path, data_dir: Path, split: str, out_dir: Path, options: DecodingOptions,
             settings: EngineSettings = EngineSettings(), tokenize: str | None = None,
             too_long: str = "error", unicode_form: str = DEFAULT_UNICODE_FORM) -> dict[str, Any]:
    """Decode ``split`` of a ``lskd-prepare`` directory and write hypotheses plus a JSON record.

    The fairseq engine writes ``bleu-SPLIT.json`` and ``SPLIT.hyp.TGT`` (the report's BLEU: equal to
    ``fairseq-generate``'s); another engine adds its name, e.g. ``bleu-SPLIT-ctranslate2-int8.json``.
    BLEU is tokenized for the data's target language (``prep.json``), or by ``tokenize``. Sentence
    pairs longer than the model accepts stop it (:class:`lskd.too_long.TooLongError`, naming them)
    unless ``too_long="skip"``: they are then left out of decoding and scoring, and the record's
    ``too_long``, ``sentences`` and ``warnings`` say so; the scored references are written next to
    the hypotheses. Both sides are scored in ``unicode_form`` (:func:`score`); ``warnings`` name the
    references or hypotheses with text the model cannot produce. A location where the record cannot be
    written is an :class:`lskd.output_files.OutputError` once the checkpoint is read, before any decoding.

    ``checkpoint`` may also be a Hugging Face or CTranslate2 teacher directory (:mod:`lskd.teacher_spec`):
    it translates the split's raw sources with its own tokenizer (:class:`lskd.hf_teacher.TeacherEngine`,
    engine ``ctranslate2`` or ``transformers``), its detokenised output is scored against the same raw
    references, and the record's ``checkpoint`` describes the teacher (kind, architecture, each file's
    sha256; ``sha256``: :func:`lskd.hf_teacher.teacher_identity`), so teacher and student are scored alike.
    """
    data = load_prepared(data_dir)
    data.sentences(split)  # a split it lacks is named now, before an export or fairseq's "Dataset not found"
    corpus_metrics(data.tgt, tokenize)  # a tokenizer that cannot run fails now, not after decoding
    if ":" in str(checkpoint):
        if settings.engine == "ctranslate2":
            refuse_ensemble(checkpoint)  # says which engine averages ensembles
        raise CheckpointError(f"lskd-eval bleu scores one checkpoint, not the ensemble {checkpoint}")
    if checkpoint.is_dir():
        engine, lengths, scored = _teacher_on_split(checkpoint, data, split, out_dir, options, settings)
    else:
        engine, lengths, scored = _checkpoint_on_split(checkpoint, data, split, out_dir, options, settings)
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
        hypotheses = ordered(best_texts(engine, scored_ids, progress.update), scored_ids)
    suffix = "" if engine.name == "fairseq" else f"-{engine.name}"
    hypothesis_file = out_dir / f"{split}{suffix}.hyp.{tgt}"
    write_lines(hypothesis_file, hypotheses)
    references_file = data.raw(split, tgt)
    if skipped:
        references_file = out_dir / f"{split}{suffix}.ref.{tgt}"
        write_lines(references_file, references)
    record = {
        "scores": score(hypotheses, references, tgt, tokenize, unicode_form),
        "split": split,
        "pair": f"{src}-{tgt}",
        "sentences": len(references),
        "too_long": lengths.record(too_long),
        "warnings": ([lengths.left_out_warning()] if skipped else []) + unicode_warnings(
            {str(references_file): references, str(hypothesis_file): hypotheses}, unicode_form),
        "hypotheses_file": str(hypothesis_file),
        "references_file": str(references_file),
        **scored,
        "data": data.provenance(),
        "decoding": asdict(options),
        "engine": engine.describe(),
        "decode_seconds": round(engine.decode_seconds, 3),
        **provenance(),
    }
    write_json(out_dir / f"bleu-{split}{suffix}.json", record)
    return record


def _checkpoint_on_split(checkpoint: Path, data: PreparedData, split: str, out_dir: Path, options: DecodingOptions,
                         settings: EngineSettings) -> tuple[TranslationEngine, LengthCheck, dict[str, Any]]:
    """A fairseq checkpoint's engine on ``split``, its sentences too long for it, and what the record
    says of it (``checkpoint``, ``system``)."""
    from fairseq_plugins.decoding import open_engine
    from fairseq_plugins.tasks import check_lengths, task_and_model

    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    system = describe_system(checkpoint)  # reads it safely first: a refused checkpoint is never decoded
    check_writable(out_dir)  # a read-only or full location fails now, not after the decoding
    engine = open_engine(settings, data, split, str(checkpoint), options)  # an export for other data is refused
    task, model, _ = task_and_model(checkpoint, data)  # fairseq-generate's task defaults and the model's limits
    return engine, check_lengths(task, [model], split), {
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)}, "system": system}


def _teacher_on_split(directory: Path, data: PreparedData, split: str, out_dir: Path, options: DecodingOptions,
                      settings: EngineSettings) -> tuple[TeacherEngine, LengthCheck, dict[str, Any]]:
    """A Hugging Face or CTranslate2 teacher's engine on the raw sources of ``split``, its sentences
    longer than it accepts (in its own tokens), and what the record says of it."""
    spec = read_teacher_spec(directory)
    check_engine(spec, settings)
    check_writable(out_dir)
    engine = teacher_engine_on_split(spec, data, split, options, backend=settings.engine,
                                     quantization=settings.quantization, device=settings.device,
                                     threads=settings.resolved_threads)
    sentences = data.sentences(split)
    lengths = LengthCheck(split, (engine.max_source_tokens, None), sentences,
                          tuple(i for i in range(sentences) if is_too_long(engine, i)))
    return engine, lengths, {"checkpoint": spec.describe() | {"sha256": teacher_identity(spec)},
                             "system": {"method": f"{spec.kind} teacher", "architecture": spec.architecture,
                                        "warnings": []}}


def best_texts(engine: TranslationEngine, ids: Sequence[int], progress: Progress) -> dict[int, str]:
    """``{id: text}`` of each best hypothesis: a teacher's detokenised output
    (:meth:`lskd.hf_teacher.TeacherEngine.translate_text`), or pieces decoded as ``fairseq-generate`` does."""
    if isinstance(engine, TeacherEngine):
        return {i: nbest[0][0] for i, nbest in engine.translate_text(ids, progress).items()}
    return {i: pieces_to_text(nbest[0].pieces) for i, nbest in engine.translate(ids, progress).items()}


def format_table(record_paths: list[Path]) -> str:
    """A plain-text table of BLEU/chrF/TER records, labelled by their run directory, with signatures and the
    Unicode form scored in (``none`` for records written before LSKD normalised: they scored text as it was)."""
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
    forms = sorted({record["scores"]["bleu"].get("unicode_form", "none") for _, record in records})
    lines.append(f"unicode form: {' / '.join(forms)}")
    lines += [f"{label}: {warning}" for label, record in records for warning in record.get("warnings", [])]
    return "\n".join(lines)
