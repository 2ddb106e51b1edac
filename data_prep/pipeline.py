"""Raw parallel text -> normalised text -> SentencePiece pieces -> fairseq binarized data.

Every corpus (the embedded Bible, IWSLT'14, a user's own files) goes through this one function, so
one ``prep.json`` says exactly which inputs, options, vocabulary and tool versions produced it. The
vocabulary is either made here (a joint SentencePiece model and one joined dictionary, shared by
the teachers and students trained on it) or an existing teacher's (its SentencePiece model and its
dictionaries, joined or separate, taken as they are): a student distilled from that teacher then
sees its pieces and its token ids.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from lskd.corpus import CorpusError, has_visible_text, read_lines, read_parallel, write_lines
from lskd.errors import LSKDError
from lskd.output_files import check_writable
from lskd.provenance import RecordError, provenance, read_json, sha256_file, write_json

if TYPE_CHECKING:  # the adapter imports fairseq: only when a teacher's vocabulary is used
    from fairseq_plugins.teacher_vocabulary import TeacherVocabulary

SPLITS = ("train", "valid", "test")
#: SentencePiece's word-boundary mark: it stands for a space and prints nothing itself.
SPM_WORD_BOUNDARY = "\u2581"
#: What this pipeline writes inside the output directory; anything else there is left alone.
OUTPUTS = ("raw", "norm", "spm", "bin", "spm.model", "spm.vocab", "prep.json", "prep.pending.json")
#: Above this share of pieces mapped to ``<unk>`` in a split, the vocabulary does not fit the text: warn.
UNK_WARNING_SHARE = 0.01


@dataclass(frozen=True)
class PrepOptions:
    """Options that change the produced data (they are part of the output's fingerprint).

    ``vocab_size`` and ``spm_model_type`` describe the SentencePiece model trained here; both are
    None when the vocabulary is a teacher's.
    """

    src: str
    tgt: str
    vocab_size: int | None = 8000
    spm_model_type: str | None = "unigram"
    normalize_punctuation: bool = True

    def __post_init__(self) -> None:
        """Refuse one language on both sides: each side's files are named ``SPLIT.LANG``, so the
        target's would overwrite the source's and the pairs would silently be target-target."""
        if self.src == self.tgt:
            raise CorpusError(f"source and target language are both {self.src!r}: they must differ "
                              f"(each side's files are named SPLIT.{self.src}, one would overwrite the other)")


def prepare_parallel(
    inputs: Mapping[str, tuple[str | Path, str | Path]],
    out_dir: str | Path,
    options: PrepOptions,
    *,
    vocabulary: TeacherVocabulary | None = None,
    overwrite: bool = False,
    workers: int = 2,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build binarized data for ``inputs`` (split name -> (source file, target file)) in ``out_dir``.

    With ``vocabulary`` (a teacher's), the text is encoded with its SentencePiece model (copied to
    ``spm.model``) and binarized with its dictionaries, which ``bin/`` then holds byte for byte;
    otherwise a joint SentencePiece model of ``options.vocab_size`` pieces is trained here.
    Returns the ``prep.json`` record. An ``out_dir`` already prepared from the same inputs, options
    and vocabulary is left as it is; one prepared from anything else is refused unless
    ``overwrite``; one where a preparation failed is taken over.
    """
    missing = [name for name in SPLITS if name not in inputs]
    if missing:
        raise CorpusError(f"missing split(s): {', '.join(missing)}; train, valid and test are required")
    _check_vocabulary_options(options, vocabulary)
    missing_pieces = None
    if vocabulary:
        from fairseq_plugins.teacher_vocabulary import check_pieces_fit_dictionaries

        missing_pieces = check_pieces_fit_dictionaries(vocabulary)
    out = Path(out_dir)
    splits = {name: read_parallel(name, *inputs[name]) for name in SPLITS}
    input_files = _describe_input_files(inputs)
    vocabulary_record = vocabulary.record() | {"pieces_missing_from_dictionary": missing_pieces} if vocabulary else None
    fingerprint = _fingerprint(input_files, options, vocabulary_record)

    if _claim_out_dir(out, fingerprint, overwrite) == "done":
        record = read_json(out / "prep.json")
        print(f"[lskd-prepare] {out} is already prepared from these inputs; nothing to do.")
        return record

    langs = (options.src, options.tgt)
    raw = {(split.name, lang): lines for split in splits.values() for lang, lines in zip(langs, (split.source, split.target))}
    print("[lskd-prepare] normalising punctuation", flush=True)
    normalised = {(name, lang): normalise(lines, lang, options.normalize_punctuation) for (name, lang), lines in raw.items()}

    if vocabulary:
        print(f"[lskd-prepare] encoding with the teacher's SentencePiece model {vocabulary.spm_model}", flush=True)
        model = _copy_sentencepiece_model(vocabulary.spm_model, out)
    else:
        print(f"[lskd-prepare] training joint SentencePiece ({options.spm_model_type}, {options.vocab_size})", flush=True)
        model = _train_sentencepiece([normalised["train", lang] for lang in langs], out, options, inputs["train"])
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

    joined = vocabulary.joined if vocabulary else True
    print(f"[lskd-prepare] binarizing with fairseq-preprocess ({'joined' if joined else 'separate'} "
          f"{'dictionary' if joined else 'dictionaries'}{' of the teacher' if vocabulary else ''})", flush=True)
    _binarize(out, options, workers, vocabulary)
    counts = _check_binarized_counts(out, options, {name: len(rows) for name, rows in kept.items()})
    unknown = _unknown_pieces(out, options)

    record = {
        "fingerprint": fingerprint,
        "inputs": {
            name: {**input_files[name], "lines": len(splits[name].source), "dropped_pairs": dropped[name],
                   "kept_pairs": len(kept[name])}
            for name in SPLITS
        },
        "options": asdict(options),
        "vocabulary": {"origin": "teacher", **vocabulary_record} if vocabulary else {"origin": "trained"},
        "outputs": {
            "spm_model": "spm.model",
            "spm_model_sha256": sha256_file(out / "spm.model"),
            "spm_vocab_size": model.get_piece_size(),
            "bin_dir": "bin",
            "joined_dictionary": joined,
            "dict_sha256": sha256_file(out / "bin" / f"dict.{options.tgt}.txt"),
            "src_dict_sha256": sha256_file(out / "bin" / f"dict.{options.src}.txt"),
            "binarized_sentences": counts,
            "unk": unknown,
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


def _check_vocabulary_options(options: PrepOptions, vocabulary: TeacherVocabulary | None) -> None:
    """A SentencePiece model to train needs a size and a type; a teacher's vocabulary takes neither."""
    if vocabulary is not None:
        if options.vocab_size is not None or options.spm_model_type is not None:
            raise CorpusError("the vocabulary is the teacher's: a SentencePiece vocabulary size or model type "
                              "cannot be chosen with it (leave out --vocab-size and --spm-model-type)")
    elif options.vocab_size is None or options.spm_model_type is None:
        raise CorpusError("a SentencePiece model is trained here: give its vocabulary size and model type")
    elif options.vocab_size < 16:
        raise CorpusError(f"vocabulary size {options.vocab_size} is too small (need at least 16)")


def _describe_input_files(inputs: Mapping[str, tuple[str | Path, str | Path]]) -> dict:
    return {
        name: {
            side: {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}
            for side, path in zip(("source", "target"), inputs[name])
        }
        for name in SPLITS
    }


def encoded_has_text(encoded: str) -> bool:
    """Whether SentencePiece pieces carry text: something that prints besides the word-boundary mark."""
    return has_visible_text(encoded.replace(SPM_WORD_BOUNDARY, ""))


def _pairs_with_text(source: list[str], target: list[str]) -> tuple[list[int], dict[str, int]]:
    """Indices of the pairs whose two encoded sides both carry text, and the others counted by reason.

    A side is judged on its SentencePiece pieces, which fairseq-preprocess binarizes: it is empty
    when nothing in them prints but the word-boundary mark ``▁`` (pieces that fairseq's
    ``tokenize_line`` splits away as whitespace print nothing either). So a side that becomes
    empty only in normalisation (a zero-width space, a control character, a byte-order mark) is
    dropped, not trained on as an end-of-sentence-only sentence.
    """
    kept, dropped = [], {"empty_source": 0, "empty_target": 0, "empty_both": 0}
    for index, (src, tgt) in enumerate(zip(source, target)):
        src_ok, tgt_ok = encoded_has_text(src), encoded_has_text(tgt)
        if src_ok and tgt_ok:
            kept.append(index)
        else:
            dropped["empty_target" if src_ok else "empty_source" if tgt_ok else "empty_both"] += 1
    return kept, dropped


def _fingerprint(input_files: dict, options: PrepOptions, vocabulary: dict[str, Any] | None) -> str:
    """Identity of a preparation: input contents, options and the contents of a teacher's vocabulary
    (paths do not matter)."""
    key: dict[str, Any] = {
        "inputs": {name: [rec["source"]["sha256"], rec["target"]["sha256"]] for name, rec in input_files.items()},
        "options": asdict(options),
    }
    if vocabulary:
        key["vocabulary"] = [vocabulary[name]["sha256"] for name in ("spm_model", "src_dict", "tgt_dict")]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _claim_out_dir(out: Path, fingerprint: str, overwrite: bool) -> str:
    """Decide whether ``out`` is done, free, or someone else's; mark it as ours ("pending").

    A directory where a preparation started but never finished (``prep.pending.json``, no
    ``prep.json``) holds nothing complete: a rerun, with corrected inputs or options, takes it over.
    """
    done = out / "prep.json"
    pending = out / "prep.pending.json"
    if _recorded_fingerprint(done, overwrite) == fingerprint and not overwrite:
        return "done"
    check_writable(out)  # a read-only or full disk: one line naming it, before anything is removed or written
    ours = pending.exists() and not done.exists()
    if ours and _recorded_fingerprint(pending, True) != fingerprint:
        print(f"[lskd-prepare] {out} holds an unfinished preparation: starting it again", flush=True)
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


def _recorded_fingerprint(record: Path, replaceable: bool) -> str | None:
    """The fingerprint in ``record`` (None if it is absent). A damaged record (cut short, not an
    object) is refused naming it, as the data beside it cannot be trusted, unless ``replaceable``:
    then it is no one's and counts as absent."""
    if not record.exists():
        return None
    try:
        return read_json(record, advice=f"the record is damaged: pass --overwrite to replace it and the data "
                                        f"prepared in {record.parent}, or choose another directory").get("fingerprint")
    except RecordError:
        if replaceable:
            return None
        raise


def normalise(lines: list[str], lang: str, enabled: bool) -> list[str]:
    """Moses punctuation normalisation for ``lang`` (sacremoses) when ``enabled``; surrounding space stripped."""
    normaliser = punctuation_normaliser(lang, enabled)
    return [normaliser(line) for line in lines]


def punctuation_normaliser(lang: str, enabled: bool) -> Callable[[str], str]:
    """:func:`normalise` of one line, built once (a teacher's outputs are normalised one at a time)."""
    if not enabled:
        return str.strip
    from sacremoses import MosesPunctNormalizer

    normalizer = MosesPunctNormalizer(lang=lang)
    return lambda line: normalizer.normalize(line).strip()


def _train_sentencepiece(train_sides: list[list[str]], out: Path, options: PrepOptions,
                         train_files: tuple[str | Path, str | Path]):
    """Train the joint model on the normalised training text; write ``spm.model``/``spm.vocab`` in ``out``.

    It sees every training line read, including the partner of a side found empty afterwards (that
    judgement needs this model's encoding); SentencePiece itself skips empty lines. What
    SentencePiece refuses (a vocabulary smaller than the text's characters, no text) is a
    :class:`CorpusError` naming the training files.
    """
    import sentencepiece as spm

    try:
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
    except RuntimeError as err:
        raise CorpusError(f"SentencePiece cannot train a {options.spm_model_type} model of {options.vocab_size} "
                          f"pieces on {' and '.join(map(str, train_files))}: {_sentencepiece_reason(str(err))}") from err
    return spm.SentencePieceProcessor(model_file=str(out / "spm.model"))


def _sentencepiece_reason(message: str) -> str:
    """SentencePiece's own words without its source location and failed assertion, and the fix."""
    reason = re.sub(r"^[A-Z_]+: \S+\(\d+\) \[.*?\] ?", "", message).strip()
    sizes = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", reason)
    if sizes:
        return (f"the training text holds {int(sizes[2]) - 3} distinct characters, and with <unk>, <s> and </s> "
                f"the vocabulary needs at least {sizes[2]} pieces: give --vocab-size {sizes[2]} or more")
    return reason or "no training text"


def _copy_sentencepiece_model(model: Path, out: Path):
    """The teacher's SentencePiece model, copied to ``out/spm.model`` where every LSKD tool looks."""
    import sentencepiece as spm

    shutil.copyfile(model, out / "spm.model")
    return spm.SentencePieceProcessor(model_file=str(out / "spm.model"))


def _binarize(out: Path, options: PrepOptions, workers: int, vocabulary: TeacherVocabulary | None) -> None:
    """fairseq-preprocess the encoded splits: one joined dictionary built here, or the teacher's
    dictionaries as they are (checked, and kept in ``bin/`` byte for byte)."""
    bin_dir = out / "bin"
    if vocabulary is None:
        dictionaries = ["--joined-dictionary"]
    elif vocabulary.joined:
        dictionaries = ["--joined-dictionary", "--srcdict", str(vocabulary.src_dict)]
    else:
        dictionaries = ["--srcdict", str(vocabulary.src_dict), "--tgtdict", str(vocabulary.tgt_dict)]
    command = [
        "--source-lang", options.src, "--target-lang", options.tgt,
        "--trainpref", str(out / "spm" / "train"),
        "--validpref", str(out / "spm" / "valid"),
        "--testpref", str(out / "spm" / "test"),
        "--destdir", str(bin_dir),
        *dictionaries,
        "--workers", str(workers),
    ]
    run_preprocess(command, bin_dir)
    if vocabulary is not None:
        _keep_teacher_dictionaries(bin_dir, options, vocabulary)


class PreprocessError(LSKDError, RuntimeError):
    """fairseq-preprocess failed: its last line and where its whole log is."""


def run_preprocess(arguments: list[str], bin_dir: Path) -> None:
    """Run ``fairseq-preprocess ARGUMENTS`` (``--destdir`` among them, ``bin_dir``), its output in
    ``bin_dir/preprocess.stdout``; a failure is a :class:`PreprocessError` naming its last line and the log."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "preprocess.stdout"
    with open(log, "w", encoding="utf-8") as handle:
        result = subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", *arguments], stdout=handle,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise PreprocessError(f"fairseq-preprocess failed (exit {result.returncode}): "
                              f"{lines[-1].strip() if lines else 'no output'}; full log: {log}")


def _keep_teacher_dictionaries(bin_dir: Path, options: PrepOptions, vocabulary: TeacherVocabulary) -> None:
    """``bin/dict.*.txt`` must be the teacher's dictionaries. fairseq-preprocess rewrites them from
    the loaded symbols (same symbols, same order); where its writing differs from the file (a
    ``#fairseq:overwrite`` flag, other spacing), the teacher's own bytes are put back."""
    from fairseq.data import Dictionary

    for lang, original in ((options.src, vocabulary.src_dict), (options.tgt, vocabulary.tgt_dict)):
        written = bin_dir / f"dict.{lang}.txt"
        if Dictionary.load(str(written)).symbols != Dictionary.load(str(original)).symbols:
            raise RuntimeError(f"fairseq-preprocess wrote {written} with other symbols than {original}")
        if sha256_file(written) != sha256_file(original):
            shutil.copyfile(original, written)


def _unknown_pieces(out: Path, options: PrepOptions) -> dict[str, dict[str, dict[str, Any]]]:
    """Per split and side, the binarized pieces that the dictionary maps to ``<unk>``; a share above
    :data:`UNK_WARNING_SHARE` is a warning (the vocabulary does not fit this text)."""
    from fairseq_plugins.teacher_vocabulary import unk_share

    found: dict[str, dict[str, dict[str, Any]]] = {}
    for name in SPLITS:
        found[name] = {}
        for side, lang in (("source", options.src), ("target", options.tgt)):
            dictionary = out / "bin" / f"dict.{lang}.txt"
            unknown, total = unk_share(read_lines(out / "spm" / f"{name}.{lang}"), dictionary)
            found[name][side] = unknown_pieces_record(unknown, total, f"{name} {side}", dictionary)
    return found


def unknown_pieces_record(unknown: int, total: int, what: str, dictionary: Path,
                          prog: str = "lskd-prepare") -> dict[str, Any]:
    """``{"unk", "pieces", "share"}`` of a text (``what``, e.g. ``train source``) whose ``total`` pieces
    hold ``unknown`` that ``dictionary`` maps to ``<unk>``; a share above :data:`UNK_WARNING_SHARE` is a
    warning on stderr, from ``prog`` (the vocabulary does not fit this text)."""
    share = unknown / max(total, 1)
    if share > UNK_WARNING_SHARE:
        print(f"[{prog}] warning: {share:.1%} of the {what} pieces ({unknown} of {total}) map to "
              f"<unk> in {dictionary}: the vocabulary does not cover this text well", file=sys.stderr, flush=True)
    return {"unk": unknown, "pieces": total, "share": round(share, 6)}


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
