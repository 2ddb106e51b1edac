"""``lskd-distill-corpus``: sequence-level KD data (Kim & Rush 2016) from a teacher or an ensemble.

The teacher beam-decodes every source sentence of a split of a ``lskd-prepare`` directory, with
fairseq (``--engine fairseq``, the default; ensembles) or CTranslate2 (``--engine ctranslate2``,
several times faster on CPU; :mod:`lskd.decoding`); the outputs are written as a parallel corpus
and binarized with the *original* dictionaries, ready for ``fairseq-train``. The teacher may also be
a Hugging Face model directory (OPUS-MT's Marian, M2M-100, NLLB) or a CTranslate2 one
(:mod:`lskd.teacher_spec`): it translates the raw sources with its own tokenizer, with CTranslate2
(the default; a Hugging Face directory is converted once into LSKD's cache) or ``--engine
transformers``, and its outputs are normalised as the corpus was and encoded with the student's
SentencePiece model (:mod:`lskd.hf_teacher`); a multilingual one takes ``--teacher-src-lang`` and
``--teacher-tgt-lang`` in its own codes. Nothing is lost silently:

* sentences are asked for by id, so no tail batch can be dropped; outputs are mapped back by id
  and the merge fails naming any id without exactly one output;
* a source longer than the teacher accepts is handled by an explicit policy (``copy-reference``
  or ``drop``), counted in the manifest;
* monolingual source text (``--source-text FILE``, repeatable) is prepared as the corpus was
  (:mod:`data_prep.source_text`) and translated too: every line ends up decoded, too long or
  empty, counted per file;
* degenerate teacher outputs (loops, odd length ratios, the least confident translations) are
  measured always and left out with ``--filter`` (:mod:`lskd.distilled_data`), counted per reason;
  an empty output is always left out;
* work is split into chunks of sentence ids, each written atomically with a sidecar that records
  the fingerprint of every input it was decoded under (the prepared data's, the teacher's sha256,
  the options, the source-text files): a killed run resumes from its last finished chunk, a run
  on other inputs is refused naming what changed (``--overwrite`` starts afresh), and
  ``--num-shards/--shard-id`` let several processes or machines decode disjoint parts of the same
  chunk list; the run whose shard completes the set merges;
* one writer per output directory: shards of one job share it, the same shard twice, another job
  or an ``--overwrite`` while anyone writes are refused (``flock``: a killed run holds nothing);
* the merge runs under a lock (a second merger waits, then merges only if the result is not
  complete and current); ``spm/``, ``raw/`` and ``bin/`` are written beside their place and renamed
  in, and ``distill.json`` is written last, certifying their sizes and sha256s: no manifest, no
  finished corpus (:func:`lskd.distilled_data.read_distilled` is how a reader checks one);
* source sentences the teacher's vocabulary does not cover are counted (share of ``<unk>`` pieces
  per split and per source-text file, a warning above 1 %) and, with ``--filter``, a source mostly
  made of them is left out (``unknown_source``).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import sacrebleu
from tqdm import tqdm

from data_prep.pipeline import punctuation_normaliser, run_preprocess, unknown_pieces_record
from data_prep.source_text import SPLIT as SOURCE_SPLIT, SourceTextFile, check_source_text, prepare_source_text
from lskd.corpus import CorpusError, read_lines, write_lines
from lskd.decoding import (TORCH_ENGINES, DecodingOptions, EngineSettings, Hypothesis, TranslationEngine,
                           add_engine_arguments, check_cuda, engine_settings, is_too_long, refuse_ensemble,
                           set_decoder_threads)
from lskd.distilled_data import (MANIFEST, FilterOptions, describe_targets, reason_to_drop, score_per_token,
                                 score_threshold, unknown_share)
from lskd.errors import console_script, count_at_least, finite_float, output_directory
from lskd.hf_teacher import (Languages, check_engine, default_engine, normalise_text, open_tokenizer,
                             teacher_engine_on_split, teacher_identity)
from lskd.output_files import (certify, changed_inputs, check_writable, file_record, mismatched_files, verify_files,
                               writer_lock)
from lskd.prepared import PreparedData, load_prepared
from lskd.provenance import RecordError, provenance, read_json, sha256_file, write_json
from lskd.scoring import DEFAULT_TOKENIZER, TOKENIZERS, bleu_metric, bleu_tokenizer
from lskd.teacher_spec import TeacherSpec, TeacherSpecError, read_teacher_spec

POLICIES = ("copy-reference", "drop")
#: Lock files in ``--out`` (flocks, :func:`lskd.output_files.writer_lock`); starting afresh keeps them.
LOCK_PREFIX = ".lskd."
CLAIM_LOCK = ".lskd.claim.lock"  # held while a run checks and records the options and prepares the source text
MERGE_LOCK = ".lskd.merge.lock"
#: The marker file that LSKD used as a merge lock before it took flocks: never a lock now.
OLD_MERGE_MARKER = "merge.lock"
ADVICE = "pass --overwrite to start afresh"


@dataclass(frozen=True)
class DistillOptions:
    """Everything that changes the distilled corpus (recorded; a resume must use the same)."""

    split: str = "train"
    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    nbest: int = 1
    seq_inter: bool = False
    too_long: str = "copy-reference"
    chunk_size: int = 1000
    max_source_tokens: int | None = None
    teacher_sha256: tuple[str, ...] = ()
    bleu_tokenize: str = DEFAULT_TOKENIZER  # sacrebleu's, for the target language (Seq-Inter's sentence BLEU)
    engine: str = "fairseq"
    quantization: str | None = None  # CTranslate2's weight type; None for fairseq and transformers (float32)
    teacher_src_lang: str | None = None  # a multilingual Hugging Face / CTranslate2 teacher's own codes
    teacher_tgt_lang: str | None = None
    source_text_sha256: tuple[str, ...] = ()  # the --source-text files, in order
    source_text_only: bool = False
    data_fingerprint: str = ""  # PreparedData.fingerprint of --data

    def decoding(self, batch_size: int) -> DecodingOptions:
        return DecodingOptions(beam=self.beam, lenpen=self.lenpen, max_len_a=self.max_len_a,
                               max_len_b=self.max_len_b, nbest=self.nbest, batch_size=batch_size)

    @property
    def fingerprint(self) -> str:
        """sha256 over every input of the decoding (data, teachers, source text, options): what a chunk
        was decoded under."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _option_labels() -> dict[str, str]:
    """How a refusal names each field of :class:`DistillOptions`: its flag, or the input it stands for."""
    inputs = {"data_fingerprint": "the prepared data's fingerprint",
              "teacher_sha256": "the teacher's sha256", "source_text_sha256": "the --source-text files' sha256",
              "bleu_tokenize": "--tokenize"}
    return {key: inputs.get(key, "--" + key.replace("_", "-")) for key in asdict(DistillOptions())}


def chunk_ranges(total: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]


def shard_chunks(chunks: list[tuple[int, int]], num_shards: int, shard_id: int) -> list[tuple[int, int]]:
    """Chunks of this shard: every ``num_shards``-th, so shards get equal shares of the corpus."""
    if not 0 <= shard_id < num_shards:
        raise CorpusError(f"--shard-id {shard_id} must be in [0, {num_shards})")
    return chunks[shard_id::num_shards]


def chunk_path(out: Path, start: int, end: int) -> Path:
    return out / "chunks" / f"{start:09d}-{end:09d}.jsonl"


def sidecar_path(chunk: Path) -> Path:
    """The chunk's record: decoding time, the fingerprint it was decoded under, its size and sha256."""
    return chunk.with_suffix(".time.json")


def check_chunk(chunk: Path, fingerprint: str) -> None:
    """Refuse a chunk decoded under another fingerprint than ``fingerprint`` or changed since, naming it."""
    sidecar = sidecar_path(chunk)
    record = read_json(sidecar, required=("fingerprint", "chunk"), advice=ADVICE)
    if record["fingerprint"] != fingerprint:
        raise CorpusError(f"{chunk} was decoded under other inputs (fingerprint {record['fingerprint'][:12]}, this "
                          f"run's {fingerprint[:12]}); {ADVICE}")
    verify_files(chunk.parent, {chunk.name: record["chunk"]}, str(sidecar), ADVICE)


def decode_pieces(spm_model: Path):
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    return lambda pieces: processor.decode_pieces(pieces.split())


def choose(nbest: list[Hypothesis], reference: str | None, detok, sentence_bleu: sacrebleu.BLEU | None) -> Hypothesis:
    """The kept hypothesis: the best-scoring one, or with Seq-Inter (``sentence_bleu``, a sentence-level
    BLEU tokenized for the target language) the one closest to the reference."""
    if sentence_bleu is None or len(nbest) == 1:
        return nbest[0]
    return max(nbest, key=lambda h: sentence_bleu.sentence_score(detok(h.pieces), [reference]).score)


def run_chunks(engine: TranslationEngine, out: Path, chunks: list[tuple[int, int]], references: list[str] | None,
               spm_model: Path, sentence_bleu: sacrebleu.BLEU | None, max_chunks: int | None, *,
               fingerprint: str) -> int:
    """Decode the chunks that have no file yet; returns how many were decoded now. ``sentence_bleu``:
    Seq-Inter's metric (:func:`choose`; needs ``references``), None to keep the best-scoring hypothesis.
    A row holds the kept hypothesis's pieces and its score (the engine's, normalised as fairseq's).
    Each chunk is written beside its place, certified by its sidecar (``fingerprint``: the inputs'
    :attr:`DistillOptions.fingerprint`) and renamed in: a killed run leaves whole chunks only."""
    detok = decode_pieces(spm_model)
    todo = [c for c in chunks if not chunk_path(out, *c).is_file()]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    done_sentences = sum(e - s for s, e in chunks) - sum(e - s for s, e in todo)
    progress = tqdm(total=sum(e - s for s, e in chunks), initial=done_sentences, unit="sent", desc="distilling")
    for start, end in todo:
        began, decoded_before = time.perf_counter(), engine.decode_seconds
        ids = list(range(start, end))
        decodable = [i for i in ids if not is_too_long(engine, i)]
        hypotheses = engine.translate(decodable, progress.update)
        progress.update(len(ids) - len(decodable))
        rows = []
        for i in ids:
            if i in hypotheses:
                kept = choose(hypotheses[i], references[i] if references else None, detok, sentence_bleu)
                rows.append({"id": i, "status": "decoded", "pieces": kept.pieces, "score": kept.score})
            else:
                rows.append({"id": i, "status": "too-long"})
        write_chunk(chunk_path(out, start, end), rows, fingerprint,
                    {"seconds": time.perf_counter() - began, "sentences": len(ids),
                     "generate_seconds": engine.decode_seconds - decoded_before})
    progress.close()
    return len(todo)


def write_chunk(path: Path, rows: list[dict], fingerprint: str, timing: dict[str, float]) -> None:
    """Write a chunk's ``rows`` beside ``path``, certify them in its sidecar (with ``timing`` and the
    inputs' ``fingerprint``) and rename them in: a killed run leaves whole chunks only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f"{path.name}.tmp")
    with open(staged, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_json(sidecar_path(path), {**timing, "fingerprint": fingerprint, "chunk": file_record(staged)})
    os.replace(staged, path)


def collect(out: Path, total: int, chunk_size: int, *, fingerprint: str) -> list[dict]:
    """All chunk rows in id order; fail naming missing or duplicated ids, or a chunk decoded under
    another ``fingerprint`` or changed since (:func:`check_chunk`)."""
    rows = []
    for start, end in chunk_ranges(total, chunk_size):
        path = chunk_path(out, start, end)
        if path.is_file():
            check_chunk(path, fingerprint)
            rows += [json.loads(line) for line in read_lines(path)]
    counts = Counter(row["id"] for row in rows)
    missing = [i for i in range(total) if i not in counts]
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    if missing or duplicated:
        raise CorpusError(f"distilled corpus incomplete: {len(missing)} of {total} ids have no output "
                          f"(first: {missing[:20]}), duplicated ids: {duplicated[:20]}")
    return sorted(rows, key=lambda r: r["id"])


@dataclass
class Candidate:
    """One input sentence on its way into the distilled corpus: its source, and the teacher's output
    (``pieces``/``score``; None when it was too long) or the gold target where one exists."""

    source_pieces: str
    raw_source: str
    pieces: str | None
    score: float | None
    reference_pieces: str | None = None
    raw_reference: str | None = None
    unknown_pieces: int = 0  # source pieces the teacher's dictionary maps to <unk>


def parallel_candidates(data: PreparedData, out: Path, options: DistillOptions, unknown: list[tuple[int, int]]
                        ) -> list[Candidate]:
    """The decoded split of the corpus, in id order, with its gold pairs; ``unknown``: each source's
    ``<unk>`` pieces (:attr:`UnknownPieces.counts`)."""
    src, tgt, split = data.src, data.tgt, options.split
    raw_src, raw_ref = read_lines(data.raw(split, src)), read_lines(data.raw(split, tgt))
    spm_src, spm_ref = read_lines(data.pieces(split, src)), read_lines(data.pieces(split, tgt))
    return [Candidate(spm_src[r["id"]], raw_src[r["id"]], r.get("pieces"), r.get("score"), spm_ref[r["id"]],
                      raw_ref[r["id"]], unknown[r["id"]][0])
            for r in collect(out, len(raw_src), options.chunk_size, fingerprint=options.fingerprint)]


def source_text_candidates(text: PreparedData, out: Path, options: DistillOptions,
                           unknown: list[tuple[int, int]]) -> list[Candidate]:
    """The decoded source text (:mod:`data_prep.source_text`), in id order; it has no gold targets."""
    raw_src, spm_src = read_lines(text.raw(SOURCE_SPLIT, text.src)), read_lines(text.pieces(SOURCE_SPLIT, text.src))
    return [Candidate(spm_src[r["id"]], raw_src[r["id"]], r.get("pieces"), r.get("score"),
                      unknown_pieces=unknown[r["id"]][0])
            for r in collect(out, len(raw_src), options.chunk_size, fingerprint=options.fingerprint)]


@dataclass(frozen=True)
class UnknownPieces:
    """The sources of one chunk folder and the teacher's vocabulary: per sentence (pieces it maps to
    ``<unk>``, all pieces), and the share of ``<unk>`` pieces by split or by source-text file."""

    counts: list[tuple[int, int]]
    shares: dict[str, dict[str, Any]]


def unknown_pieces(part: PreparedData, split: str, files: list[SourceTextFile] | None = None) -> UnknownPieces:
    """The ``<unk>`` pieces of ``split``'s sources, shared out by split (key: the split) or, for source
    text, by ``files`` (key: each path); a share above 1 % is a warning, as ``lskd-prepare`` warns."""
    from fairseq_plugins.teacher_vocabulary import unk_counts

    counts = unk_counts(read_lines(part.pieces(split, part.src)), part.dictionary(part.src))
    spans = {f.path: counts[f.first_id:f.first_id + f.kept] for f in files} if files else {split: counts}
    return UnknownPieces(counts, {name: unknown_pieces_record(sum(u for u, _ in span), sum(n for _, n in span),
                                                              f"{name} source", part.dictionary(part.src),
                                                              prog="lskd-distill-corpus")
                                  for name, span in spans.items()})


#: A pair to write: the candidate it comes from, its target pieces, and its raw target when that is
#: the gold reference (None: the teacher's output, detokenized)
Written = tuple[Candidate, str, "str | None"]


def decide(candidates: list[Candidate], too_long: str, filtering: FilterOptions, filtered: str, threshold: float,
           lenpen: float) -> tuple[list[Written], list[str]]:
    """What each candidate becomes, and its outcome: ``decoded`` (the teacher's output is kept), or
    ``REASON_copied_reference`` / ``REASON_dropped`` with REASON ``too_long`` (policy ``too_long``) or
    one of :data:`lskd.distilled_data.REASONS` (policy ``filtered``). Without a reference, copying drops."""
    written: list[Written] = []
    outcomes = []
    for c in candidates:
        if c.pieces is None:
            reason, policy = "too_long", too_long
        else:
            score = None if c.score is None else score_per_token(c.score, len(c.pieces.split()), lenpen)
            source = c.source_pieces.split()
            reason = reason_to_drop(source, c.pieces.split(), score, filtering, threshold,
                                    unknown_share(source, c.unknown_pieces))
            policy = filtered
        if reason is None:
            written.append((c, c.pieces, None))
            outcomes.append("decoded")
        elif policy == "copy-reference" and c.reference_pieces is not None:
            written.append((c, c.reference_pieces, c.raw_reference))
            outcomes.append(f"{reason}_copied_reference")
        else:
            outcomes.append(f"{reason}_dropped")
    return written, outcomes


def score_cutoff(candidates: list[Candidate], lenpen: float, filtering: FilterOptions) -> float:
    """The per-token score below which ``--filter`` leaves a teacher output out (its ``--score-quantile``)."""
    if not filtering.enabled or filtering.score_quantile == 0:
        return -math.inf
    decoded = [c for c in candidates if c.pieces is not None]
    if any(c.score is None for c in decoded):
        raise CorpusError("these chunks were decoded before LSKD recorded the teacher's scores: pass "
                          "--score-quantile 0, or --overwrite to decode again")
    return score_threshold((score_per_token(c.score, len(c.pieces.split()), lenpen) for c in decoded),
                           filtering.score_quantile)


def quality(candidates: list[Candidate], written: list[Written], max_trigram_repeats: int) -> dict:
    """Loop rate and length ratio of the teacher's outputs, of the references, and of the pairs written."""
    def described(pairs) -> dict:
        return describe_targets([(s.split(), t.split()) for s, t in pairs], max_trigram_repeats)

    return {"teacher_outputs": described((c.source_pieces, c.pieces) for c in candidates if c.pieces is not None),
            "references": described((c.source_pieces, c.reference_pieces) for c in candidates
                                    if c.reference_pieces is not None),
            "written": described((c.source_pieces, t) for c, t, _ in written)}


def source_text_accounts(files: list[SourceTextFile], outcomes: list[str], unknown: dict[str, dict[str, Any]]
                         ) -> list[dict[str, Any]]:
    """Each ``--source-text`` file with the outcome of each of its lines, counted, and its share of
    ``<unk>`` pieces (``unknown``, by path: :attr:`UnknownPieces.shares`)."""
    return [asdict(f) | {"outcomes": dict(Counter(outcomes[f.first_id:f.first_id + f.kept])),
                         "outputs": outcomes[f.first_id:f.first_id + f.kept].count("decoded"),
                         "unknown_pieces": unknown[f.path]} for f in files]


@dataclass(frozen=True)
class Merge:
    """What a merge is made of beyond the decoded chunks: how the outputs are cleaned, and whether the
    gold pairs are added."""

    filtering: FilterOptions
    filtered: str
    union: bool

    def fingerprint(self, options: DistillOptions) -> str:
        """sha256 over the inputs and this merge's settings: a ``distill.json`` that records it is current."""
        return hashlib.sha256(json.dumps({"inputs": options.fingerprint, "filter": asdict(self.filtering),
                                          "filtered": self.filtered, "union": self.union},
                                         sort_keys=True).encode()).hexdigest()


#: What a merge writes beside its place and renames in; ``distill.json`` certifies every file of them.
MERGED_DIRECTORIES = ("spm", "raw", "bin")


def finished(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The manifest of a complete merge of ``out`` with this ``fingerprint`` (:meth:`Merge.fingerprint`)
    whose files all match it; None when there is none (not merged, merged from other inputs or settings,
    a file changed since, a damaged manifest)."""
    try:
        manifest = read_json(out / MANIFEST, required=("fingerprint", "files"))
    except RecordError:
        return None
    current = manifest["fingerprint"] == fingerprint and not mismatched_files(out, manifest["files"])
    return manifest if current else None


def merge_once(out: Path, fingerprint: str, merge_now) -> dict[str, Any]:
    """The manifest of ``out``'s merge: a process that finds another merging waits for it, then merges
    (``merge_now()``, which returns the manifest) only if the result is not :func:`finished`."""
    with writer_lock(out, name=MERGE_LOCK, wait=True):
        (out / OLD_MERGE_MARKER).unlink(missing_ok=True)
        return finished(out, fingerprint) or merge_now()


def merge(data: PreparedData, out: Path, options: DistillOptions, settings: Merge, workers: int,
          teacher_infos: list[dict], engine: dict[str, Any], unknown: dict[Path, UnknownPieces],
          text: tuple[PreparedData, list[SourceTextFile]] | None = None) -> dict[str, Any]:
    """Assemble the distilled corpus (the split's pairs in id order, then the source text's), filter it,
    binarize it with the original dictionaries, and write the manifest. Every input is counted once:
    decoded and kept, copied from its reference, or dropped, with the reason. ``unknown``: the ``<unk>``
    pieces of each chunk folder's sources (``out``, ``out/source_text``: :func:`unknown_pieces`).

    The old manifest goes first (no manifest: not finished); ``spm/``, ``raw/``, ``bin/`` are written
    beside their place and renamed in; ``distill.json``, last, certifies them. The caller holds the
    merge lock (:func:`merge_once`)."""
    (out / MANIFEST).unlink(missing_ok=True)
    filtering, filtered, union = settings.filtering, settings.filtered, settings.union
    parallel = [] if options.source_text_only else parallel_candidates(data, out, options, unknown[out].counts)
    texts = (source_text_candidates(text[0], out / "source_text", options, unknown[out / "source_text"].counts)
             if text else [])
    threshold = score_cutoff(parallel + texts, options.lenpen, filtering)
    pairs, outcomes = decide(parallel, options.too_long, filtering, filtered, threshold, options.lenpen)
    text_pairs, text_outcomes = decide(texts, "drop", filtering, "drop", threshold, options.lenpen)
    detok = decode_pieces(data.spm_model)
    bleu = bleu_metric(data.tgt, options.bleu_tokenize)
    distilled_vs_reference = None
    if pairs:
        score = bleu.corpus_score([raw if raw is not None else detok(t) for _, t, raw in pairs],
                                  [[c.raw_reference for c, _, _ in pairs]])
        distilled_vs_reference = {"bleu": round(score.score, 2), "signature": str(bleu.get_signature()),
                                  "text": str(score)}
    written = pairs + text_pairs
    if union:
        written += [(c, c.reference_pieces, c.raw_reference) for c in parallel]
    if not written:
        raise CorpusError(f"no pair is left to train on ({dict(Counter(outcomes + text_outcomes))}): "
                          f"loosen --filter's bounds or pass --filtered copy-reference")
    counts = Counter(outcomes + text_outcomes)
    files = text[1] if text else []
    if any(f.empty for f in files):
        counts["empty_source_dropped"] = sum(f.empty for f in files)
    inputs = len(parallel) + sum(f.lines for f in files)
    if sum(counts.values()) != inputs:  # every input has exactly one outcome
        raise CorpusError(f"distillation lost track of inputs: {inputs} in, outcomes {dict(counts)}")
    staged = {name: out / f".{name}.tmp" for name in MERGED_DIRECTORIES}  # a killed merge's are replaced
    for directory in staged.values():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
    write_lines(staged["spm"] / f"train.{data.src}", (c.source_pieces for c, _, _ in written))
    write_lines(staged["spm"] / f"train.{data.tgt}", (t for _, t, _ in written))
    write_lines(staged["raw"] / f"train.{data.src}", (c.raw_source for c, _, _ in written))
    write_lines(staged["raw"] / f"train.{data.tgt}", (raw if raw is not None else detok(t) for _, t, raw in written))
    _binarize_with_original_dictionaries(data, staged["spm"] / "train", staged["bin"], workers)
    for name, directory in staged.items():
        shutil.rmtree(out / name, ignore_errors=True)
        os.replace(directory, out / name)
    manifest = {
        "fingerprint": settings.fingerprint(options),
        "source": {**data.provenance(), "split": None if options.source_text_only else options.split},
        "teachers": teacher_infos,
        "engine": engine,
        "options": asdict(options) | {"union": union},
        "filter": asdict(filtering) | {"filtered": filtered,
                                       "score_threshold": None if math.isinf(threshold) else round(threshold, 4)},
        "counts": {"inputs": inputs, "outputs": len(written), **counts},
        "unknown_source_pieces": None if options.source_text_only else unknown[out].shares[options.split],
        "source_text": source_text_accounts(files, text_outcomes,
                                            unknown[out / "source_text"].shares if text else {}),
        "quality": quality(parallel + texts, pairs + text_pairs, filtering.max_trigram_repeats),
        **_timing(out),
        "distilled_vs_reference": distilled_vs_reference,
        **provenance(),
        "files": certify(out, [f"{name}/{path.name}" for name in MERGED_DIRECTORIES
                               for path in sorted((out / name).iterdir())]),
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def _timing(out: Path) -> dict[str, float]:
    """Decoding time summed over chunks: in all, and inside beam search alone."""
    records = [read_json(p) for folder in CHUNK_DIRECTORIES for p in (out / folder).glob("*.time.json")]
    return {"decode_seconds": round(sum(r["seconds"] for r in records), 2),
            "generate_seconds": round(sum(r["generate_seconds"] for r in records), 2)}


def _binarize_with_original_dictionaries(data: PreparedData, trainpref: Path, bin_dir: Path, workers: int) -> None:
    """fairseq-preprocess ``trainpref`` (``.SRC``/``.TGT`` pieces) and the data's valid and test splits into
    ``bin_dir`` with the data's dictionaries; checks that they stay unchanged and every pair is there."""
    src, tgt = data.src, data.tgt
    run_preprocess(["--source-lang", src, "--target-lang", tgt, "--trainpref", str(trainpref),
                    "--validpref", str(data.root / "spm" / "valid"), "--testpref", str(data.root / "spm" / "test"),
                    "--destdir", str(bin_dir), "--srcdict", str(data.dictionary(src)),
                    "--tgtdict", str(data.dictionary(tgt)), "--workers", str(workers)], bin_dir)
    for lang in (src, tgt):
        if sha256_file(bin_dir / f"dict.{lang}.txt") != sha256_file(data.dictionary(lang)):
            raise CorpusError(f"dict.{lang}.txt of the distilled data differs from the original dictionary")
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    expected = len(read_lines(f"{trainpref}.{src}"))
    for lang in (src, tgt):
        found = len(MMapIndexedDataset(str(bin_dir / f"train.{src}-{tgt}.{lang}")))
        if found != expected:
            raise CorpusError(f"binarized distilled train.{lang} holds {found} sentences, expected {expected}")


CHUNK_DIRECTORIES = ("chunks", "source_text/chunks")


def _decoded_chunks(out: Path) -> list[Path]:
    """The chunks already decoded in ``out`` (of the split and of any source text)."""
    return [p for folder in CHUNK_DIRECTORIES for p in sorted((out / folder).glob("*.jsonl"))]


def _stale_chunk(out: Path, fingerprint: str) -> str | None:
    """The first decoded chunk whose sidecar does not record ``fingerprint``, described; None if none."""
    for chunk in _decoded_chunks(out):
        try:
            recorded = read_json(sidecar_path(chunk)).get("fingerprint")
        except RecordError:
            recorded = None
        if recorded != fingerprint:
            return f"{chunk} (decoded under fingerprint {str(recorded)[:12]}, this run's {fingerprint[:12]})"
    return None


def _check_options(out: Path, options: DistillOptions, overwrite: bool) -> None:
    """A resumed run must decode the same inputs as the run it continues: otherwise refuse naming what
    changed, or with ``overwrite`` start afresh. A run that stopped before decoding anything (a refused
    split or export, say) left nothing to keep: it is replaced. The caller holds the claim lock."""
    path = out / "options.json"
    wanted = json.loads(json.dumps(asdict(options)))
    if path.is_file():  # an option added since it was written has its default
        existing = json.loads(json.dumps(asdict(DistillOptions()))) | read_json(path, advice=ADVICE)
        stale = _stale_chunk(out, options.fingerprint)
        if existing == wanted and stale is None:
            return
        if _decoded_chunks(out) and not overwrite:
            changed = changed_inputs(existing, wanted, _option_labels()) or [f"a chunk, {stale}"]
            raise CorpusError(f"{out} holds a distillation with other options or inputs ({path}): "
                              f"{', '.join(changed)}; use another --out or {ADVICE}")
        _start_afresh(out)
    elif _decoded_chunks(out):
        if not overwrite:
            raise CorpusError(f"{out} holds decoded chunks but no {path.name}: use another --out or {ADVICE}")
        _start_afresh(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, wanted)


def _start_afresh(out: Path) -> None:
    """Remove everything in ``out`` but its lock files, once no other process writes it."""
    with writer_lock(out):  # --overwrite needs the directory to itself
        for entry in out.iterdir():
            if entry.name.startswith(LOCK_PREFIX):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _shard_lock(num_shards: int, shard_id: int) -> str:
    return f"{LOCK_PREFIX}shard-{shard_id}-of-{num_shards}.lock"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-distill-corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="directory made by lskd-prepare")
    parser.add_argument("--teacher-path", required=True,
                        help="teacher: a fairseq checkpoint (or several separated by ':', an ensemble), a Hugging "
                             "Face model directory (save_pretrained's, or a hub download) or a CTranslate2 model "
                             "directory (model.bin with its tokenizer files)")
    parser.add_argument("--teacher-src-lang", metavar="CODE",
                        help="a multilingual Hugging Face / CTranslate2 teacher's source language, in its own codes "
                             "(M2M-100: de, NLLB: deu_Latn)")
    parser.add_argument("--teacher-tgt-lang", metavar="CODE", help="its target language (forced first token)")
    parser.add_argument("--out", required=True, type=output_directory, help="output directory (bin/ is ready for fairseq-train)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--lenpen", type=finite_float, default=1.0)
    parser.add_argument("--max-len-a", type=finite_float, default=1.2)
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per decoding batch")
    add_engine_arguments(parser)
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses kept from the beam (<= beam)")
    parser.add_argument("--seq-inter", action="store_true",
                        help="keep, of the n-best, the hypothesis with the highest sentence BLEU against the reference")
    parser.add_argument("--tokenize", choices=TOKENIZERS,
                        help="BLEU tokenizer of --seq-inter and of the distilled-vs-reference BLEU (default: "
                             "sacrebleu's choice for the target language: zh, ja-mecab, ko-mecab or 13a)")
    parser.add_argument("--union", action="store_true", help="also keep the original pairs")
    parser.add_argument("--too-long", choices=POLICIES, default="copy-reference",
                        help="sentences longer than the teacher accepts: copy the reference, or drop (counted either way)")
    parser.add_argument("--max-source-tokens", type=count_at_least(2),
                        help="treat longer sources (in tokens, with end of sentence) as too long (default: what the teacher accepts)")
    parser.add_argument("--source-text", type=Path, action="append", default=[], metavar="FILE",
                        help="monolingual source sentences, one per line, to translate too (repeatable): prepared "
                             "as the corpus was; empty lines counted and left out; --seq-inter does not apply")
    parser.add_argument("--source-text-only", action="store_true",
                        help="distil only the --source-text files, not the corpus's --split")
    filtering = parser.add_argument_group("cleaning the teacher's outputs (lskd.distilled_data; always measured, "
                                          "applied with --filter; an empty output is always left out)")
    filtering.add_argument("--filter", action="store_true",
                           help="leave out outputs that loop, have an odd length ratio, or score lowest, and "
                                "those of sources mostly made of pieces the teacher's vocabulary lacks")
    defaults = FilterOptions()
    filtering.add_argument("--max-trigram-repeats", type=int, default=defaults.max_trigram_repeats,
                           help=f"an output loops when a trigram of pieces occurs more often (default "
                                f"{defaults.max_trigram_repeats})")
    filtering.add_argument("--min-length-ratio", type=finite_float, default=defaults.min_length_ratio,
                           help=f"target/source length in pieces (default {defaults.min_length_ratio})")
    filtering.add_argument("--max-length-ratio", type=finite_float, default=defaults.max_length_ratio,
                           help=f"(default {defaults.max_length_ratio})")
    filtering.add_argument("--score-quantile", type=finite_float, default=defaults.score_quantile,
                           help=f"leave out this lowest share of teacher log-probability per token (default "
                                f"{defaults.score_quantile}; 0: none)")
    filtering.add_argument("--max-unknown-share", type=finite_float, default=defaults.max_unknown_share,
                           help=f"leave out a source whose pieces map to <unk> in the teacher's dictionary more "
                                f"often than this share, bare word-boundary pieces not counted (default "
                                f"{defaults.max_unknown_share})")
    filtering.add_argument("--filtered", choices=POLICIES, default="drop",
                           help="what a left-out output becomes: drop (default) or copy-reference (the gold pair, "
                                "where the corpus has one)")
    parser.add_argument("--chunk-size", type=count_at_least(1), default=1000, help="sentences per resumable chunk")
    parser.add_argument("--num-shards", type=count_at_least(1), default=1)
    parser.add_argument("--shard-id", type=int, default=0)
    parser.add_argument("--max-chunks", type=count_at_least(1), help="stop after decoding this many chunks (resume later)")
    parser.add_argument("--workers", type=count_at_least(1), default=2, help="fairseq-preprocess workers")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh where --out holds a distillation of other inputs or options (one of the "
                             "same inputs is resumed: its result would be the same)")
    return parser


def unused_filter_flags(args: argparse.Namespace) -> list[str]:
    """The flags given away from their defaults that act only with ``--filter`` (``--max-trigram-repeats``
    is not among them: it also defines the loop rate measured without filtering)."""
    if args.filter:
        return []
    defaults = FilterOptions()
    given = {"--min-length-ratio": args.min_length_ratio != defaults.min_length_ratio,
             "--max-length-ratio": args.max_length_ratio != defaults.max_length_ratio,
             "--score-quantile": args.score_quantile != defaults.score_quantile,
             "--max-unknown-share": args.max_unknown_share != defaults.max_unknown_share,
             f"--filtered {args.filtered}": args.filtered != "drop"}
    return [flag for flag, differs in given.items() if differs]


@console_script("lskd-distill-corpus")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = load_prepared(args.data)  # bad input is reported before fairseq is imported (seconds)
    if not 1 <= args.nbest <= args.beam:
        raise CorpusError(f"--nbest {args.nbest} must be between 1 and --beam {args.beam}")
    if args.seq_inter and args.nbest < 2:
        raise CorpusError("--seq-inter chooses among the n-best: give --nbest 2 or more")
    if args.nbest > 1 and not args.seq_inter:
        raise CorpusError(f"--nbest {args.nbest} without --seq-inter: only the best hypothesis would be kept; "
                          f"add --seq-inter to choose among the n-best, or leave out --nbest")
    unused = unused_filter_flags(args)
    if unused:
        raise CorpusError(f"{', '.join(unused)} set how --filter leaves outputs out, but --filter is not given "
                          f"(without it every output is kept and only measured)")
    if args.source_text_only and not args.source_text:
        raise CorpusError("--source-text-only needs at least one --source-text FILE")
    shard_chunks([], args.num_shards, args.shard_id)  # a bad --shard-id is refused before --out is touched
    spec, settings, languages = _teacher_and_engine(args)
    check_writable(args.out, create=False)  # a read-only or full --out: one line, before the teacher is read
    teachers, teacher_sha = _teacher_records(args.teacher_path, spec)  # a refused checkpoint leaves no --out
    bleu_metric(data.tgt, args.tokenize)  # a tokenizer that cannot run here fails now, not after decoding
    options = DistillOptions(split=args.split, beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a,
                             max_len_b=args.max_len_b, nbest=args.nbest, seq_inter=args.seq_inter,
                             too_long=args.too_long, chunk_size=args.chunk_size,
                             max_source_tokens=args.max_source_tokens, teacher_sha256=teacher_sha,
                             bleu_tokenize=bleu_tokenizer(data.tgt, args.tokenize),
                             engine=settings.engine, quantization=_quantization(settings, spec),
                             teacher_src_lang=languages.src, teacher_tgt_lang=languages.tgt,
                             source_text_sha256=tuple(check_source_text(p) for p in args.source_text),
                             source_text_only=args.source_text_only, data_fingerprint=data.fingerprint)
    filtering = FilterOptions(enabled=args.filter, max_trigram_repeats=args.max_trigram_repeats,
                              min_length_ratio=args.min_length_ratio, max_length_ratio=args.max_length_ratio,
                              score_quantile=args.score_quantile, max_unknown_share=args.max_unknown_share)
    options.decoding(args.batch_size)  # beam, batch and length limit refused now, before --out is written
    with contextlib.ExitStack() as held:  # the locks die with this process, kill -9 included
        held.enter_context(writer_lock(args.out, name=_shard_lock(args.num_shards, args.shard_id)))
        with writer_lock(args.out, name=CLAIM_LOCK, wait=True):
            _check_options(args.out, options, args.overwrite)
            text = (prepare_source_text(data, args.source_text, args.out / "source_text", args.workers,
                                        overwrite=args.overwrite) if args.source_text else None)
            held.enter_context(writer_lock(args.out, shared=True))  # shards of this job side by side
        return _distil(args, data, options, Merge(filtering, args.filtered, args.union), settings, teachers, text,
                       spec)


def _teacher_and_engine(args: argparse.Namespace) -> tuple[TeacherSpec, EngineSettings, Languages]:
    """The teacher of ``--teacher-path``, the engine that decodes it (default: :func:`lskd.hf_teacher.default_engine`)
    and its language codes; what cannot go together is refused here, before ``--out`` is touched."""
    from fairseq_plugins.teacher import TeacherError, split_teacher_paths

    if args.gpu and args.engine:
        check_cuda(args.engine)  # before the teacher is looked for
    paths = split_teacher_paths(args.teacher_path, fairseq_only=False)
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise TeacherError(f"teacher checkpoint not found: {', '.join(missing)}")
    spec = _teacher_spec(paths)
    settings = engine_settings(args, default_engine(spec))
    check_engine(spec, settings)
    languages = Languages(args.teacher_src_lang, args.teacher_tgt_lang)
    if spec.kind != "fairseq":
        open_tokenizer(spec, languages)  # language codes missing or unknown: refused now
        return spec, settings, languages
    if languages != Languages():
        raise TeacherError("--teacher-src-lang and --teacher-tgt-lang are a multilingual Hugging Face or "
                           f"CTranslate2 teacher's; {args.teacher_path} is a fairseq checkpoint")
    if settings.engine == "ctranslate2":
        refuse_ensemble(args.teacher_path)
    return spec, settings, languages


def _teacher_records(teacher_path: str, spec: TeacherSpec) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """What the manifest says of each teacher, and the sha256 its options record: a fairseq checkpoint's
    (read safely: a refused one stops here), or a directory's :func:`lskd.hf_teacher.teacher_identity`."""
    from fairseq_plugins.teacher import describe_teachers

    if spec.kind != "fairseq":
        return [spec.describe()], (teacher_identity(spec),)
    teachers = [vars(t) for t in describe_teachers(teacher_path)]
    return teachers, tuple(t["sha256"] for t in teachers)


def _teacher_spec(paths: list[str]) -> TeacherSpec:
    """The teacher of ``--teacher-path``'s ``paths`` (:func:`lskd.teacher_spec.read_teacher_spec`); an
    ensemble is of fairseq checkpoints only (the first stands for it: only its kind is used)."""
    specs = [read_teacher_spec(path) for path in paths]
    others = [s for s in specs if s.kind != "fairseq"]
    if len(specs) > 1 and others:
        raise TeacherSpecError(f"an ensemble (--teacher-path a:b) is of fairseq checkpoints; {others[0].path} is a "
                               f"{others[0].kind} model directory: distil it alone")
    return specs[0]


def _distil(args: argparse.Namespace, data: PreparedData, options: DistillOptions, settings: Merge,
            decoder: EngineSettings, teachers: list[dict[str, Any]],
            text: tuple[PreparedData, list[SourceTextFile]] | None, spec: TeacherSpec) -> int:
    """Decode this shard's chunks, and merge when every chunk is there; the caller holds the locks.
    ``teachers``: what the manifest records of them."""
    parts = ([] if args.source_text_only else [(data, args.split, args.out)]) + \
        ([(text[0], SOURCE_SPLIT, args.out / "source_text")] if text else [])
    # counted (and warned about) before hours of decoding
    unknown = {out: unknown_pieces(part, split, None if part is data else text[1]) for part, split, out in parts}
    chunks_left = args.max_chunks
    normalise = None if spec.kind == "fairseq" else student_normaliser(data)
    for part, split, out in parts:
        mine = shard_chunks(chunk_ranges(part.sentences(split), args.chunk_size), args.num_shards, args.shard_id)
        if chunks_left != 0 and any(not chunk_path(out, *c).is_file() for c in mine):
            engine = _open_engine(decoder, part, split, args, options, spec, normalise)
            write_json(args.out / "engine.json", engine.describe())
            references = read_lines(part.raw(split, part.tgt)) if part is data else None  # source text has none
            sentence_bleu = (bleu_metric(tokenize=options.bleu_tokenize, sentence=True)
                             if options.seq_inter and references else None)
            decoded = run_chunks(engine, out, mine, references, part.spm_model, sentence_bleu, chunks_left,
                                 fingerprint=options.fingerprint)
            chunks_left = None if chunks_left is None else chunks_left - decoded
    all_chunks = [(out, c) for part, split, out in parts for c in chunk_ranges(part.sentences(split), args.chunk_size)]
    left = [c for out, c in all_chunks if not chunk_path(out, *c).is_file()]
    if left:
        print(f"[lskd-distill-corpus] {len(all_chunks) - len(left)} of {len(all_chunks)} chunks done; run again (or "
              f"the other shards) to finish; the last to finish merges", flush=True)
        return 0

    def merge_now() -> dict[str, Any]:
        engine_json = args.out / "engine.json"
        engine_record = (read_json(engine_json) if engine_json.is_file()
                         else {"engine": options.engine, "quantization": options.quantization})
        return merge(data, args.out, options, settings, args.workers, teachers, engine_record, unknown, text)

    print_summary(merge_once(args.out, settings.fingerprint(options), merge_now), args.out)
    return 0


def print_summary(manifest: dict[str, Any], out: Path) -> None:
    """Two lines: what became of the inputs (every outcome counted), and the teacher's loop rate and BLEU."""
    counts = dict(manifest["counts"])
    inputs, outputs, decoded = counts.pop("inputs"), counts.pop("outputs"), counts.pop("decoded", 0)
    others = "".join(f", {n} {outcome.replace('_', ' ')}" for outcome, n in sorted(counts.items()))
    teacher = manifest["quality"]["teacher_outputs"]
    bleu = manifest["distilled_vs_reference"]
    print(f"[lskd-distill-corpus] {inputs} sentences in, {outputs} pairs out ({decoded} decoded and kept{others})",
          flush=True)
    print(f"[lskd-distill-corpus] teacher outputs: loop rate {teacher['loop_rate']}, length ratio "
          f"{(teacher['length_ratio'] or {}).get('mean')}"
          + (f"; distilled vs reference BLEU {bleu['bleu']}" if bleu else "") + f"; data in {out / 'bin'}", flush=True)


def _quantization(settings: EngineSettings, spec: TeacherSpec) -> str | None:
    """The weight type the distillation decodes with, recorded with its options (None: torch's float32;
    ``as-stored``: a CTranslate2 teacher's own, which its sha256 fixes)."""
    if settings.engine in TORCH_ENGINES:
        return None
    if settings.quantization:
        return settings.quantization
    if settings.ctranslate2_model:
        from lskd.ctranslate2_engine import load_export

        return load_export(settings.ctranslate2_model).quantization
    return "as-stored" if spec.kind == "ctranslate2" else "float32"


def student_normaliser(data: PreparedData) -> Callable[[str], str]:
    """How a Hugging Face teacher's detokenised output is made the prepared target text: NFC and single
    spaces (:func:`lskd.hf_teacher.normalise_text`), then the corpus's own punctuation normalisation
    (``prep.json``'s ``normalize_punctuation``, for the target language)."""
    punctuation = punctuation_normaliser(data.tgt, bool(data.record["options"].get("normalize_punctuation", True)))
    return lambda text: punctuation(normalise_text(text))


def _open_engine(settings: EngineSettings, data: PreparedData, split: str, args: argparse.Namespace,
                 options: DistillOptions, spec: TeacherSpec | None = None,
                 normalise: Callable[[str], str] | None = None) -> TranslationEngine:
    """The engine on ``split`` of ``data``: fairseq's or CTranslate2's on a fairseq teacher (``spec`` None
    or of kind fairseq), or :class:`lskd.hf_teacher.TeacherEngine` on another, its outputs ``normalise``-d."""
    set_decoder_threads(settings)
    if spec is not None and spec.kind != "fairseq":
        return teacher_engine_on_split(
            spec, data, split, options.decoding(args.batch_size), backend=settings.engine,
            languages=Languages(options.teacher_src_lang, options.teacher_tgt_lang),
            quantization=settings.quantization, device=settings.device, threads=settings.resolved_threads,
            max_source_tokens=options.max_source_tokens, normalise=normalise or normalise_text)
    from fairseq_plugins.decoding import open_engine

    return open_engine(settings, data, split, args.teacher_path, options.decoding(args.batch_size),
                       options.max_source_tokens)


if __name__ == "__main__":
    sys.exit(main())
