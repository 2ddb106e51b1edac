"""``lskd-dump-topk``: run a teacher (or ensemble) once over binarized splits and cache its top-k.

The cache (see :mod:`lskd.topk_cache`) lets students be distilled with
``--teacher-topk-cache DIR`` without a teacher in memory. Each split goes to ``DIR/SPLIT`` with a
manifest recording the data's and the teachers' sha256, so a cache is never used with other data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lskd.errors import console_script
from lskd.losses import topk_scores
from lskd.provenance import provenance
from lskd.topk_cache import TopKCacheError, TopKCacheWriter


def dump_split(task, teachers, infos, split: str, k: int, out: Path, max_tokens: int, device: torch.device) -> dict:
    from fairseq_plugins.data import dataset_sha256
    from fairseq_plugins.tasks import split_batches
    from fairseq_plugins.teacher import teacher_log_probs

    task.load_dataset(split)
    writer = TopKCacheWriter(
        out / split, k, task.dataset(split).tgt_sizes,
        manifest={
            "data": f"{Path(task.cfg.data).resolve()}:{split}",
            "data_sha256": dataset_sha256(task, split),
            "teacher_path": [info.path for info in infos],
            "teacher_sha256": [info.sha256 for info in infos],
            "teacher_label_smoothing": [info.label_smoothing for info in infos],
            **provenance(),
        },
    )
    pad = task.target_dictionary.pad()
    for sample in split_batches(task, teachers, split, max_tokens, device, f"top-{k} {split}"):
        values, indices = topk_scores(teacher_log_probs(teachers, sample["net_input"]), k)
        lengths = sample["target"].ne(pad).sum(-1).tolist()
        for row, (sid, length) in enumerate(zip(sample["id"].tolist(), lengths)):
            writer.write(sid, indices[row, :length], values[row, :length].exp())
    return writer.close()


@console_script("lskd-dump-topk")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lskd-dump-topk", description=__doc__)
    parser.add_argument("data", type=Path, help="fairseq-binarized data directory (dict.*.txt, SPLIT.SRC-TGT.*)")
    parser.add_argument("--teacher-path", required=True, help="teacher checkpoint, or several separated by ':'")
    parser.add_argument("--k", type=int, default=8, help="tokens kept per position (default 8)")
    parser.add_argument("--out", type=Path, required=True, help="cache directory (one subdirectory per split)")
    parser.add_argument("--splits", default="train,valid", help="comma-separated splits (default train,valid)")
    parser.add_argument("--source-lang", help="default: inferred from the data directory")
    parser.add_argument("--target-lang", help="default: inferred from the data directory")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--gpu", action="store_true", help="run the teacher on CUDA")
    args = parser.parse_args(argv)

    from fairseq_plugins.tasks import translation_task
    from fairseq_plugins.teacher import load_teachers

    task = translation_task(args.data, args.source_lang, args.target_lang)
    if not 0 < args.k <= len(task.target_dictionary):
        raise TopKCacheError(f"--k {args.k} must be between 1 and the vocabulary size ({len(task.target_dictionary)})")
    teachers, infos = load_teachers(args.teacher_path, task)
    device = torch.device("cuda" if args.gpu else "cpu")
    teachers = [t.to(device) for t in teachers]
    for split in args.splits.split(","):
        manifest = dump_split(task, teachers, infos, split, args.k, args.out, args.max_tokens, device)
        size = (args.out / split / "indices.npy").stat().st_size + (args.out / split / "probs.npy").stat().st_size
        print(f"{split}: {manifest['sentences']} sentences, {manifest['tokens']} target tokens, "
              f"{size / max(manifest['tokens'], 1):.1f} bytes/token -> {args.out / split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
