"""Cost of the stability/ECE pass vs. a plain teacher-forced forward pass over the same split.

Both passes run the same model over the same batches, in interleaved rounds (the machine is
noisy); the ratio of their median times is printed (target: at most 1.3). The extra memory of the
accumulators is printed against its documented bound, max_classes x V x 8 bytes.

    python benchmarks/stability_overhead.py [--checkpoint CKPT] [--data PREP_DIR] [--split test]
Defaults: the quickstart's LS teacher and data (run `bash recipes/quickstart.sh` first).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import warnings
import time

import torch
from quickstart_teacher import add_teacher_arguments, parse_with_teacher  # benchmarks/, the script's folder

logging.disable(logging.WARNING)  # fairseq/hydra chatter would bury the ratios
warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_teacher_arguments(parser)
    parser.add_argument("--max-classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse_with_teacher(parser)

    from eval.analysis import checked_lengths, most_frequent_gold_classes
    from fairseq_plugins.tasks import split_batches, task_and_model
    from fairseq_plugins.teacher import teacher_log_probs
    from lskd.prepared import load_prepared
    from lskd.metrics import CalibrationAccumulator, StabilityAccumulator

    task, model, _ = task_and_model(args.checkpoint, load_prepared(args.data))
    lengths = checked_lengths(task, model, args.split, "skip", "the timing")
    batches = list(split_batches(task, lengths, 4096, torch.device("cpu"), "loading"))
    pad = task.target_dictionary.pad()
    vocab = len(task.target_dictionary)
    classes = most_frequent_gold_classes(task, args.split, args.max_classes)

    def plain() -> None:
        for sample in batches:
            teacher_log_probs([model], sample["net_input"])

    def with_metrics() -> list:
        stability, calibration = StabilityAccumulator(vocab, classes=classes), CalibrationAccumulator(15)
        for sample in batches:
            log_probs = teacher_log_probs([model], sample["net_input"])
            mask = sample["target"].ne(pad)
            kept, gold = log_probs[mask], sample["target"][mask]
            probs = kept.exp()
            stability.update(probs, gold)
            calibration.update(probs, gold, kept)
        return [stability, calibration]

    seconds = {"plain": [], "stability": []}
    accumulators = with_metrics()  # warm-up
    for _ in range(args.rounds):
        for name, fn in (("plain", plain), ("stability", with_metrics)):
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    t = {k: statistics.median(v) for k, v in seconds.items()}
    extra = sum(x.nbytes for acc in accumulators for x in vars(acc).values() if isinstance(x, torch.Tensor))
    bound = len(classes) * vocab * 8
    print(f"{args.split}: {sum(len(b['id']) for b in batches)} sentences, {len(classes)} classes, V={vocab}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  plain teacher-forced pass {t['plain']:.2f} s, with stability + ECE {t['stability']:.2f} s (medians of {args.rounds})")
    print(f"stability pass / plain pass = {t['stability'] / t['plain']:.3f} (target <= 1.3): "
          f"{'OK' if t['stability'] / t['plain'] <= 1.3 else 'ABOVE TARGET'}")
    print(f"accumulator memory = {extra / 2**20:.1f} MiB (bound max_classes x V x 8 B = {bound / 2**20:.1f} MiB, "
          f"plus O(classes + V))")


if __name__ == "__main__":
    main()
