"""Decoding throughput of lskd-distill-corpus vs. plain fairseq-generate: same model, beam, batch, sentences.

Both decode the same split (default: the quickstart's John test set) with the same teacher, beam and
batch size, in alternating runs. fairseq-generate's own timer ("Translated ... in Xs") covers beam
search only; the distiller records the same scope (generate_seconds) and, separately, its whole
decoding loop with batching and chunk writing (decode_seconds). Both ratios are printed; start-up
is excluded from both. Target: within 5 %.

    python benchmarks/distill_throughput.py [--checkpoint CKPT] [--data PREP_DIR] [--split test] [--rounds 2]
"""
from __future__ import annotations

import argparse
import logging
import json
import re
import shutil
import statistics
import subprocess
import sys
import warnings
import tempfile
from pathlib import Path

from quickstart_teacher import add_teacher_arguments, parse_with_teacher  # benchmarks/, the script's folder

REPO = Path(__file__).resolve().parent.parent
logging.disable(logging.WARNING)  # fairseq/hydra chatter would bury the ratios
warnings.filterwarnings("ignore")


def fairseq_generate(checkpoint: Path, bin_dir: Path, split: str, beam: int, batch: int) -> tuple[float, int]:
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.generate", str(bin_dir), "--user-dir", str(REPO / "fairseq_plugins"),
         "--path", str(checkpoint), "--gen-subset", split, "--beam", str(beam), "--batch-size", str(batch),
         "--required-batch-size-multiple", "1", "--max-len-a", "1.2", "--max-len-b", "10", "--cpu", "--num-workers", "0"],
        capture_output=True, text=True, check=True)
    match = re.search(r"Translated ([\d,]+) sentences \(.*\) in ([\d.]+)s", result.stdout + result.stderr)
    return float(match.group(2)), int(match.group(1).replace(",", ""))


def distiller(checkpoint: Path, data: Path, split: str, beam: int, batch: int) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix="lskd-bench-"))
    try:
        subprocess.run([sys.executable, "-m", "data_prep.distill", "--data", str(data), "--teacher-path", str(checkpoint),
                        "--out", str(out / "d"), "--split", split, "--beam", str(beam), "--batch-size", str(batch),
                        "--chunk-size", "100000", "--workers", "1"], capture_output=True, text=True, check=True)
        manifest = json.loads((out / "d" / "distill.json").read_text())
        return manifest["generate_seconds"], manifest["decode_seconds"], manifest["counts"]["decoded"]
    finally:
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_teacher_arguments(parser)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parse_with_teacher(parser)
    rates = {"fairseq-generate (beam search)": [], "lskd-distill-corpus (beam search)": [],
             "lskd-distill-corpus (whole loop)": []}
    for _ in range(args.rounds):
        seconds, n = fairseq_generate(args.checkpoint, args.data / "bin", args.split, args.beam, args.batch_size)
        rates["fairseq-generate (beam search)"].append(n / seconds)
        generate, decode, n = distiller(args.checkpoint, args.data, args.split, args.beam, args.batch_size)
        rates["lskd-distill-corpus (beam search)"].append(n / generate)
        rates["lskd-distill-corpus (whole loop)"].append(n / decode)
    median = {k: statistics.median(v) for k, v in rates.items()}
    for name, value in median.items():
        print(f"  {name:34s} {value:6.1f} sentences/s  (runs: {', '.join(f'{r:.1f}' for r in rates[name])})")
    base = median["fairseq-generate (beam search)"]
    for scope in ("beam search", "whole loop"):
        ratio = base / median[f"lskd-distill-corpus ({scope})"]
        print(f"time ratio, lskd-distill-corpus ({scope}) / fairseq-generate (beam search) = {ratio:.3f} "
              f"(target <= 1.05): {'OK' if ratio <= 1.05 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
