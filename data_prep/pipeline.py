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

from lskd.corpus import CorpusError, has_visible_text, read_parallel, write_lines
from lskd.provenance import provenance, sha256_file, write_json

SPLITS = ("train", "valid", "test")
#: SentencePiece's word-boundary mark: it stands for a space and prints nothing itself.
SPM_WORD_BOUNDARY = "\u2581"
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
    input_files = _describe_input_files(inputs)
    fingerprint = _fingerprint(input_files, options)

    if _claim_out_dir(out, fingerprint, overwrite) == "done":
        record = json.loads((out / "prep.json").read_text(encoding="utf-8"))
        print(f"[lskd-prepare] {out} is already prepared from these inputs; nothing to do.")
        return record

    langs = (options.src, options.tgt)
    raw = {(split.name, lang): lines for split in splits.values() for lang, lines in zip(langs, (split.source, split.target))}
    print("[lskd-prepare] normalising punctuation", flush=True)
    normalised = {(name, lang): _normalise(lines, lang, options.normalize_punctuation) for (name, lang), lines in raw.items()}

    print(f"[lskd-prepare] training joint SentencePiece ({options.spm_model_type}, {options.vocab_size})", flush=True)
    model = _train_sentencepiece([normalised["train", lang] for lang in langs], out, options)
    encoded = {key: [" ".join(p) for p in model.encode(lines, out_type=str)] for key, lines in normalised.items()}

    kept, dropped = {}, {}
    for name in SPLITS:
        kept[name], dropped[name] = _pairs_with_text(encoded[name, options.src], encoded[name, options.tgt])
        if not kept[name]:
            raise CorpusError(f"{name} split is empty after dropping pairs with an empty side ({', '.join(map(str, inputs[name]))})")
    for directory, texts in (("raw", raw), ("norm", normalised), ("spm", encoded)):
        (out / directory).mkdir(parents=True, exist_ok=True)
        for (name, lang), lines in texts.items():
            write_lines(out / directory / f"{name}.{lang}", (lines[i] for i in kept[name]))

    print("[lskd-prepare] binarizing with fairseq-preprocess (joined dictionary)", flush=True)
    _binarize(out, options, workers)
    counts = _check_binarized_counts(out, options, {name: len(rows) for name, rows in kept.items()})

    record = {
        "fingerprint": fingerprint,
        "inputs": {
            name: {**input_files[name], "lines": len(splits[name].source), "dropped_pairs": dropped[name],
                   "kept_pairs": len(kept[name])}
            for name in SPLITS
        },
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
        + f" sentence pairs; {sum(sum(d.values()) for d in dropped.values())} pairs with an empty side dropped"
        + f"; data in {out / 'bin'}",
        flush=True,
    )
    return record


def _describe_input_files(inputs: Mapping[str, tuple[str | Path, str | Path]]) -> dict:
    return {
        name: {
            side: {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}
            for side, path in zip(("source", "target"), inputs[name])
        }
        for name in SPLITS
    }


def _pairs_with_text(source: list[str], target: list[str]) -> tuple[list[int], dict[str, int]]:
    """Indices of the pairs whose two encoded sides both carry text, and the others counted by reason.

    A side is judged on its SentencePiece pieces, which fairseq-preprocess binarizes: it is empty
    when nothing in them prints but the word-boundary mark ``▁`` (pieces that fairseq's
    ``tokenize_line`` splits away as whitespace print nothing either). So a side that becomes
    empty only in normalisation (a zero-width space, a control character, a byte-order mark) is
    dropped, not trained on as an end-of-sentence-only sentence.
    """

    def has_text(encoded: str) -> bool:
        return has_visible_text(encoded.replace(SPM_WORD_BOUNDARY, ""))

    kept, dropped = [], {"empty_source": 0, "empty_target": 0, "empty_both": 0}
    for index, (src, tgt) in enumerate(zip(source, target)):
        src_ok, tgt_ok = has_text(src), has_text(tgt)
        if src_ok and tgt_ok:
            kept.append(index)
        else:
            dropped["empty_target" if src_ok else "empty_source" if tgt_ok else "empty_both"] += 1
    return kept, dropped


def _fingerprint(input_files: dict, options: PrepOptions) -> str:
    """Identity of a preparation: input contents and options (paths do not matter)."""
    key = {
        "inputs": {name: [rec["source"]["sha256"], rec["target"]["sha256"]] for name, rec in input_files.items()},
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


def _train_sentencepiece(train_sides: list[list[str]], out: Path, options: PrepOptions):
    """Train the joint model on the normalised training text; write ``spm.model``/``spm.vocab`` in ``out``.

    It sees every training line read, including the partner of a side found empty afterwards (that
    judgement needs this model's encoding); SentencePiece itself skips empty lines.
    """
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=(line for side in train_sides for line in side),
        model_prefix=str(out / "spm"),
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
    return spm.SentencePieceProcessor(model_file=str(out / "spm.model"))


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


def _check_binarized_counts(out: Path, options: PrepOptions, expected: dict[str, int]) -> dict[str, int]:
    """Count sentences in the binarized files; every kept pair must be there, on both sides."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    pair = f"{options.src}-{options.tgt}"
    for name, count in expected.items():
        for lang in (options.src, options.tgt):
            found = len(MMapIndexedDataset(str(out / "bin" / f"{name}.{pair}.{lang}")))
            if found != count:
                raise RuntimeError(f"binarized {name}.{lang} holds {found} sentences but {count} were written")
    return dict(expected)
