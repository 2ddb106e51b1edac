"""Raw parallel text -> normalised text -> joint SentencePiece -> fairseq binarized data.

Every corpus (the embedded Bible, IWSLT'14, a user's own files) goes through this one function, so
teacher and student data always share one joined dictionary and one ``prep.json`` says exactly
which inputs, options and tool versions produced it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from lskd.corpus import CorpusError, ParallelSplit, read_parallel, write_lines
from lskd.provenance import provenance, sha256_file, write_json

SPLITS = ("train", "valid", "test")
#: What this pipeline writes inside the output directory; anything else there is left alone.
OUTPUTS = ("raw", "norm", "spm", "bin", "spm.model", "spm.vocab", "prep.json", "prep.pending.json")


@dataclass(frozen=True)
class PrepOptions:
    """Options that change the produced data (they are part of the output's fingerprint)."""

    src: str
    tgt: str
    vocab_size: int = 8000
    spm_model_type: str = "unigram"
    normalize_punctuation: bool = True


def prepare_parallel(
    inputs: Mapping[str, tuple[str | Path, str | Path]],
    out_dir: str | Path,
    options: PrepOptions,
    *,
    overwrite: bool = False,
    workers: int = 2,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build binarized data for ``inputs`` (split name -> (source file, target file)) in ``out_dir``.

    Returns the ``prep.json`` record. An ``out_dir`` already prepared from the same inputs and
    options is left as it is; one prepared from anything else is refused unless ``overwrite``.
    """
    missing = [name for name in SPLITS if name not in inputs]
    if missing:
        raise CorpusError(f"missing split(s): {', '.join(missing)}; train, valid and test are required")
    if options.vocab_size < 16:
        raise CorpusError(f"vocabulary size {options.vocab_size} is too small (need at least 16)")
    out = Path(out_dir)
    splits = {name: read_parallel(name, *inputs[name]) for name in SPLITS}
    input_record = _describe_inputs(inputs, splits)
    fingerprint = _fingerprint(input_record, options)

    if _claim_out_dir(out, fingerprint, overwrite) == "done":
        record = json.loads((out / "prep.json").read_text(encoding="utf-8"))
        print(f"[lskd-prepare] {out} is already prepared from these inputs; nothing to do.")
        return record

    langs = (options.src, options.tgt)
    for directory in ("raw", "norm", "spm"):
        (out / directory).mkdir(parents=True, exist_ok=True)
    for split in splits.values():
        write_lines(out / "raw" / f"{split.name}.{options.src}", split.source)
        write_lines(out / "raw" / f"{split.name}.{options.tgt}", split.target)

    print("[lskd-prepare] normalising punctuation", flush=True)
    normalised = {
        (split.name, lang): _normalise(lines, lang, options.normalize_punctuation)
        for split in splits.values()
        for lang, lines in zip(langs, (split.source, split.target))
    }
    for (name, lang), lines in normalised.items():
        write_lines(out / "norm" / f"{name}.{lang}", lines)

    print(f"[lskd-prepare] training joint SentencePiece ({options.spm_model_type}, {options.vocab_size})", flush=True)
    model = _train_sentencepiece([out / "norm" / f"train.{lang}" for lang in langs], out / "spm", options)
    for (name, lang), lines in normalised.items():
        write_lines(out / "spm" / f"{name}.{lang}", (" ".join(p) for p in model.encode(lines, out_type=str)))

    print("[lskd-prepare] binarizing with fairseq-preprocess (joined dictionary)", flush=True)
    _binarize(out, options, workers)
    counts = _check_binarized_counts(out, options, splits)

    record = {
        "fingerprint": fingerprint,
        "inputs": input_record,
        "options": asdict(options),
        "outputs": {
            "spm_model": "spm.model",
            "spm_model_sha256": sha256_file(out / "spm.model"),
            "spm_vocab_size": model.get_piece_size(),
            "bin_dir": "bin",
            "dict_sha256": sha256_file(out / "bin" / f"dict.{options.tgt}.txt"),
            "binarized_sentences": counts,
        },
        **provenance(),
    }
    if extra:
        record.update(extra)
    write_json(out / "prep.json", record)
    (out / "prep.pending.json").unlink(missing_ok=True)
    print(
        "[lskd-prepare] done: "
        + ", ".join(f"{name} {counts[name]}" for name in SPLITS)
        + f" sentence pairs; {sum(s.dropped_empty for s in splits.values())} empty-side pairs dropped"
        + f"; data in {out / 'bin'}",
        flush=True,
    )
    return record


def _describe_inputs(inputs: Mapping[str, tuple[str | Path, str | Path]], splits: dict[str, ParallelSplit]) -> dict:
    return {
        name: {
            "source": {"path": str(Path(inputs[name][0]).resolve()), "sha256": sha256_file(inputs[name][0])},
            "target": {"path": str(Path(inputs[name][1]).resolve()), "sha256": sha256_file(inputs[name][1])},
            "lines": len(split.source) + split.dropped_empty,
            "dropped_empty_pairs": split.dropped_empty,
            "kept_pairs": len(split.source),
        }
        for name, split in splits.items()
    }


def _fingerprint(input_record: dict, options: PrepOptions) -> str:
    """Identity of a preparation: input contents and options (paths do not matter)."""
    key = {
        "inputs": {name: [rec["source"]["sha256"], rec["target"]["sha256"]] for name, rec in input_record.items()},
        "options": asdict(options),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _claim_out_dir(out: Path, fingerprint: str, overwrite: bool) -> str:
    """Decide whether ``out`` is done, free, or someone else's; mark it as ours ("pending")."""
    done = out / "prep.json"
    pending = out / "prep.pending.json"
    if done.exists() and json.loads(done.read_text(encoding="utf-8")).get("fingerprint") == fingerprint:
        if not overwrite:
            return "done"
    ours = pending.exists() and json.loads(pending.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not ours and not overwrite:
        raise CorpusError(
            f"{out} already holds prepared data from different inputs or options "
            f"({', '.join(present)}); choose another directory or pass --overwrite"
        )
    for name in present:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(pending, {"fingerprint": fingerprint})
    return "fresh"


def _normalise(lines: list[str], lang: str, enabled: bool) -> list[str]:
    if not enabled:
        return [line.strip() for line in lines]
    from sacremoses import MosesPunctNormalizer

    normalizer = MosesPunctNormalizer(lang=lang)
    return [normalizer.normalize(line).strip() for line in lines]


def _train_sentencepiece(train_files: list[Path], prefix: Path, options: PrepOptions):
    """Train the joint model and move it to ``spm.model``/``spm.vocab`` beside the split folders."""
    import sentencepiece as spm

    model_prefix = prefix.parent / "spm"
    spm.SentencePieceTrainer.train(
        input=[str(f) for f in train_files],
        model_prefix=str(model_prefix),
        vocab_size=options.vocab_size,
        model_type=options.spm_model_type,
        character_coverage=1.0,
        # a small corpus may not support the requested size: take what it supports, and record it
        hard_vocab_limit=False,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=2,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=f"{model_prefix}.model")


def _binarize(out: Path, options: PrepOptions, workers: int) -> None:
    bin_dir = out / "bin"
    command = [
        sys.executable, "-m", "fairseq_cli.preprocess",
        "--source-lang", options.src, "--target-lang", options.tgt,
        "--trainpref", str(out / "spm" / "train"),
        "--validpref", str(out / "spm" / "valid"),
        "--testpref", str(out / "spm" / "test"),
        "--destdir", str(bin_dir),
        "--joined-dictionary",
        "--workers", str(workers),
    ]
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "preprocess.stdout"
    with open(log, "w", encoding="utf-8") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        raise RuntimeError("fairseq-preprocess failed:\n" + "\n".join(tail))


def _check_binarized_counts(out: Path, options: PrepOptions, splits: dict[str, ParallelSplit]) -> dict[str, int]:
    """Count sentences in the binarized files; every kept pair must be there, on both sides."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    counts = {}
    pair = f"{options.src}-{options.tgt}"
    for name, split in splits.items():
        for lang in (options.src, options.tgt):
            found = len(MMapIndexedDataset(str(out / "bin" / f"{name}.{pair}.{lang}")))
            if found != len(split.source):
                raise RuntimeError(
                    f"binarized {name}.{lang} holds {found} sentences but {len(split.source)} were written"
                )
        counts[name] = len(split.source)
    return counts
