"""Student training throughput with word-level KD vs. plain label-smoothed cross-entropy.

Runs fairseq's own Trainer in this process on the same fixed batches for three criteria, in
interleaved rounds (this machine is noisy), and prints ratios:
  * online KD vs plain: should not exceed 1 + teacher forward / student train step + 0.05;
  * top-k cache vs plain: target within 5 %;
  * cache bytes per target token (k = 8: about 48 B) vs a full fp32 distribution.
Self-contained: prepares a 3,000-verse Bible slice, makes a teacher (quickstart architecture,
a few updates: throughput does not depend on how well it is trained) and dumps its top-k cache.

    python benchmarks/kd_throughput.py [--batches 12] [--rounds 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import logging
import json
import statistics
import subprocess
import sys
import warnings
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
logging.disable(logging.WARNING)  # fairseq/hydra chatter would bury the ratios
warnings.filterwarnings("ignore")
TEACHER_ARCH = ["--arch", "transformer", "--encoder-layers", "3", "--decoder-layers", "3",
                "--encoder-embed-dim", "256", "--decoder-embed-dim", "256",
                "--encoder-ffn-embed-dim", "1024", "--decoder-ffn-embed-dim", "1024",
                "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings",
                "--encoder-normalize-before", "--decoder-normalize-before"]
STUDENT_ARCH = ["--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
                "--encoder-embed-dim", "256", "--decoder-embed-dim", "256",
                "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
                "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings"]
COMMON = ["--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048",
          "--required-batch-size-multiple", "1", "--seed", "1", "--num-workers", "0"]


def run(*command: str) -> None:
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:2])} failed:\n{result.stderr[-2000:]}")


def prepare(work: Path) -> tuple[Path, Path, Path]:
    data = work / "bible-3k"
    run("data_prep.cli", "bible", "--out", str(data), "--limit-train", "3000", "--vocab-size", "4000")
    teacher = work / "teacher" / "checkpoint_last.pt"
    if not teacher.is_file():
        run("fairseq_cli.train", str(data / "bin"), "--user-dir", str(REPO / "fairseq_plugins"), *TEACHER_ARCH, *COMMON,
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-update", "5",
            "--save-dir", str(teacher.parent), "--no-epoch-checkpoints", "--disable-validation")
    cache = work / "cache"
    if not (cache / "train" / "manifest.json").is_file():
        run("data_prep.dump_topk", str(data / "bin"), "--teacher-path", str(teacher), "--k", "8",
            "--out", str(cache), "--splits", "train")
    return data / "bin", teacher, cache


def trainer_for(data: Path, *criterion: str):
    from fairseq.trainer import Trainer

    from fairseq_plugins.components import build_training_components

    cfg, task, model, crit = build_training_components(
        [str(data), "--user-dir", str(REPO / "fairseq_plugins"), *STUDENT_ARCH, *COMMON, *criterion],
        splits=("train",))
    return Trainer(cfg, task, model, crit), task


def fixed_batches(task, count: int) -> list:
    iterator = task.get_batch_iterator(task.dataset("train"), max_tokens=2048, required_batch_size_multiple=1,
                                       seed=1).next_epoch_itr(shuffle=True)
    return [next(iterator) for _ in range(count)]


def timed_steps(trainer, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        trainer.train_step([batch])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-kd")
    args = parser.parse_args()
    data, teacher_path, cache = prepare(args.work)

    ls = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    kd = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5"]
    variants = {
        "plain": trainer_for(data, *ls),
        "online": trainer_for(data, *kd, "--teacher-path", str(teacher_path)),
        "cache": trainer_for(data, *kd, "--teacher-topk-cache", str(cache)),
    }
    batches = fixed_batches(variants["plain"][1], args.batches)
    tokens = sum(b["ntokens"] for b in batches)
    teacher = variants["online"][0].criterion._teachers
    from fairseq_plugins.teacher import teacher_log_probs

    for trainer, _ in variants.values():  # warm-up: first-step allocations
        timed_steps(trainer, batches[:2])
    seconds = {name: [] for name in [*variants, "teacher_forward"]}
    for _ in range(args.rounds):
        for name, (trainer, _) in variants.items():
            seconds[name].append(timed_steps(trainer, batches))
        start = time.perf_counter()
        with torch.no_grad():  # as the criterion runs its teacher
            for batch in batches:
                teacher_log_probs(teacher, batch["net_input"])
        seconds["teacher_forward"].append(time.perf_counter() - start)
    t = {name: statistics.median(values) for name, values in seconds.items()}
    tps = {name: tokens / t[name] for name in variants}
    floor = 1 + t["teacher_forward"] / t["plain"] + 0.05
    manifest = json.loads((cache / "train" / "manifest.json").read_text())
    cache_bytes = sum((cache / "train" / f).stat().st_size for f in ("indices.npy", "probs.npy")) / manifest["tokens"]
    vocab = len(variants["plain"][1].target_dictionary)
    print(f"{args.batches} batches x {args.rounds} rounds, {tokens} target tokens per round, torch threads {torch.get_num_threads()}")
    for name in variants:
        print(f"  {name:7s} {tps[name]:8.0f} target tokens/s  (median {t[name]:.2f} s per round)")
    print(f"  teacher forward {t['teacher_forward']:.2f} s per round; student train step (plain) {t['plain']:.2f} s")
    print(f"online KD slowdown   = {tps['plain'] / tps['online']:.3f}  (bound 1 + teacher/student + 0.05 = {floor:.3f}): "
          f"{'OK' if tps['plain'] / tps['online'] <= floor else 'ABOVE BOUND'}")
    print(f"top-k cache slowdown = {tps['plain'] / tps['cache']:.3f}  (target <= 1.05): "
          f"{'OK' if tps['plain'] / tps['cache'] <= 1.05 else 'ABOVE TARGET'}")
    print(f"cache size           = {cache_bytes:.1f} bytes/token at k={manifest['k']} vs {4 * vocab} bytes/token "
          f"for the full fp32 distribution (V={vocab}): {4 * vocab / cache_bytes:.0f}x smaller")


if __name__ == "__main__":
    main()
