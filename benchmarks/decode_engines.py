"""Decoding engines side by side: fairseq-generate, CTranslate2 float32 and int8, same teacher, split and beam.

At each thread count (default 1 and 2) every variant translates the whole split (default: the
quickstart's LS-0.1 teacher on John, 879 verses, beam 5, batches of 64 sentences):

* ``fairseq-generate`` as LSKD runs it (``--required-batch-size-multiple 1``), timed by its own
  timer ("Translated N sentences ... in Xs"), which covers beam search only;
* CTranslate2 through LSKD's engine (:class:`lskd.ctranslate2_engine.CTranslate2Engine`: batches
  of similar length, fairseq's length limit per batch), float32 and int8, timed over its
  ``translate_batch`` calls only (model loading excluded, as fairseq-generate's timer excludes it);
* the same int8 model with batches capped by tokens (``--max-batch-tokens``): CTranslate2's
  token-based batching.

It prints sentences/s as ratios to fairseq-generate at the same thread count, each variant's BLEU,
the share of float32 hypotheses identical to fairseq-generate's, sizes on disk, and OK/BELOW
against the targets (the hand measurement of the issue: at 1 thread float32 1.94x, int8 3.56x; at
2 threads 2.11x and 2.24x; float32 >= 99 % identical; int8 within 0.5 BLEU).

    python benchmarks/decode_engines.py [--checkpoint CKPT] [--data PREP_DIR] [--split test] [--threads 1 2]
                                        [--max-len-a 1.2 --max-len-b 10]
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from quickstart_teacher import add_teacher_arguments, parse_with_teacher  # benchmarks/, the script's folder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lskd.corpus import iter_lines, read_lines  # noqa: E402
from lskd.ctranslate2_engine import CTranslate2Engine, load_export  # noqa: E402
from lskd.decoding import DecodingOptions, pieces_to_text  # noqa: E402
from lskd.prepared import load_prepared  # noqa: E402

#: sentences/s relative to fairseq-generate, by thread count: the issue's hand measurement
TARGETS = {1: {"ct2 float32": 1.94, "ct2 int8": 3.56}, 2: {"ct2 float32": 2.11, "ct2 int8": 2.24}}


def fairseq_generate(checkpoint: Path, data, split: str, options: DecodingOptions, threads: int) -> tuple[float, list[str]]:
    """Seconds by fairseq-generate's own timer, and its hypotheses in sentence order."""
    environment = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.generate", str(data.bin_dir), "--user-dir", str(REPO / "fairseq_plugins"),
         "--path", str(checkpoint), "--gen-subset", split, "--beam", str(options.beam), "--lenpen", str(options.lenpen),
         "--batch-size", str(options.batch_size), "--required-batch-size-multiple", "1",
         "--max-len-a", str(options.max_len_a), "--max-len-b", str(options.max_len_b),
         "--post-process", "sentencepiece", "--cpu", "--num-workers", "0"],
        capture_output=True, check=True, env=environment)
    seconds = float(re.search(r"Translated [\d,]+ sentences \(.*\) in ([\d.]+)s",
                              (result.stdout + result.stderr).decode("utf-8", "replace")).group(1))
    hypotheses = {int(line.split("\t")[0][2:]): line.split("\t")[2]
                  for line in iter_lines(io.BytesIO(result.stdout), "fairseq-generate output") if line.startswith("D-")}
    return seconds, [hypotheses[i] for i in range(len(hypotheses))]


def ctranslate2(model_dir: Path, data, split: str, options: DecodingOptions, threads: int) -> tuple[float, list[str]]:
    engine = CTranslate2Engine.on_split(load_export(model_dir), data, split, options, threads=threads)
    total = data.sentences(split)
    hypotheses = engine.translate(range(total))
    return engine.decode_seconds, [pieces_to_text(hypotheses[i][0].pieces) for i in range(total)]


def export(checkpoint: Path, data_dir: Path, out: Path, quantization: str) -> Path:
    subprocess.run([sys.executable, "-m", "eval.export", "--checkpoint", str(checkpoint), "--data", str(data_dir),
                    "--out", str(out), "--quantization", quantization], check=True, capture_output=True, cwd=REPO)
    return out


def main() -> None:
    import sacrebleu

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_teacher_arguments(parser)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=1024,
                        help="token cap of the token-batched int8 variant (default 1024)")
    parser.add_argument("--max-len-a", type=float, default=DecodingOptions.max_len_a,
                        help="length limit int(a * S + b), fairseq-generate's flag (default LSKD's 1.2)")
    parser.add_argument("--max-len-b", type=int, default=DecodingOptions.max_len_b,
                        help="(default LSKD's 10; fairseq-generate's own defaults are a = 0, b = 200)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=1, help="repeat and take each variant's median")
    args = parse_with_teacher(parser)
    data = load_prepared(args.data)
    references = read_lines(data.raw(args.split, data.tgt))
    limit = {"max_len_a": args.max_len_a, "max_len_b": args.max_len_b}
    options = DecodingOptions(beam=args.beam, batch_size=args.batch_size, **limit)
    token_options = DecodingOptions(beam=args.beam, batch_size=args.batch_size * 4, max_batch_tokens=args.max_batch_tokens,
                                    **limit)
    scratch = Path(tempfile.mkdtemp(prefix="lskd-engines-"))
    try:
        models = {q: export(args.checkpoint, args.data, scratch / q, q) for q in ("float32", "int8")}
        variants = {
            "fairseq-generate": lambda t: fairseq_generate(args.checkpoint, data, args.split, options, t),
            "ct2 float32": lambda t: ctranslate2(models["float32"], data, args.split, options, t),
            "ct2 int8": lambda t: ctranslate2(models["int8"], data, args.split, options, t),
            f"ct2 int8, <= {args.max_batch_tokens} tokens": lambda t: ctranslate2(models["int8"], data, args.split,
                                                                                  token_options, t),
        }
        sizes = {"fairseq-generate": args.checkpoint.stat().st_size, **{f"ct2 {q}": load_export(m).size_bytes
                                                                       for q, m in models.items()}}
        print(f"{args.checkpoint}: {len(references)} sentences of {args.split}, beam {args.beam}, "
              f"batches of {args.batch_size}, length limit {args.max_len_a} * S + {args.max_len_b}; on disk: "
              + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
        failed = False
        for threads in args.threads:
            seconds = {name: [] for name in variants}
            outputs = {}
            for _ in range(args.rounds):
                for name, run in variants.items():
                    elapsed, outputs[name] = run(threads)
                    seconds[name].append(elapsed)
            base = len(references) / statistics.median(seconds["fairseq-generate"])
            base_bleu = sacrebleu.corpus_bleu(outputs["fairseq-generate"], [references]).score
            print(f"\n{threads} thread(s)")
            for name in variants:
                rate = len(references) / statistics.median(seconds[name])
                bleu = sacrebleu.corpus_bleu(outputs[name], [references]).score
                same = sum(a == b for a, b in zip(outputs[name], outputs["fairseq-generate"])) / len(references)
                verdict = ""
                target = TARGETS.get(threads, {}).get(name)
                if target is not None:
                    ok = rate / base >= target
                    ok &= same >= 0.99 if "float32" in name else abs(bleu - base_bleu) <= 0.5
                    failed |= not ok
                    verdict = f"target {target:.2f}x, {'>= 99 % identical' if 'float32' in name else 'BLEU within 0.5'}: " \
                              f"{'OK' if ok else 'BELOW'}"
                print(f"  {name:34s} {rate:7.1f} sent/s  {rate / base:5.2f}x  BLEU {bleu:6.2f}  "
                      f"identical {100 * same:5.1f} %  {verdict}")
        print("\nall targets met" if not failed else "\nsome targets not met (BELOW)")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
