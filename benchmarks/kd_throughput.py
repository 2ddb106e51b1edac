"""Student training throughput with word-level KD vs. plain label-smoothed cross-entropy.

Each criterion trains in its own process (fairseq's own Trainer, the same fixed batches), all
under the same malloc settings: ``GLIBC_TUNABLES`` as given, else as ``recipes/lib.sh`` exports
it. The processes take turns, one timed round each, for ``--rounds`` rounds (this machine is
noisy), and the medians give the ratios (the round-by-round ones are printed too):
  * online KD vs plain: should not exceed 1 + teacher forward / student train step + 0.05 (the
    teacher forward timed on its own, after the round); also printed, not judged: the teacher's
    time inside the training steps (its caches are colder there) and what the step adds beyond it;
  * top-k cache vs plain: target within 5 %;
  * cache bytes per target token (k = 8: about 48 B) vs a full fp32 distribution.
Self-contained: prepares a 3,000-verse Bible slice, makes a teacher (quickstart architecture,
a few updates: throughput does not depend on how well it is trained) and dumps its top-k cache.

    python benchmarks/kd_throughput.py [--batches 12] [--rounds 3] [--threads N] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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
LS = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
KD = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5"]
VARIANTS = ("plain", "online", "cache")


def run(*command: str) -> None:
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:2])} failed:\n{result.stderr[-2000:]}")


def paths(work: Path) -> tuple[Path, Path, Path]:
    """Binarized data, teacher checkpoint and top-k cache under ``work``."""
    return work / "bible-3k" / "bin", work / "teacher" / "checkpoint_last.pt", work / "cache"


def prepare(work: Path) -> None:
    data, teacher, cache = paths(work)
    run("data_prep.cli", "bible", "--out", str(data.parent), "--limit-train", "3000", "--vocab-size", "4000")
    if not teacher.is_file():
        run("fairseq_cli.train", str(data), "--user-dir", str(REPO / "fairseq_plugins"), *TEACHER_ARCH, *COMMON,
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-update", "5",
            "--save-dir", str(teacher.parent), "--no-epoch-checkpoints", "--disable-validation")
    if not (cache / "train" / "manifest.json").is_file():
        run("data_prep.dump_topk", str(data), "--teacher-path", str(teacher), "--k", "8",
            "--out", str(cache), "--splits", "train")


def recipe_malloc_settings() -> str:
    """``GLIBC_TUNABLES`` as the recipes export it (``recipes/lib.sh``), read from the script itself."""
    shell = ['bash', '-c', 'source "$0" && printf %s "$GLIBC_TUNABLES"', str(REPO / "recipes" / "lib.sh")]
    environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return subprocess.run(shell, capture_output=True, text=True, check=True, env=environment).stdout


# -- one criterion's process -------------------------------------------------------------------
def criterion_args(variant: str, teacher: Path, cache: Path) -> list[str]:
    return {"plain": LS, "online": [*KD, "--teacher-path", str(teacher)],
            "cache": [*KD, "--teacher-topk-cache", str(cache)]}[variant]


def serve_rounds(variant: str, data: Path, teacher: Path, cache: Path, batches: int) -> None:
    """Build one Trainer, warm it up, then time one round over the fixed batches per line on stdin.

    Prints one JSON line per round: seconds of the train steps and, for the online teacher, of its
    forward passes alone (as the criterion runs them, under ``no_grad``) and of its calls inside the
    train steps.
    """
    import torch
    from fairseq.trainer import Trainer

    from fairseq_plugins.components import build_training_components
    from fairseq_plugins.teacher import teacher_log_probs

    logging.disable(logging.WARNING)  # fairseq/hydra chatter would bury the ratios
    warnings.filterwarnings("ignore")
    cfg, task, model, criterion = build_training_components(
        [str(data), "--user-dir", str(REPO / "fairseq_plugins"), *STUDENT_ARCH, *COMMON,
         *criterion_args(variant, teacher, cache)], splits=("train",))
    trainer = Trainer(cfg, task, model, criterion)
    teacher_in_step = time_calls(criterion, "teacher_scores") if variant == "online" else [0.0]
    iterator = task.get_batch_iterator(task.dataset("train"), max_tokens=2048, required_batch_size_multiple=1,
                                       seed=1).next_epoch_itr(shuffle=True)
    fixed = [next(iterator) for _ in range(batches)]
    for batch in fixed[:2]:  # warm-up: first-step allocations
        trainer.train_step([batch])
    print(json.dumps({"tokens": sum(b["ntokens"] for b in fixed), "threads": torch.get_num_threads(),
                      "vocab": len(task.target_dictionary)}), flush=True)
    for _ in sys.stdin:
        teacher_in_step[0] = 0.0
        start = time.perf_counter()
        for batch in fixed:
            trainer.train_step([batch])
        report = {"step": time.perf_counter() - start}
        if variant == "online":
            report["teacher_in_step"] = teacher_in_step[0]
            start = time.perf_counter()
            with torch.no_grad():
                for batch in fixed:
                    teacher_log_probs(criterion._teachers, batch["net_input"])
            report["teacher_forward"] = time.perf_counter() - start
        print(json.dumps(report), flush=True)


def time_calls(owner: object, method: str) -> list[float]:
    """Wrap ``owner.method`` (on the instance) so that its calls' wall time adds up in the returned
    one-element list, which the caller may reset."""
    spent = [0.0]
    call = getattr(owner, method)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(owner, method, timed)
    return spent


class CriterionProcess:
    """A child process serving timed rounds of one criterion (see :func:`serve_rounds`)."""

    def __init__(self, variant: str, args: argparse.Namespace, environment: dict[str, str]):
        command = [sys.executable, __file__, "--serve", variant, "--batches", str(args.batches), "--work", str(args.work)]
        self.variant = variant
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"the {self.variant} criterion's process stopped (exit status {self.process.wait()})")
        return json.loads(line)

    def timed_round(self) -> dict:
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads per process (default: torch's)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-kd")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)  # a criterion's own process
    args = parser.parse_args()
    data, teacher, cache = paths(args.work)
    if args.serve:
        return serve_rounds(args.serve, data, teacher, cache, args.batches)
    prepare(args.work)

    environment = dict(os.environ, GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES") or recipe_malloc_settings())
    if args.threads:
        environment.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    processes = [CriterionProcess(variant, args, environment) for variant in VARIANTS]
    if len({str(p.ready) for p in processes}) != 1:
        sys.exit(f"the criteria's processes differ in batches or threads: {[p.ready for p in processes]}")
    reports = {p.variant: [] for p in processes}
    for round_index in range(args.rounds):
        turn = round_index % len(processes)  # each criterion goes first in turn: drift spreads evenly
        for p in processes[turn:] + processes[:turn]:
            reports[p.variant].append(p.timed_round())
    for p in processes:
        p.close()

    t = {name: statistics.median(r["step"] for r in rounds) for name, rounds in reports.items()}
    teacher_forward = statistics.median(r["teacher_forward"] for r in reports["online"])
    tokens, threads, vocab = (processes[0].ready[key] for key in ("tokens", "threads", "vocab"))
    bound = 1 + teacher_forward / t["plain"] + 0.05
    online, cached = t["online"] / t["plain"], t["cache"] / t["plain"]
    manifest = json.loads((cache / "train" / "manifest.json").read_text())
    cache_bytes = sum((cache / "train" / f).stat().st_size for f in ("indices.npy", "probs.npy")) / manifest["tokens"]
    print(f"{args.batches} batches x {args.rounds} rounds, {tokens} target tokens per round, one process per "
          f"criterion, torch threads {threads}, GLIBC_TUNABLES={environment['GLIBC_TUNABLES'] or '(glibc defaults)'}")
    for name in VARIANTS:
        print(f"  {name:7s} {tokens / t[name]:8.0f} target tokens/s  (median {t[name]:.2f} s per round)")
    print(f"  teacher forward {teacher_forward:.2f} s per round; student train step (plain) {t['plain']:.2f} s")
    in_step = statistics.median(r["teacher_in_step"] for r in reports["online"])
    kd_own = t["online"] - t["plain"] - in_step
    print(f"  inside the online steps the teacher took {in_step:.2f} s per round; online - plain - that = "
          f"{kd_own:.2f} s, {100 * kd_own / t['plain']:.1f} % of the plain step (the KD term's own cost, and noise)")
    per_round = [f"{o['step'] / p['step']:.3f}/{c['step'] / p['step']:.3f}"
                 for p, o, c in zip(*(reports[name] for name in VARIANTS))]
    print(f"  online/plain and cache/plain, round by round: {' '.join(per_round)}")
    print(f"online KD slowdown   = {online:.3f}  (bound 1 + teacher/student + 0.05 = {bound:.3f}): "
          f"{'OK' if online <= bound else 'ABOVE'}")
    print(f"top-k cache slowdown = {cached:.3f}  (target <= 1.05): {'OK' if cached <= 1.05 else 'ABOVE'}")
    print(f"cache size           = {cache_bytes:.1f} bytes/token at k={manifest['k']} vs {4 * vocab} bytes/token "
          f"for the full fp32 distribution (V={vocab}): {4 * vocab / cache_bytes:.0f}x smaller")


if __name__ == "__main__":
    main()
