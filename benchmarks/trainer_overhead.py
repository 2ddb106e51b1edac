"""Overhead of the generic trainer (lskd-train) over a minimal hand-written PyTorch loop.

Both train the same model (same initial weights), on the same in-memory Fashion-MNIST images, with
the same batch size, augmentation, normalisation, optimizer and per-update cosine schedule; the
hand-written loop uses ``F.cross_entropy(label_smoothing=...)`` and a ``randperm`` shuffle. Epochs
alternate between the two (this machine is noisy) and the medians are compared; target: the
trainer's images per second within 5 % of the loop's (ratio >= 0.95).

    python benchmarks/trainer_overhead.py [--images 2048] [--rounds 3] [--model resnet8] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F


def hand_written_epoch(model, optimizer, scheduler, images, labels, batch_size, label_smoothing, mean, std,
                       generator) -> float:
    """The loop a user would write by hand; returns the summed loss (read once per batch, as users do)."""
    from lskd.vision.data import augment_batch, normalize

    model.train()
    total = 0.0
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(labels), batch_size):
        index = order[start:start + batch_size]
        inputs = normalize(augment_batch(images[index], 2, True, generator), mean, std)
        loss = F.cross_entropy(model(inputs), labels[index], label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each")
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the machine quiet)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lskd.train.config import load_config
    from lskd.train.trainer import Trainer

    epochs = args.rounds + 1  # one warm-up epoch each
    with tempfile.TemporaryDirectory(prefix="lskd-bench-") as out_dir:  # the trainer's TensorBoard log goes here
        config = load_config(None, [f"model.name={args.model}", f"data.train_limit={args.images}", "data.test_limit=1",
                                    f"data.batch_size={args.batch_size}", f"schedule.epochs={epochs}",
                                    "loss.label_smoothing=0.1", f"out_dir={out_dir}"])
        trainer = Trainer(config)
        compare(trainer, args, epochs)
        trainer.close()


def compare(trainer, args: argparse.Namespace, epochs: int) -> None:
    """Alternate epochs of the hand-written loop and of the trainer; print images/s and their ratio."""
    config = trainer.config
    model = copy.deepcopy(trainer.model)
    optim = config.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    steps = epochs * -(-args.images // args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    dataset, generator = trainer.data.train.dataset, torch.Generator().manual_seed(0)
    mean, std = trainer.data.mean, trainer.data.std

    seconds: dict[str, list[float]] = {"hand-written loop": [], "lskd Trainer": []}
    for epoch in range(epochs):
        start = time.perf_counter()
        hand_written_epoch(model, optimizer, scheduler, dataset.images, dataset.labels, args.batch_size, 0.1, mean, std,
                           generator)
        hand = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train_epoch(epoch)
        ours = time.perf_counter() - start
        if epoch > 0:
            seconds["hand-written loop"].append(hand)
            seconds["lskd Trainer"].append(ours)
    rate = {name: args.images / statistics.median(values) for name, values in seconds.items()}
    ratio = rate["lskd Trainer"] / rate["hand-written loop"]
    print(f"{args.model}, batch {args.batch_size}, {args.images} Fashion-MNIST images per epoch, augmentation on, "
          f"LS 0.1, SGD + cosine; {args.rounds} timed epochs each (after a warm-up), torch threads {torch.get_num_threads()}")
    for name, value in rate.items():
        print(f"  {name:18s} {value:8.0f} images/s  (epochs: {', '.join(f'{s:.2f}' for s in seconds[name])} s)")
    print(f"ratio lskd Trainer / hand-written = {ratio:.3f}  (target >= 0.95): {'OK' if ratio >= 0.95 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
