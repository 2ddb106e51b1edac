"""Decoding throughput of lskd-distill-corpus vs. plain fairseq-generate: same model, beam, batch, sentences.

Both decode the same split (default: the quickstart's John test set) with the same teacher, beam and
batch size, in alternating runs; sentences per second come from each tool's own decoding time
(fairseq-generate's "Translated ... sentences/s" line, the distiller's summed chunk times), so
start-up costs are excluded from both. Target: within 5 %.

    python benchmarks/distill_throughput.py [--checkpoint CKPT] [--data PREP_DIR] [--split test] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
        return manifest["decode_seconds"], manifest["counts"]["decoded"]
    finally:
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs/quickstart/teacher_ls0.1/checkpoint_last.pt")
    parser.add_argument("--data", type=Path, default=REPO / "data/bible-de-en-4k")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        sys.exit(f"{args.checkpoint} not found: run `bash recipes/quickstart.sh` or pass --checkpoint/--data")
    rates = {"fairseq-generate": [], "lskd-distill-corpus": []}
    for _ in range(args.rounds):
        seconds, n = fairseq_generate(args.checkpoint, args.data / "bin", args.split, args.beam, args.batch_size)
        rates["fairseq-generate"].append(n / seconds)
        seconds, n = distiller(args.checkpoint, args.data, args.split, args.beam, args.batch_size)
        rates["lskd-distill-corpus"].append(n / seconds)
    median = {k: statistics.median(v) for k, v in rates.items()}
    for name, value in median.items():
        print(f"  {name:20s} {value:6.1f} sentences/s  (runs: {', '.join(f'{r:.1f}' for r in rates[name])})")
    ratio = median["fairseq-generate"] / median["lskd-distill-corpus"]
    print(f"fairseq-generate / lskd-distill-corpus time ratio = {ratio:.3f} (target <= 1.05): "
          f"{'OK' if ratio <= 1.05 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
