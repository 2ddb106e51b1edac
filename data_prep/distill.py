"""``lskd-distill-corpus``: sequence-level KD data (Kim & Rush 2016) from a teacher or an ensemble.

The teacher beam-decodes every source sentence of a split of a ``lskd-prepare`` directory, with
fairseq (``--engine fairseq``, the default; ensembles) or CTranslate2 (``--engine ctranslate2``,
several times faster on CPU; :mod:`lskd.decoding`); the outputs are written as a parallel corpus
and binarized with the *original* dictionaries, ready for ``fairseq-train``. Nothing is lost
silently:

* sentences are asked for by id, so no tail batch can be dropped; outputs are mapped back by id
  and the merge fails naming any id without exactly one output;
* a source longer than the teacher accepts is handled by an explicit policy (``copy-reference``
  or ``drop``), counted in the manifest;
* work is split into chunks of sentence ids, each written atomically: a killed run resumes from
  its last finished chunk, and ``--num-shards/--shard-id`` let several processes or machines
  decode disjoint parts of the same chunk list; the run whose shard completes the set merges.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sacrebleu
from tqdm import tqdm

from lskd.corpus import CorpusError, read_lines, write_lines
from lskd.decoding import (DecodingOptions, EngineSettings, Hypothesis, TranslationEngine, add_engine_arguments,
                           engine_settings, is_too_long, refuse_ensemble)
from lskd.errors import console_script
from lskd.prepared import PreparedData, load_prepared
from lskd.provenance import provenance, sha256_file, write_json
from lskd.scoring import DEFAULT_TOKENIZER, TOKENIZERS, bleu_metric, bleu_tokenizer

POLICIES = ("copy-reference", "drop")


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
    quantization: str | None = None  # CTranslate2's weight type; None for fairseq (float32)

    def decoding(self, batch_size: int) -> DecodingOptions:
        return DecodingOptions(beam=self.beam, lenpen=self.lenpen, max_len_a=self.max_len_a,
                               max_len_b=self.max_len_b, nbest=self.nbest, batch_size=batch_size)


def chunk_ranges(total: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]


def shard_chunks(chunks: list[tuple[int, int]], num_shards: int, shard_id: int) -> list[tuple[int, int]]:
    """Chunks of this shard: every ``num_shards``-th, so shards get equal shares of the corpus."""
    if not 0 <= shard_id < num_shards:
        raise CorpusError(f"--shard-id {shard_id} must be in [0, {num_shards})")
    return chunks[shard_id::num_shards]


def chunk_path(out: Path, start: int, end: int) -> Path:
    return out / "chunks" / f"{start:09d}-{end:09d}.jsonl"


def decode_pieces(spm_model: Path):
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    return lambda pieces: processor.decode_pieces(pieces.split())


def choose(nbest: list[Hypothesis], reference: str, detok, sentence_bleu: sacrebleu.BLEU | None) -> str:
    """The kept hypothesis: the best-scoring one, or with Seq-Inter (``sentence_bleu``, a sentence-level
    BLEU tokenized for the target language) the one closest to the reference."""
    if sentence_bleu is None or len(nbest) == 1:
        return nbest[0].pieces
    return max(nbest, key=lambda h: sentence_bleu.sentence_score(detok(h.pieces), [reference]).score).pieces


def run_chunks(engine: TranslationEngine, out: Path, chunks: list[tuple[int, int]], references: list[str],
               spm_model: Path, sentence_bleu: sacrebleu.BLEU | None, max_chunks: int | None) -> int:
    """Decode the chunks that have no file yet; returns how many were decoded now. ``sentence_bleu``:
    Seq-Inter's metric (:func:`choose`), None to keep the best-scoring hypothesis."""
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
                rows.append({"id": i, "status": "decoded",
                             "pieces": choose(hypotheses[i], references[i], detok, sentence_bleu)})
            else:
                rows.append({"id": i, "status": "too-long"})
        path = chunk_path(out, start, end)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path.with_suffix(".time.json"), {"seconds": time.perf_counter() - began, "sentences": len(ids),
                                                    "generate_seconds": engine.decode_seconds - decoded_before})
        with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(f"{path}.tmp", path)
    progress.close()
    return len(todo)


def collect(out: Path, total: int, chunk_size: int) -> list[dict]:
    """All chunk rows in id order; fail naming missing or duplicated ids."""
    rows = []
    for start, end in chunk_ranges(total, chunk_size):
        path = chunk_path(out, start, end)
        if path.is_file():
            rows += [json.loads(line) for line in read_lines(path)]
    counts = Counter(row["id"] for row in rows)
    missing = [i for i in range(total) if i not in counts]
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    if missing or duplicated:
        raise CorpusError(f"distilled corpus incomplete: {len(missing)} of {total} ids have no output "
                          f"(first: {missing[:20]}), duplicated ids: {duplicated[:20]}")
    return sorted(rows, key=lambda r: r["id"])


def merge(data: PreparedData, out: Path, options: DistillOptions, union: bool, workers: int,
          teacher_infos: list[dict], engine: dict[str, Any]) -> dict[str, Any]:
    """Assemble the distilled split in id order, binarize it with the original dictionaries, write the manifest."""
    src, tgt, split = data.src, data.tgt, options.split
    raw_src, raw_ref = read_lines(data.raw(split, src)), read_lines(data.raw(split, tgt))
    spm_src, spm_ref = read_lines(data.pieces(split, src)), read_lines(data.pieces(split, tgt))
    rows = collect(out, len(raw_src), options.chunk_size)
    detok = decode_pieces(data.spm_model)
    pairs, counts = [], Counter()
    for row in rows:
        i = row["id"]
        if row["status"] == "decoded":
            pairs.append((spm_src[i], row["pieces"], raw_src[i], detok(row["pieces"]), raw_ref[i]))
            counts["decoded"] += 1
        elif options.too_long == "copy-reference":
            pairs.append((spm_src[i], spm_ref[i], raw_src[i], raw_ref[i], raw_ref[i]))
            counts["too_long_copied_reference"] += 1
        else:
            counts["too_long_dropped"] += 1
    bleu = bleu_metric(data.tgt, options.bleu_tokenize)
    distilled_bleu = bleu.corpus_score([p[3] for p in pairs], [[p[4] for p in pairs]])
    if union:
        pairs += [(spm_src[i], spm_ref[i], raw_src[i], raw_ref[i], raw_ref[i]) for i in range(len(raw_src))]
    for directory in ("spm", "raw"):
        (out / directory).mkdir(parents=True, exist_ok=True)
    write_lines(out / "spm" / f"train.{src}", (p[0] for p in pairs))
    write_lines(out / "spm" / f"train.{tgt}", (p[1] for p in pairs))
    write_lines(out / "raw" / f"train.{src}", (p[2] for p in pairs))
    write_lines(out / "raw" / f"train.{tgt}", (p[3] for p in pairs))
    _binarize_with_original_dictionaries(data, out, workers)
    manifest = {
        "source": {**data.provenance(), "split": split},
        "teachers": teacher_infos,
        "engine": engine,
        "options": asdict(options) | {"union": union},
        "counts": {"inputs": len(raw_src), "outputs": len(pairs), **counts},
        **_timing(out),
        "distilled_vs_reference": {"bleu": round(distilled_bleu.score, 2), "signature": str(bleu.get_signature()),
                                   "text": str(distilled_bleu)},
        **provenance(),
    }
    write_json(out / "distill.json", manifest)
    return manifest


def _timing(out: Path) -> dict[str, float]:
    """Decoding time summed over chunks: in all, and inside beam search alone."""
    records = [json.loads(p.read_text()) for p in (out / "chunks").glob("*.time.json")]
    return {"decode_seconds": round(sum(r["seconds"] for r in records), 2),
            "generate_seconds": round(sum(r["generate_seconds"] for r in records), 2)}


def _binarize_with_original_dictionaries(data: PreparedData, out: Path, workers: int) -> None:
    src, tgt = data.src, data.tgt
    bin_dir = out / "bin"
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    command = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", src, "--target-lang", tgt,
               "--trainpref", str(out / "spm" / "train"), "--validpref", str(data.root / "spm" / "valid"),
               "--testpref", str(data.root / "spm" / "test"), "--destdir", str(bin_dir),
               "--srcdict", str(data.dictionary(src)), "--tgtdict", str(data.dictionary(tgt)),
               "--workers", str(workers)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("fairseq-preprocess failed:\n" + result.stderr[-3000:])
    for lang in (src, tgt):
        if sha256_file(bin_dir / f"dict.{lang}.txt") != sha256_file(data.dictionary(lang)):
            raise RuntimeError(f"dict.{lang}.txt of the distilled data differs from the original dictionary")
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    expected = len(read_lines(out / "spm" / f"train.{src}"))
    for lang in (src, tgt):
        found = len(MMapIndexedDataset(str(bin_dir / f"train.{src}-{tgt}.{lang}")))
        if found != expected:
            raise RuntimeError(f"binarized distilled train.{lang} holds {found} sentences, expected {expected}")


def _check_options(out: Path, options: DistillOptions, overwrite: bool) -> None:
    """A resumed run must decode like the run it continues; otherwise refuse (or start over)."""
    path = out / "options.json"
    wanted = asdict(options)
    if path.is_file():  # an option added since it was written has its default
        existing = json.loads(json.dumps(asdict(DistillOptions()))) | json.loads(path.read_text(encoding="utf-8"))
        if existing == json.loads(json.dumps(wanted)):
            return
        if not overwrite:
            raise CorpusError(f"{out} holds a distillation with other options or teacher ({path}); "
                              f"use another --out or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, wanted)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-distill-corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="directory made by lskd-prepare")
    parser.add_argument("--teacher-path", required=True, help="teacher checkpoint, or several separated by ':'")
    parser.add_argument("--out", required=True, type=Path, help="output directory (bin/ is ready for fairseq-train)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--max-len-a", type=float, default=1.2)
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
    parser.add_argument("--max-source-tokens", type=int,
                        help="treat longer sources (in tokens, with end of sentence) as too long (default: what the teacher accepts)")
    parser.add_argument("--chunk-size", type=int, default=1000, help="sentences per resumable chunk")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--shard-id", type=int, default=0)
    parser.add_argument("--max-chunks", type=int, help="stop after decoding this many chunks (resume later)")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    parser.add_argument("--overwrite", action="store_true", help="discard a distillation made with other options")
    return parser


@console_script("lskd-distill-corpus")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = load_prepared(args.data)  # bad input is reported before fairseq is imported (seconds)
    from fairseq_plugins.teacher import TeacherError, describe_teachers, split_teacher_paths

    if not 1 <= args.nbest <= args.beam:
        raise CorpusError(f"--nbest {args.nbest} must be between 1 and --beam {args.beam}")
    if args.seq_inter and args.nbest < 2:
        raise CorpusError("--seq-inter chooses among the n-best: give --nbest 2 or more")
    settings = engine_settings(args)
    if settings.engine == "ctranslate2":
        refuse_ensemble(args.teacher_path)
    missing = [p for p in split_teacher_paths(args.teacher_path) if not os.path.isfile(p)]
    if missing:  # before anything is written to --out
        raise TeacherError(f"teacher checkpoint not found: {', '.join(missing)}")
    teachers = describe_teachers(args.teacher_path)  # read safely: a refused checkpoint stops here
    teacher_sha = tuple(t.sha256 for t in teachers)
    bleu_metric(data.tgt, args.tokenize)  # a tokenizer that cannot run here fails now, not after decoding
    options = DistillOptions(split=args.split, beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a,
                             max_len_b=args.max_len_b, nbest=args.nbest, seq_inter=args.seq_inter,
                             too_long=args.too_long, chunk_size=args.chunk_size,
                             max_source_tokens=args.max_source_tokens, teacher_sha256=teacher_sha,
                             bleu_tokenize=bleu_tokenizer(data.tgt, args.tokenize),
                             engine=settings.engine, quantization=_quantization(settings))
    _check_options(args.out, options, args.overwrite)
    total = data.sentences(args.split)
    chunks = chunk_ranges(total, args.chunk_size)
    mine = shard_chunks(chunks, args.num_shards, args.shard_id)
    if any(not chunk_path(args.out, *c).is_file() for c in mine):
        engine = _open_engine(settings, data, args, options)
        write_json(args.out / "engine.json", engine.describe())
        references = read_lines(data.raw(args.split, data.tgt))
        sentence_bleu = bleu_metric(tokenize=options.bleu_tokenize, sentence=True) if options.seq_inter else None
        run_chunks(engine, args.out, mine, references, data.spm_model, sentence_bleu, args.max_chunks)
    left = [c for c in chunks if not chunk_path(args.out, *c).is_file()]
    if left:
        print(f"[lskd-distill-corpus] {len(chunks) - len(left)} of {len(chunks)} chunks done; run again (or the other "
              f"shards) to finish; the last to finish merges", flush=True)
        return 0
    lock = args.out / "merge.lock"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        print(f"[lskd-distill-corpus] {lock} exists: another process is merging (delete it if none is)", flush=True)
        return 0
    try:
        infos = [asdict(i) for i in teachers]
        engine_json = args.out / "engine.json"
        engine_record = (json.loads(engine_json.read_text(encoding="utf-8")) if engine_json.is_file()
                         else {"engine": options.engine, "quantization": options.quantization})
        manifest = merge(data, args.out, options, args.union, args.workers, infos, engine_record)
    finally:
        lock.unlink(missing_ok=True)
    c = manifest["counts"]
    print(f"[lskd-distill-corpus] {c['inputs']} sentences in, {c['outputs']} pairs out "
          f"({c.get('decoded', 0)} decoded, {c.get('too_long_copied_reference', 0)} too long copied, "
          f"{c.get('too_long_dropped', 0)} dropped); distilled vs reference "
          f"BLEU {manifest['distilled_vs_reference']['bleu']}; data in {args.out / 'bin'}", flush=True)
    return 0


def _quantization(settings: EngineSettings) -> str | None:
    """The weight type the distillation decodes with, recorded with its options (None: fairseq's float32)."""
    if settings.engine == "fairseq":
        return None
    if settings.quantization:
        return settings.quantization
    if settings.ctranslate2_model:
        from lskd.ctranslate2_engine import load_export

        return load_export(settings.ctranslate2_model).quantization
    return "float32"


def _open_engine(settings: EngineSettings, data: PreparedData, args: argparse.Namespace,
                 options: DistillOptions) -> TranslationEngine:
    from fairseq_plugins.decoding import open_engine

    if settings.engine == "fairseq" and settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    return open_engine(settings, data, args.split, args.teacher_path, options.decoding(args.batch_size),
                       options.max_source_tokens)


if __name__ == "__main__":
    sys.exit(main())
