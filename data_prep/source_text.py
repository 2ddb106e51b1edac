"""Monolingual source text as a split a teacher can translate, prepared exactly as the corpus was.

Sequence-level KD draws most of a student's data from source text that has no translation: the
teacher translates it. ``lskd-distill-corpus --source-text FILE`` hands each file here. Its lines
are read as UTF-8 (a bad byte names file and line), normalised as ``lskd-prepare`` normalised the
corpus (the options in its ``prep.json``), encoded with the corpus's SentencePiece model and
binarized with the corpus's dictionaries, byte for byte, into a directory laid out as
``lskd-prepare`` lays one out (its split ``train``, with empty targets). Both decoding engines and
the resumable chunks of :mod:`data_prep.distill` then work on it as on any prepared split.

Every line is accounted for: kept (and translated), or empty after normalisation and encoding
(counted, not translated). Lines whose pieces equal a source of the corpus's training split are
counted too: they are kept, and with the parallel split included their pair appears twice.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.pipeline import encoded_has_text, normalise, run_preprocess
from lskd.corpus import CorpusError, read_lines, write_lines
from lskd.output_files import changed_inputs
from lskd.prepared import PREP_JSON, PreparedData, load_prepared
from lskd.provenance import sha256_file, write_json

#: The split of the prepared source text that holds the kept lines of every file, in order.
SPLIT = "train"


@dataclass(frozen=True)
class SourceTextFile:
    """One ``--source-text`` file: its identity and where each of its lines went.

    ``first_id``: the id (in :data:`SPLIT` of the prepared source text) of its first kept line;
    its kept lines are ``first_id .. first_id + kept - 1``.
    """

    path: str
    sha256: str
    lines: int
    empty: int
    kept: int
    in_training_sources: int
    first_id: int


def check_source_text(path: Path) -> str:
    """Read ``path`` through (UTF-8, a bad byte named by file and line; an empty file refused) and
    return its sha256: a bad file stops a distillation before anything is written."""
    if not read_lines(path):
        raise CorpusError(f"{path}: empty file: no source sentence to translate")
    return sha256_file(path)  # read once more: prepare_source_text reads the file only if it is not prepared yet


def source_text_fingerprint(data: PreparedData, files: list[Path]) -> str:
    """What the prepared source text depends on: the corpus's preparation and each file's content, in order."""
    digest = hashlib.sha256(data.fingerprint.encode())
    for path in files:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def prepare_source_text(data: PreparedData, files: list[Path], out: Path, workers: int = 1,
                        overwrite: bool = False) -> tuple[PreparedData, list[SourceTextFile]]:
    """Prepare ``files`` for translation in ``out`` (kept when already prepared from the same files
    and corpus, so that a resumed or sharded distillation reuses it); returns it and each file's account.
    The caller holds the only right to write ``out`` (a lock).

    Raises :class:`lskd.corpus.CorpusError` for a missing file, one with non-UTF-8 bytes (file and
    line), one without a line, or files that hold no line with text at all, and, unless ``overwrite``
    (which prepares it again), for an ``out`` prepared from other files or another corpus, naming which.
    """
    fingerprint = source_text_fingerprint(data, files)
    if (out / PREP_JSON).is_file():
        existing = load_prepared(out)
        if existing.fingerprint == fingerprint:
            return existing, [SourceTextFile(**f) for f in existing.record["source_text"]]
        if not overwrite:
            changed = changed_inputs(_inputs(existing.record), {"data": data.fingerprint,
                                                                "files": [sha256_file(path) for path in files]},
                                     {"data": "the prepared data's fingerprint",
                                      "files": "the --source-text files' sha256"})
            raise CorpusError(f"{out} holds source text prepared from other inputs: "
                              f"{', '.join(changed) or 'its fingerprint'}; pass --overwrite to start afresh")
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        accounts = _encode_files(data, files, staging)
        _binarize_sources(data, staging, workers)
        kept = sum(f.kept for f in accounts)
        record = {"fingerprint": fingerprint, "options": data.record["options"],
                  "source_text": [asdict(f) for f in accounts], "derived_from": data.provenance(),
                  "outputs": {"spm_model": str(data.spm_model.resolve()), "bin_dir": "bin",
                              "joined_dictionary": data.joined_dictionary, "binarized_sentences": {SPLIT: kept}}}
        write_json(staging / PREP_JSON, record)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_prepared(out), accounts


def _inputs(record: dict) -> dict:
    """What a prepared source text's ``prep.json`` says it was made from."""
    return {"data": record.get("derived_from", {}).get("fingerprint"),
            "files": [f.get("sha256") for f in record.get("source_text", [])]}


def _encode_files(data: PreparedData, files: list[Path], out: Path) -> list[SourceTextFile]:
    """Normalise and encode each file; write the kept lines (raw and pieces) to ``out``; account for all."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(data.spm_model))
    training_sources = set(read_lines(data.pieces("train", data.src)))
    normalize = bool(data.record["options"].get("normalize_punctuation", True))
    raw_kept: list[str] = []
    pieces_kept: list[str] = []
    accounts = []
    for path in files:
        lines = read_lines(path)
        if not lines:
            raise CorpusError(f"{path}: empty file: no source sentence to translate")
        encoded = [" ".join(p) for p in processor.encode(normalise(lines, data.src, normalize), out_type=str)]
        kept = [i for i, pieces in enumerate(encoded) if encoded_has_text(pieces)]
        accounts.append(SourceTextFile(
            path=str(Path(path).resolve()), sha256=sha256_file(path), lines=len(lines), empty=len(lines) - len(kept),
            kept=len(kept), in_training_sources=sum(encoded[i] in training_sources for i in kept),
            first_id=len(pieces_kept)))
        raw_kept += [lines[i] for i in kept]
        pieces_kept += [encoded[i] for i in kept]
    if not pieces_kept:
        raise CorpusError(f"no line of {', '.join(map(str, files))} has text after normalisation: nothing to translate")
    for directory in ("raw", "spm"):
        (out / directory).mkdir(parents=True, exist_ok=True)
    write_lines(out / "raw" / f"{SPLIT}.{data.src}", raw_kept)
    write_lines(out / "spm" / f"{SPLIT}.{data.src}", pieces_kept)
    write_lines(out / "spm" / f"{SPLIT}.{data.tgt}", ("" for _ in pieces_kept))  # no reference: end of sentence only
    return accounts


def _binarize_sources(data: PreparedData, out: Path, workers: int) -> None:
    """fairseq-preprocess the pieces with the corpus's dictionaries, which ``bin/`` then holds unchanged."""
    bin_dir = out / "bin"
    run_preprocess(["--source-lang", data.src, "--target-lang", data.tgt, "--trainpref", str(out / "spm" / SPLIT),
                    "--destdir", str(bin_dir), "--srcdict", str(data.dictionary(data.src)),
                    "--tgtdict", str(data.dictionary(data.tgt)), "--workers", str(workers)], bin_dir)
    for lang in (data.src, data.tgt):
        if sha256_file(bin_dir / f"dict.{lang}.txt") != sha256_file(data.dictionary(lang)):
            raise CorpusError(f"fairseq-preprocess rewrote {data.dictionary(lang)} as {bin_dir / f'dict.{lang}.txt'}")
