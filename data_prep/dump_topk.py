"""``lskd-dump-topk``: run a teacher (or ensemble) once over binarized splits and cache its top-k.

The cache (see :mod:`lskd.topk_cache`) lets students be distilled with
``--teacher-topk-cache DIR`` without a teacher in memory. Each split goes to ``DIR/SPLIT`` with a
manifest recording the data's and the teachers' sha256, so a cache is never used with other data.

One run writes ``DIR`` at a time (a lock, :func:`lskd.output_files.writer_lock`). A split is written
beside its place and renamed into it complete, its manifest certifying its arrays: after a kill, the
next run removes what was half-made, keeps the splits made from the same data, teachers, k and
too-long limits, and computes the rest. A split made from other inputs is refused, naming what
changed, unless ``--overwrite``, which recomputes every split asked for.

A sentence pair longer than the teachers accept (source or target, with ``--max-source-positions``
and ``--max-target-positions`` as ``fairseq-train`` takes them) is what ``fairseq-train`` never
batches: by default (``--too-long skip``) it gets no entry, and the manifest counts it and lists its
id (:func:`fairseq_plugins.tasks.check_lengths`).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from lskd.decoding import check_cuda
from lskd.errors import console_script, count_at_least, name_ids, output_directory
from lskd.losses import topk_scores
from lskd.output_files import check_writable, writer_lock
from lskd.provenance import RecordError, provenance, read_json
from lskd.too_long import TOO_LONG_POLICIES, LengthCheck
from lskd.topk_cache import (MANIFEST, TopKCache, TopKCacheError, TopKCacheWriter, changed_inputs, remove_leftovers,
                             splits_of_another_teacher)


def split_inputs(task, teachers, infos, split: str, k: int, too_long: str) -> tuple[LengthCheck, dict[str, Any]]:
    """The sentences of ``split`` too long for the teachers, after the ``too_long`` policy (``skip``: no
    entry, counted and listed in the manifest; ``error``: stop naming them), and what makes its cache
    (:data:`lskd.topk_cache.INPUTS`)."""
    from fairseq_plugins.data import dataset_sha256
    from fairseq_plugins.tasks import check_lengths

    lengths = check_lengths(task, teachers, split)
    lengths.enforce(too_long, hint="pass --too-long skip to leave them out of the cache, as fairseq-train "
                                   "leaves them out of training")
    source, target = lengths.max_positions
    return lengths, {
        "data_sha256": dataset_sha256(task, split),
        "teacher_sha256": [info.sha256 for info in infos],
        "k": k,
        # keys sorted, as a manifest reads back: a message shows the recorded limits and these alike
        "too_long": {"max_source_positions": source, "max_target_positions": target, "policy": too_long},
    }


def open_writer(task, infos, split: str, out: Path, lengths: LengthCheck, inputs: dict[str, Any]) -> TopKCacheWriter:
    """The writer of ``out/split``, its disk space reserved (a full disk stops here, before the teacher's pass)."""
    return TopKCacheWriter(
        out / split, inputs["k"], task.dataset(split).tgt_sizes,
        skipped=lengths.too_long, skip_reason=lengths.limits,
        manifest={
            **inputs,
            "data": f"{Path(task.cfg.data).resolve()}:{split}",
            "teacher_path": [info.path for info in infos],
            "teacher_label_smoothing": [info.label_smoothing for info in infos],
            **provenance(),
        },
    )


def fill(writer: TopKCacheWriter, task, teachers, lengths: LengthCheck, max_tokens: int,
         device: torch.device) -> dict[str, Any]:
    """Run the teachers over the split of ``lengths`` into ``writer``; returns the finished cache's manifest."""
    from fairseq_plugins.tasks import split_batches
    from fairseq_plugins.teacher import teacher_log_probs

    k, pad = writer.k, task.target_dictionary.pad()
    for sample in split_batches(task, lengths, max_tokens, device, f"top-{k} {lengths.split}"):
        values, indices = topk_scores(teacher_log_probs(teachers, sample["net_input"]), k)
        target_lengths = sample["target"].ne(pad).sum(-1).tolist()
        for row, (sid, length) in enumerate(zip(sample["id"].tolist(), target_lengths)):
            writer.write(sid, indices[row, :length], values[row, :length].exp())
    return writer.close()


def dump_splits(task, teachers, infos, splits: list[str], args: argparse.Namespace) -> None:
    """Check what ``args.out`` holds against this run's inputs, reserve the space of every split to
    compute, then run the teachers over each (hours, for a large train split): every refusal and a full
    disk come before the first pass. The caller holds the lock on ``args.out``."""
    plans = {split: split_inputs(task, teachers, infos, split, args.k, args.too_long) for split in splits}
    replace_other_teachers_splits(args.out, [info.sha256 for info in infos], args.k, args.overwrite)
    todo = splits_to_compute(args.out, {split: inputs for split, (_, inputs) in plans.items()}, args.overwrite)
    writers = {split: open_writer(task, infos, split, args.out, *plans[split]) for split in todo}
    device = torch.device("cuda" if args.gpu else "cpu")
    teachers = [t.to(device) for t in teachers]
    for split in splits:
        if split not in writers:
            print(f"{split}: kept {args.out / split}, made from the same data, teachers, k and too-long limits "
                  f"(--overwrite recomputes it)")
            continue
        manifest = fill(writers[split], task, teachers, plans[split][0], args.max_tokens, device)
        size = sum(manifest["files"][name]["bytes"] for name in ("indices.npy", "probs.npy"))
        kept = manifest["sentences"] - manifest["skipped"]["count"]
        print(f"{split}: {kept} of {manifest['sentences']} sentences, {manifest['tokens']} target tokens, "
              f"{size / max(manifest['tokens'], 1):.1f} bytes/token -> {args.out / split}")
        print_skipped(split, manifest)


@console_script("lskd-dump-topk")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lskd-dump-topk", description=__doc__)
    parser.add_argument("data", type=Path, help="fairseq-binarized data directory (dict.*.txt, SPLIT.SRC-TGT.*)")
    parser.add_argument("--teacher-path", required=True, help="teacher checkpoint, or several separated by ':'")
    parser.add_argument("--k", type=int, default=8, help="tokens kept per position (default 8)")
    parser.add_argument("--out", type=output_directory, required=True, help="cache directory (one subdirectory per split)")
    parser.add_argument("--splits", default="train,valid", help="comma-separated splits (default train,valid)")
    parser.add_argument("--source-lang", help="default: inferred from the data directory")
    parser.add_argument("--target-lang", help="default: inferred from the data directory")
    parser.add_argument("--max-tokens", type=count_at_least(1), default=4096)
    parser.add_argument("--max-source-positions", type=int, default=1024,
                        help="as fairseq-train's: longer sources are too long (default 1024, or less if the teacher "
                             "accepts less)")
    parser.add_argument("--max-target-positions", type=int, default=1024, help="the same for targets")
    parser.add_argument("--too-long", choices=TOO_LONG_POLICIES, default="skip",
                        help="sentence pairs longer than the teacher accepts: skip (no entry, counted and listed in "
                             "the manifest, as fairseq-train leaves them out of training) or error (default skip)")
    parser.add_argument("--gpu", action="store_true", help="run the teacher on CUDA")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the splits of another teacher or k found in --out (default: refuse)")
    args = parser.parse_args(argv)
    if args.gpu:
        check_cuda("fairseq")  # the teacher runs in torch

    if not args.data.is_dir():  # fairseq's FileNotFoundError traceback otherwise
        raise TopKCacheError(f"{args.data}: no such directory (give fairseq-binarized data, e.g. PREP_DIR/bin)")
    check_binarized_dictionaries(args.data, args.source_lang, args.target_lang)
    from fairseq_plugins.tasks import translation_task
    from fairseq_plugins.teacher import load_teachers

    task = translation_task(args.data, args.source_lang, args.target_lang,
                            (args.max_source_positions, args.max_target_positions))
    if not 0 < args.k <= len(task.target_dictionary):
        raise TopKCacheError(f"--k {args.k} must be between 1 and the vocabulary size ({len(task.target_dictionary)})")
    teachers, infos = load_teachers(args.teacher_path, task)
    splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    if not splits:
        raise TopKCacheError(f"--splits {args.splits!r} names no split (e.g. --splits train,valid)")
    for split in splits:  # all checked before the teacher's pass over the first, which may take hours
        try:
            task.load_dataset(split)
        except FileNotFoundError:
            raise TopKCacheError(f"--splits {args.splits!r}: {args.data} has no binarized split {split!r}") from None
    check_writable(args.out)
    with writer_lock(args.out):  # one writer per --out: a second one truncated the first's arrays
        remove_leftovers(args.out)  # of a killed run
        try:
            dump_splits(task, teachers, infos, splits, args)
        finally:
            remove_leftovers(args.out)  # of this run, stopped by an error
    return 0


def replace_other_teachers_splits(out: Path, teacher_sha256: list[str], k: int, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, delete) splits in ``out`` made by another teacher or at another k,
    or whose manifest is damaged, so that a cache never mixes teachers."""
    replace_damaged_splits(out, overwrite)
    others = splits_of_another_teacher(out, teacher_sha256, k)
    if others and not overwrite:
        raise TopKCacheError(f"{out} holds top-k caches of another teacher or k ({', '.join(p.name for p in others)}): "
                             f"pass --overwrite to replace them, or choose another --out")
    for split_dir in others:
        print(f"[lskd-dump-topk] removing {split_dir} (another teacher or k)", flush=True)
        shutil.rmtree(split_dir)


def splits_to_compute(out: Path, inputs: dict[str, dict[str, Any]], overwrite: bool) -> list[str]:
    """The splits of ``inputs`` (split -> what makes its cache, :data:`lskd.topk_cache.INPUTS`) to
    compute: with ``overwrite`` all of them, else those without a finished cache in ``out``. A finished
    cache made from the same inputs is kept; one made from other inputs is refused, naming what changed,
    and so is one whose arrays do not match its manifest."""
    if overwrite:
        return list(inputs)
    todo, changed = [], []
    for split, expected in inputs.items():
        if not (out / split / MANIFEST).is_file():
            todo.append(split)
            continue
        differences = changed_inputs(TopKCache(out / split).manifest, expected)  # TopKCache checks the arrays
        if differences:
            changed.append(f"{out / split} was made from other inputs: {', '.join(differences)}")
    if changed:
        them = "it" if len(changed) == 1 else "them"
        raise TopKCacheError(f"{'; '.join(changed)}; pass --overwrite to recompute {them}, or choose another --out")
    return todo


def replace_damaged_splits(out: Path, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, delete) splits in ``out`` whose manifest cannot be read: whose
    cache they are is unknown, and without this --overwrite could not replace them."""
    for manifest in sorted(out.glob(f"*/{MANIFEST}")):
        try:
            read_json(manifest, required=("k", "teacher_sha256"),
                      advice=f"the split's manifest is damaged: pass --overwrite to replace {manifest.parent}, "
                             f"or choose another --out")
        except RecordError as error:
            if not overwrite:
                raise TopKCacheError(str(error)) from error
            print(f"[lskd-dump-topk] removing {manifest.parent} (its {MANIFEST} is damaged)", flush=True)
            shutil.rmtree(manifest.parent)


def check_binarized_dictionaries(data: Path, source_lang: str | None, target_lang: str | None) -> None:
    """``data`` must hold fairseq's ``dict.LANG.txt`` for the languages asked for: fairseq otherwise
    fails with a traceback ("Could not infer language pair", a FileNotFoundError) naming no fix."""
    languages = sorted(path.name[len("dict."):-len(".txt")] for path in data.glob("dict.*.txt"))
    if not languages:
        hint = f"give its binarized data, {data / 'bin'}" if (data / "bin").is_dir() else \
            "give fairseq-binarized data (dict.LANG.txt, SPLIT.SRC-TGT.*), e.g. PREP_DIR/bin"
        raise TopKCacheError(f"{data} holds no fairseq dictionaries; {hint}")
    for flag, lang in (("--source-lang", source_lang), ("--target-lang", target_lang)):
        if lang is not None and lang not in languages:
            raise TopKCacheError(f"{flag} {lang}: {data / f'dict.{lang}.txt'} does not exist; {data} has "
                                 f"dictionaries for {', '.join(languages)}")


def print_skipped(split: str, manifest: dict) -> None:
    """Say which sentences have no entry, and what fairseq-train needs to leave the same ones out."""
    skipped, limits = manifest["skipped"], manifest["too_long"]
    if not skipped["count"]:
        return
    flags = f"--max-source-positions {limits['max_source_positions']} --max-target-positions {limits['max_target_positions']}"
    validation = " --skip-invalid-size-inputs-valid-test" if split != "train" else ""
    print(f"{split}: {skipped['count']} sentences skipped, too long ({skipped['reason']}): ids "
          f"{name_ids(skipped['ids'])}; train the student with {flags}{validation} so that fairseq-train leaves "
          f"out the same ones")


if __name__ == "__main__":
    sys.exit(main())
