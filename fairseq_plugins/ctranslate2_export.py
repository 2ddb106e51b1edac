"""Export a fairseq checkpoint to CTranslate2, through LSKD's safe loading, with a record of what it is.

CTranslate2's own converter (``ctranslate2.converters.FairseqConverter``) does the conversion, in
this process: it reads the checkpoint with ``torch.load(weights_only=True)``, which accepts
fairseq's checkpoint contents because importing this package registered them
(:mod:`fairseq_plugins.checkpoint`); its unsafe-deserialization switch is never used. The
checkpoint is first read with :func:`fairseq_plugins.checkpoint.load_fairseq_checkpoint`, so a
missing, corrupt or unsafe file gets LSKD's error message before the converter sees it.

An export directory holds the converter's files (``model.bin``, vocabularies, ``config.json``),
the data's SentencePiece model and ``export.json`` (:mod:`lskd.ctranslate2_engine` reads it):
checkpoint sha256, the dictionaries' and the data's fingerprints, quantization, parameter count,
bytes on disk and versions.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from fairseq_plugins.checkpoint import load_fairseq_checkpoint
from lskd.ctranslate2_engine import (EXPORT_JSON, SENTENCEPIECE_MODEL, ExportedModel, directory_bytes,
                                     load_export)
from lskd.decoding import QUANTIZATIONS, EngineError, refuse_ensemble
from lskd.output_files import changed_inputs, writer_lock
from lskd.prepared import PreparedData
from lskd.provenance import RecordError, provenance, sha256_file, write_json


class ExportError(EngineError):
    """A checkpoint that cannot be exported, or an output directory that must not be replaced."""


def count_parameters(model_state: dict[str, Any]) -> int:
    """Trainable parameters of a fairseq model state: floating-point tensors, each shared storage
    (tied embeddings) once, fairseq's bookkeeping buffers (``version``, ``_float_tensor``) left out.
    Equals the ``num. shared model params`` that ``fairseq-train`` logs."""
    seen, total = set(), 0
    for name, tensor in model_state.items():
        if name.endswith((".version", "._float_tensor")) or not tensor.is_floating_point():
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def _model_config(state: dict[str, Any]) -> Any:
    cfg = state.get("cfg") or {}
    return state.get("args") or (cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None))


def _positions(config: Any, name: str) -> int:
    value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
    return int(value or 1024)  # fairseq's default for the transformer and the translation task


def _identity(checkpoint_sha256: str, data: PreparedData, quantization: str) -> dict[str, Any]:
    """What makes two exports the same: every input of one, the checkpoint, the vocabulary (dictionaries
    and the SentencePiece model copied in) and the weight type. Not the prepared data's fingerprint: the
    prepared source text of a distillation and its corpus share one export (same vocabulary, other text)."""
    return {"checkpoint_sha256": checkpoint_sha256, "quantization": quantization,
            "dictionaries": {lang: sha256_file(data.dictionary(lang)) for lang in (data.src, data.tgt)},
            "sentencepiece_sha256": sha256_file(data.spm_model)}


def _identity_of(model: ExportedModel) -> dict[str, Any]:
    return {"checkpoint_sha256": model.checkpoint_sha256, "quantization": model.quantization,
            "dictionaries": {lang: d["sha256"] for lang, d in model.record["dictionaries"].items()},
            "sentencepiece_sha256": model.record.get("sentencepiece_model", {}).get("sha256")}


#: How a refusal names each part of an export's identity.
IDENTITY_LABELS = {"checkpoint_sha256": "the checkpoint's sha256", "quantization": "the quantization",
                   "dictionaries": "the dictionaries' sha256",
                   "sentencepiece_sha256": "the SentencePiece model's sha256"}


def _changes(existing: ExportedModel, wanted: dict[str, Any]) -> str:
    """What differs between an export and the one wanted, e.g. ``the checkpoint's sha256 (3f2a… -> 9c1b…)``."""
    return ", ".join(changed_inputs(_identity_of(existing), wanted, IDENTITY_LABELS))


def _convert(checkpoint: Path, data: PreparedData, out: Path, quantization: str) -> None:
    from ctranslate2.converters import FairseqConverter

    converter = FairseqConverter(str(checkpoint), str(data.bin_dir), source_lang=data.src, target_lang=data.tgt,
                                 unsafe_deserialization=False)  # safe loading: see the module docstring
    try:
        converter.convert(str(out), quantization=quantization, force=True)
    except (ValueError, NotImplementedError) as err:  # the converter's own check of the architecture
        raise ExportError(f"{checkpoint} cannot be converted to CTranslate2: {err}") from err


def export_checkpoint(checkpoint: str | Path, data: PreparedData, out: Path, quantization: str = "float32",
                      overwrite: bool = False) -> ExportedModel:
    """Convert ``checkpoint`` into ``out`` for ``data``'s vocabulary; returns the export.

    An ``out`` that already holds this very export is returned as it is. One that holds another
    export is an :class:`ExportError` unless ``overwrite``; a non-empty directory that is no export
    is always one (it is not ours to delete). The export is written beside ``out`` and renamed into
    place, so a killed export leaves nothing half-written and two processes may race for one ``out``.
    """
    refuse_ensemble(checkpoint, "lskd-export")
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    checkpoint = Path(checkpoint)
    state = load_fairseq_checkpoint(checkpoint)  # missing, corrupt, unsafe: LSKD's message
    _check_vocabulary_sizes(checkpoint, state, data)
    wanted = _identity(sha256_file(checkpoint), data, quantization)
    if (out / EXPORT_JSON).is_file():
        existing = _existing_export(out, overwrite)
        if existing is not None and _identity_of(existing) == wanted:
            return existing
        if existing is not None and not overwrite:
            raise ExportError(f"{out} holds another export ({existing.record['checkpoint']['path']}, sha256 "
                              f"{existing.checkpoint_sha256[:12]}, {existing.quantization}; changed: "
                              f"{_changes(existing, wanted)}): pass --overwrite to replace it, or choose another --out")
        if existing is not None:
            print(f"[lskd] {out} was exported from other inputs ({_changes(existing, wanted)}): exporting again",
                  file=sys.stderr, flush=True)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not a CTranslate2 export made by lskd-export: choose another --out")
    print(f"[lskd] exporting {checkpoint} to CTranslate2 ({quantization}): {out}", file=sys.stderr, flush=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        _convert(checkpoint, data, staging, quantization)
        shutil.copyfile(data.spm_model, staging / SENTENCEPIECE_MODEL)
        config = _model_config(state)
        record = {
            "checkpoint": {"path": str(checkpoint.resolve()), "sha256": wanted["checkpoint_sha256"],
                           "bytes": checkpoint.stat().st_size},
            "data": data.provenance(),
            "dictionaries": {lang: {"path": str(data.dictionary(lang).resolve()), "sha256": sha}
                             for lang, sha in wanted["dictionaries"].items()},
            "sentencepiece_model": {"file": SENTENCEPIECE_MODEL, "source": str(data.spm_model.resolve()),
                                    "sha256": sha256_file(data.spm_model)},
            "quantization": quantization,
            "model": {"parameters": count_parameters(state["model"]),
                      "arch": config.get("arch") if isinstance(config, dict) else getattr(config, "arch", None),
                      "max_source_positions": _positions(config, "max_source_positions"),
                      "max_target_positions": _positions(config, "max_target_positions")},
            **provenance(),
        }
        record["size_bytes"] = {"model_bin": (staging / "model.bin").stat().st_size,
                                "total": directory_bytes(staging)}  # export.json itself is not counted
        write_json(staging / EXPORT_JSON, record)
        _move_into_place(staging, out, wanted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_export(out)


def _check_vocabulary_sizes(checkpoint: Path, state: dict[str, Any], data: PreparedData) -> None:
    """Refuse a ``data`` whose dictionaries are not the size of the checkpoint's embeddings, before
    converting (the converter would stop with a state-dict size-mismatch traceback). Dictionaries of
    the same size but another order cannot be told apart here: their sha256s go into ``export.json``."""
    from fairseq.data import Dictionary

    for lang, side in ((data.src, "encoder"), (data.tgt, "decoder")):
        embedding = state["model"].get(f"{side}.embed_tokens.weight")
        size = len(Dictionary.load(str(data.dictionary(lang))))
        if embedding is not None and embedding.shape[0] != size:
            raise ExportError(f"{checkpoint} has {embedding.shape[0]} {side} embeddings, but {data.dictionary(lang)} "
                              f"holds {size} entries: give the --data the checkpoint was trained on")


def _existing_export(out: Path, overwrite: bool) -> ExportedModel | None:
    """The export in ``out``; None for one whose ``export.json`` is damaged, which ``overwrite`` replaces."""
    try:
        return load_export(out)
    except RecordError as error:
        if not overwrite:
            raise ExportError(f"{error}, or pass --overwrite to replace this export") from error
        return None


def _move_into_place(staging: Path, out: Path, wanted: dict[str, Any]) -> None:
    """Rename the finished export to ``out``; if another process got there first with the same export, keep theirs."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        shutil.rmtree(out)  # an export the caller allowed us to replace (checked above)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, out)
    except OSError:
        if not ((out / EXPORT_JSON).is_file() and _identity_of(load_export(out)) == wanted):
            raise


def export_beside(checkpoint: str | Path, data: PreparedData, quantization: str) -> ExportedModel:
    """The export of ``checkpoint`` kept next to it (``CKPT.ctranslate2-QUANT/``), made on first use:
    LSKD's cache for ``--engine ctranslate2``. It is reused only when its record matches every input
    (checkpoint, dictionaries, SentencePiece model, quantization: :func:`_identity`), else remade, saying
    what changed. One process at a time checks and makes it (a lock beside it); others wait, then reuse it."""
    refuse_ensemble(checkpoint)
    checkpoint = Path(checkpoint)
    out = checkpoint.parent / f"{checkpoint.stem}.ctranslate2-{quantization}"
    with writer_lock(checkpoint.parent, name=f".{out.name}.lock", wait=True):
        return export_checkpoint(checkpoint, data, out, quantization, overwrite=True)
