"""``lskd-eval speed``: how fast and how small a checkpoint is, with each engine, at 1 thread and at all cores.

Each engine (``fairseq``: beam search in fairseq; ``ct2-QUANT``: CTranslate2 on the checkpoint's
export with weight type QUANT) translates the split once per thread count, each time in a process
of its own (``python -m eval.speed JOB``) so that peak memory is that engine's alone
(:mod:`lskd.speed` says how every number is measured). The record ``speed-SPLIT.json`` holds, per
engine, parameters, bytes on disk, the BLEU of its output and the share of hypotheses identical to
the fairseq engine's, and per run, source words/s, sentences/s, latency p50/p90 and peak memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lskd.corpus import read_lines, write_lines
from lskd.decoding import (QUANTIZATIONS, DecodingOptions, EngineError, available_cores, check_cuda, check_threads,
                           is_too_long, pieces_to_text)
from lskd.errors import LSKDError, one_line
from lskd.output_files import check_writable
from lskd.prepared import PreparedData, load_prepared
from lskd.provenance import provenance, sha256_file, write_json

DEFAULT_ENGINES = ("fairseq", "ct2-float32", "ct2-int8")


def parse_engine(spec: str) -> tuple[str, str | None]:
    """``fairseq`` -> (fairseq, None); ``ct2-int8`` -> (ctranslate2, int8)."""
    if spec == "fairseq":
        return "fairseq", None
    quantization = spec.removeprefix("ct2-")
    if not spec.startswith("ct2-") or quantization not in QUANTIZATIONS:
        raise EngineError(f"engine {spec!r}: give fairseq or ct2-QUANT with QUANT one of {', '.join(QUANTIZATIONS)}")
    return "ctranslate2", quantization


def measure_speed(checkpoint: Path, data_dir: Path, split: str, out_dir: Path, options: DecodingOptions,
                  engines: list[str], threads: list[int], latency_sentences: int = 100, gpu: bool = False) -> dict[str, Any]:
    """Measure every engine at every thread count (0: all cores); write ``out_dir/speed-SPLIT.json``.

    Bad counts are an :class:`EngineError`, and a location where the record cannot be written an
    :class:`lskd.output_files.OutputError`, before any export or translation."""
    check_threads(threads)
    if checkpoint.is_dir():
        raise EngineError(f"{checkpoint} is a directory: lskd-eval speed measures fairseq checkpoints (a Hugging Face "
                          f"or CTranslate2 teacher's speed: benchmarks/hf_teacher.py; its BLEU: lskd-eval bleu)")
    if latency_sentences < 1:
        raise EngineError(f"--latency-sentences {latency_sentences}: the p50/p90 latency needs at least one sentence")
    specs = {spec: parse_engine(spec) for spec in dict.fromkeys(engines)}
    for engine in sorted({engine for engine, _ in specs.values()} if gpu else ()):
        check_cuda(engine)
    data = load_prepared(data_dir)  # bad input is reported before fairseq is imported (seconds)
    check_writable(out_dir)
    from eval.bleu import score
    from fairseq_plugins.checkpoint import load_fairseq_checkpoint
    from fairseq_plugins.ctranslate2_export import count_parameters, export_beside

    references = read_lines(data.raw(split, data.tgt))
    models = {spec: export_beside(checkpoint, data, q) for spec, (engine, q) in specs.items() if engine == "ctranslate2"}
    per_engine: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec in models:
            per_engine[spec] = {"parameters": models[spec].parameters, "size_bytes": models[spec].size_bytes,
                                "size_of": f"CTranslate2 export {models[spec].root}"}
        else:
            per_engine[spec] = {"parameters": count_parameters(load_fairseq_checkpoint(checkpoint)["model"]),
                                "size_bytes": checkpoint.stat().st_size,
                                "size_of": "the fairseq checkpoint file (optimizer state included if it was saved)"}
    runs = []
    for count in threads:
        for spec in specs:
            hypothesis_file = out_dir / f"speed-{split}-{spec}.hyp.{data.tgt}"
            job = {"spec": spec, "threads": count or available_cores(), "checkpoint": str(checkpoint), "data": str(data.root),
                   "split": split, "options": asdict(options), "latency_sentences": latency_sentences,
                   "model": str(models[spec].root) if spec in models else None, "gpu": gpu,
                   "hypotheses": str(hypothesis_file)}
            print(f"[lskd-eval speed] {spec}, {job['threads']} thread(s): translating {len(references)} sentences",
                  file=sys.stderr, flush=True)
            result = _run_child(job)
            runs.append({"engine": spec, "threads": job["threads"], **result})
            if "bleu" not in per_engine[spec]:
                hypotheses = read_lines(hypothesis_file)
                per_engine[spec] |= {"bleu": score(hypotheses, references)["bleu"],
                                     "hypotheses_file": str(hypothesis_file)}
    if "fairseq" in per_engine:
        fairseq_output = read_lines(per_engine["fairseq"]["hypotheses_file"])
        for spec, summary in per_engine.items():
            same = sum(a == b for a, b in zip(read_lines(summary["hypotheses_file"]), fairseq_output))
            summary["identical_to_fairseq"] = round(same / len(fairseq_output), 4)
    from lskd.speed import MEASUREMENT

    record = {
        "split": split, "sentences": len(references),
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
        "data": data.provenance(), "decoding": asdict(options), "device": "cuda" if gpu else "cpu",
        "cores": available_cores(), "engines": per_engine, "runs": runs, "measurement": MEASUREMENT, **provenance(),
    }
    write_json(out_dir / f"speed-{split}.json", record)
    return record


def _run_child(job: dict[str, Any]) -> dict[str, Any]:
    """One engine, one thread count, in a fresh process; its numbers, or an LSKDError with its message."""
    # CTranslate2 spreads its threads over batches, one core each; MKL_NUM_THREADS above 1 would also
    # split every small matrix product (the rule of lskd.decoding.set_decoder_threads, here for a child)
    mkl_threads = job["threads"] if job["spec"] == "fairseq" else 1
    environment = os.environ | {"OMP_NUM_THREADS": str(job["threads"]), "MKL_NUM_THREADS": str(mkl_threads)}
    result = subprocess.run([sys.executable, "-m", "eval.speed", json.dumps(job)], capture_output=True, text=True,
                            env=environment)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise LSKDError(f"{job['spec']} at {job['threads']} thread(s) failed: "
                        f"{one_line(lines[-1]) if lines else 'exit ' + str(result.returncode)}")
    return json.loads(result.stdout.splitlines()[-1])


def _open(job: dict[str, Any], data: PreparedData, options: DecodingOptions):
    device = "cuda" if job["gpu"] else "cpu"
    if job["spec"] == "fairseq":
        import torch

        from fairseq_plugins.decoding import FairseqEngine

        torch.set_num_threads(job["threads"])
        return FairseqEngine(data, job["split"], job["checkpoint"], options, device)
    from lskd.ctranslate2_engine import CTranslate2Engine, load_export  # no torch: a deployment's memory

    return CTranslate2Engine.on_split(load_export(job["model"]), data, job["split"], options, device=device,
                                      threads=job["threads"])


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Open one engine, measure it (:func:`lskd.speed.measure`), write its best hypotheses in id order."""
    import time

    from lskd.speed import measure

    data = load_prepared(job["data"])
    split = job["split"]
    began = time.perf_counter()
    engine = _open(job, data, DecodingOptions(**job["options"]))
    load_seconds = time.perf_counter() - began
    total = data.sentences(split)
    over = [i for i in range(total) if is_too_long(engine, i)]
    if over:
        raise LSKDError(f"{len(over)} sources of {split} are longer than the model accepts (ids {over[:20]})")
    words = [len(line.split()) for line in read_lines(data.raw(split, data.src))]
    numbers, hypotheses = measure(engine, list(range(total)), words, job["latency_sentences"])
    write_lines(job["hypotheses"], [pieces_to_text(hypotheses[i][0].pieces) for i in range(total)])
    return numbers | {"load_seconds": round(load_seconds, 2), "engine_details": engine.describe()}


if __name__ == "__main__":  # the measuring process started by measure_speed
    try:
        print(json.dumps(child(json.loads(sys.argv[1]))))
    except LSKDError as err:
        print(one_line(str(err)), file=sys.stderr)
        sys.exit(2)
