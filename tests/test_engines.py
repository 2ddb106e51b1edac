"""Two decoding engines behind one interface: fairseq in-process and CTranslate2 on an lskd-export."""
import io
import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_module, train_tiny
from lskd.corpus import iter_lines
from lskd.ctranslate2_engine import ExportMismatchError, ExportedModel
from lskd.decoding import (DecodingOptions, EngineError, EngineSettings, available_cores, length_batches,
                           max_target_tokens, pieces_to_text, refuse_ensemble, set_decoder_threads)
from lskd.prepared import PreparedData
from lskd.speed import evenly_spaced, peak_resident_mb, percentile


# ---- fast: the pieces the engines share ----------------------------------------------------------------------

def test_length_batches_hold_every_id_once_shortest_first_within_both_caps():
    rng = random.Random(0)
    lengths = [rng.randint(1, 30) for _ in range(200)]
    ids = list(range(0, 200, 3))
    batches = length_batches(ids, lengths, batch_size=8, max_tokens=100)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == ids
    assert [lengths[i] for i in flat] == sorted(lengths[i] for i in ids)
    assert all(len(b) <= 8 and len(b) * max(lengths[i] for i in b) <= 100 for b in batches if len(b) > 1)
    assert length_batches([4, 0, 2, 3], [9, 0, 9, 1, 9], batch_size=2) == [[3, 4], [0, 2]]  # ties keep their order


def test_the_length_limit_and_detokenization_are_fairseqs():
    from fairseq.data.data_utils import post_process

    assert max_target_tokens(DecodingOptions(max_len_a=1.2, max_len_b=10), 7) == int(1.2 * 7 + 10)
    for pieces in ("▁In ▁the ▁begin ning ▁was ▁the ▁Word .", "▁<unk> ▁x", "a ▁b", ""):
        assert pieces_to_text(pieces) == post_process(pieces, "sentencepiece")


def test_speed_statistics_match_numpy():
    import numpy as np

    values = [random.Random(1).random() for _ in range(37)]
    for q in (0, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert evenly_spaced(879, 5) == [0, 220, 439, 658, 878] and evenly_spaced(3, 10) == [0, 1, 2]
    assert peak_resident_mb() > 1


def test_speed_children_give_mkl_one_thread_under_ctranslate2_and_all_under_fairseq(monkeypatch):
    # CTranslate2 runs N batches on one core each: MKL splitting each small product too made one
    # sentence 3x slower at 2 threads (25 ms -> 85 ms)
    import eval.speed

    seen = {}

    def fake_run(command, env, **kwargs):
        seen[json.loads(command[-1])["spec"]] = (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"])
        return subprocess.CompletedProcess(command, 0, stdout="{}\n", stderr="")

    monkeypatch.setattr(eval.speed.subprocess, "run", fake_run)
    for spec in ("fairseq", "ct2-int8"):
        eval.speed._run_child({"spec": spec, "threads": 2})
    assert seen == {"fairseq": ("2", "2"), "ct2-int8": ("2", "1")}


def test_decoding_commands_give_ctranslate2_one_mkl_thread_and_fairseq_its_torch_threads(monkeypatch):
    # a launcher's MKL_NUM_THREADS=2 (recipes/lib.sh exports it for fairseq-train) made one sentence
    # 80 ms instead of 25 under CTranslate2 at 2 threads; both decoding commands reset it before opening
    import argparse

    import data_prep.distill
    import eval.cli
    import fairseq_plugins.decoding
    import lskd.decoding

    seen = []

    def record_environment(*args, **kwargs):
        seen.append(os.environ["MKL_NUM_THREADS"])
        return {"scores": {}, "warnings": []}

    monkeypatch.setattr(eval.cli, "evaluate", record_environment)
    monkeypatch.setattr(fairseq_plugins.decoding, "open_engine", record_environment)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(f"torch {n}"))
    monkeypatch.setattr(lskd.decoding, "available_cores", lambda: 8)  # 3 threads on any machine
    for engine, threads in (("ctranslate2", "2"), ("fairseq", "3")):
        monkeypatch.setenv("MKL_NUM_THREADS", "2")
        assert eval.cli.main(["bleu", "--checkpoint", "c.pt", "--data", "d", "--out", "o", "--engine", engine,
                              "--threads", threads]) == 0
        monkeypatch.setenv("MKL_NUM_THREADS", "2")
        data_prep.distill._open_engine(EngineSettings(engine=engine, threads=int(threads)), None, "train",
                                       argparse.Namespace(teacher_path="t.pt", batch_size=4),
                                       data_prep.distill.DistillOptions())
    assert seen == ["1", "1", "torch 3", "2", "torch 3", "2"]
    monkeypatch.setenv("MKL_NUM_THREADS", "4")
    set_decoder_threads(EngineSettings(engine="ctranslate2", device="cuda"))  # MKL is the CPU's
    assert os.environ["MKL_NUM_THREADS"] == "4"


def test_bad_engine_settings_are_refused():
    with pytest.raises(EngineError, match="belong to --engine ctranslate2"):
        EngineSettings(engine="fairseq", quantization="int8")
    with pytest.raises(EngineError, match="unknown engine"):
        EngineSettings(engine="marian")
    with pytest.raises(EngineError, match="n-best"):
        DecodingOptions(beam=2, nbest=3)
    cores = available_cores()
    with pytest.raises(EngineError, match=f"--threads -1: give thread counts from 1 to the {cores} cores this process"):
        EngineSettings(engine="ctranslate2", threads=-1)
    with pytest.raises(EngineError, match=f"--threads {cores + 1}: give thread counts from 1 to the {cores} cores"):
        EngineSettings(engine="ctranslate2", threads=cores + 1)  # 100000 aborted CTranslate2 with no message
    assert EngineSettings(engine="ctranslate2", threads=cores).resolved_threads == cores
    with pytest.raises(EngineError, match="--max-len-a -1 --max-len-b 10: the length limit"):
        DecodingOptions(max_len_a=-1)
    with pytest.raises(EngineError, match="must allow a target token for every source"):
        DecodingOptions(max_len_a=0, max_len_b=0)
    assert max_target_tokens(DecodingOptions(max_len_a=0.5, max_len_b=0), 2) == 1  # the smallest limit accepted
    with pytest.raises(EngineError, match="--batch-size 0 must be at least 1"):
        DecodingOptions(batch_size=0)
    with pytest.raises(EngineError, match="--max-batch-tokens 0 must be at least 1"):
        DecodingOptions(max_batch_tokens=0)
    with pytest.raises(EngineError, match="the fairseq engine .* averages ensembles"):
        refuse_ensemble("a.pt:b.pt")
    refuse_ensemble("a.pt")


@pytest.mark.parametrize("flags,message", [
    (["--threads", "1", "-1"], f"--threads 1 -1: give thread counts from 1 to the {available_cores()} cores this "
                               f"process may use, or 0 for all of them"),
    (["--threads", "100000"], f"--threads 100000: give thread counts from 1 to the {available_cores()} cores this "
                              f"process may use, or 0 for all of them"),
    (["--latency-sentences", "0"], "--latency-sentences 0: the p50/p90 latency needs at least one sentence"),
])
def test_speed_refuses_bad_counts_before_any_work(tmp_path, capsys, flags, message):
    # before: --latency-sentences 0 translated the whole split, then failed on "percentile of no values"
    from eval.cli import main as eval_main

    assert eval_main(["speed", "--checkpoint", str(tmp_path / "teacher.pt"), "--data", str(tmp_path / "data"),
                      "--out", str(tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"lskd-eval: error: {message}"
    assert not (tmp_path / "out").exists()


def test_parameters_count_tied_embeddings_once():
    from fairseq_plugins.ctranslate2_export import count_parameters

    module = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    module[1].weight = module[0].weight  # tied, as --share-all-embeddings does
    state = module.state_dict() | {"encoder.version": torch.tensor([3])}
    assert count_parameters(state) == sum(p.numel() for p in module.parameters()) == 10 * 4 + 10


def fake_export(root, checkpoint_sha="a" * 64, dictionary_sha="d" * 64):
    record = {"checkpoint": {"path": "/runs/teacher.pt", "sha256": checkpoint_sha}, "quantization": "int8",
              "dictionaries": {"de": {"path": "/data/bin/dict.de.txt", "sha256": dictionary_sha}},
              "model": {"max_source_positions": 1024, "max_target_positions": 1024, "parameters": 10},
              "size_bytes": {"total": 5}}
    return ExportedModel(root, record)


def test_an_export_for_another_checkpoint_or_vocabulary_is_refused_naming_both(tmp_path):
    from lskd.provenance import sha256_file

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dict.de.txt").write_text("▁the 5\n")
    data = PreparedData(tmp_path, {"options": {"src": "de", "tgt": "en"}, "outputs": {"bin_dir": "bin"}})
    with pytest.raises(ExportMismatchError, match=r"exported from /runs/teacher.pt \(sha256 aaaaaaaaaaaa\), "
                                                  r"not from other.pt \(sha256 bbbbbbbbbbbb\)"):
        fake_export(tmp_path).check_checkpoint("other.pt", "b" * 64)
    ours = sha256_file(tmp_path / "bin" / "dict.de.txt")
    with pytest.raises(ExportMismatchError, match=rf"vocabulary /data/bin/dict.de.txt \(sha256 dddddddddddd\), "
                                                  rf"but the data's is {tmp_path}/bin/dict.de.txt \(sha256 {ours[:12]}\)"):
        fake_export(tmp_path).check_vocabulary(data)
    fake_export(tmp_path, dictionary_sha=ours).check_vocabulary(data)  # the same vocabulary passes


def test_an_unsafe_checkpoint_is_refused_before_the_converter_sees_it(tmp_path, capsys):
    from eval.export import main as export_main
    from test_safe_loading import malicious_checkpoint

    marker, checkpoint = tmp_path / "payload-ran", tmp_path / "evil.pt"
    malicious_checkpoint(checkpoint, marker)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prep.json").write_text(json.dumps({
        "options": {"src": "de", "tgt": "en"}, "fingerprint": "f" * 64,
        "outputs": {"bin_dir": "bin", "spm_model": "spm.model", "binarized_sentences": {"test": 1}}}))
    assert export_main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "out")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---- slow: a tiny model that has learnt to stop (reverse a few words), decoded by both engines --------------

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon".split()


@pytest.fixture(scope="module")
def reversal(tmp_path_factory):
    """Prepared data of a toy task (reverse 2-7 words) and a tiny model trained on it for 100 updates: its
    hypotheses end with </s> well before the length limit, so the engines can be compared word for word."""
    root = tmp_path_factory.mktemp("reversal")
    rng = random.Random(0)
    for split, count in (("train", 2000), ("valid", 50), ("test", 60)):
        sources = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) for _ in range(count)]
        (root / f"{split}.de").write_text("\n".join(sources) + "\n")
        (root / f"{split}.en").write_text("\n".join(" ".join(s.split()[::-1]) for s in sources) + "\n")
    data = root / "data"
    run_module("data_prep.cli", "text", "--src", "de", "--tgt", "en", "--train", str(root / "train"),
               "--valid", str(root / "valid"), "--test", str(root / "test"), "--out", str(data), "--vocab-size", "60")
    log = train_tiny(data / "bin", root / "model", "--criterion", "label_smoothed_cross_entropy",
                     "--label-smoothing", "0.1", "--lr", "1e-2", updates=100)
    parameters = int(re.search(r"num. shared model params: ([\d,]+)", log.stdout + log.stderr).group(1).replace(",", ""))
    return data, root / "model" / "checkpoint_last.pt", parameters


def translate(engine_name, data_dir, checkpoint, split, quantization=None, threads=1, **options):
    from fairseq_plugins.decoding import open_engine
    from lskd.prepared import load_prepared

    data = load_prepared(data_dir)
    settings = EngineSettings(engine_name, threads=threads, quantization=quantization)
    engine = open_engine(settings, data, split, str(checkpoint), DecodingOptions(batch_size=16, **options))
    hypotheses = engine.translate(range(data.sentences(split)))
    return [hypotheses[i][0].pieces for i in range(data.sentences(split))]


def fairseq_generate(data_dir, checkpoint, split, beam):
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.generate", str(data_dir / "bin"), "--user-dir", str(REPO / "fairseq_plugins"),
         "--path", str(checkpoint), "--gen-subset", split, "--beam", str(beam), "--batch-size", "16",
         "--required-batch-size-multiple", "1", "--max-len-a", "1.2", "--max-len-b", "10", "--post-process", "sentencepiece", "--cpu", "--num-workers", "0"],
        capture_output=True, check=True)
    return dict((int(line.split("\t")[0][2:]), line.split("\t")[2])
                for line in iter_lines(io.BytesIO(result.stdout), "fairseq-generate output") if line.startswith("D-"))


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 5])
def test_the_fairseq_engine_gives_fairseq_generates_output_exactly(reversal, bible_slice, trained_checkpoint, beam):
    # the Bible model has had 4 updates: its hypotheses run to the length limit, which depends on the
    # longest source of the batch, so they differ unless the batches are fairseq-generate's
    for data, checkpoint in ((reversal[0], reversal[1]), (bible_slice, trained_checkpoint)):
        ours = [pieces_to_text(p) for p in translate("fairseq", data, checkpoint, "valid", beam=beam)]
        generated = fairseq_generate(data, checkpoint, "valid", beam)
        assert ours == [generated[i] for i in range(len(ours))]


@pytest.mark.slow
def test_ctranslate2_float32_translates_as_fairseq_does(reversal):
    data, checkpoint, _ = reversal
    for options in ({"beam": 1}, {"beam": 5, "lenpen": 0.0}):  # exact: see lskd.ctranslate2_engine
        fairseq = translate("fairseq", data, checkpoint, "test", **options)
        assert translate("ctranslate2", data, checkpoint, "test", **options) == fairseq, options
        # two threads: the 4 batches of 16 are translated two at a time, and still come back in order
        assert translate("ctranslate2", data, checkpoint, "test", threads=2, **options) == fairseq, options
    fairseq, ours = (translate(e, data, checkpoint, "test", beam=5, lenpen=1.0) for e in ("fairseq", "ctranslate2"))
    assert sum(a == b for a, b in zip(fairseq, ours)) >= 0.95 * len(fairseq)


@pytest.mark.slow
def test_export_records_what_it_is_and_int8_loads_and_translates(reversal, tmp_path):
    from eval.export import main as export_main
    from lskd.ctranslate2_engine import load_export
    from lskd.provenance import sha256_file

    data, checkpoint, parameters = reversal
    for quantization in ("float32", "int8"):
        out = tmp_path / quantization
        assert export_main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                            "--quantization", quantization]) == 0
        model = load_export(out)
        assert model.checkpoint_sha256 == sha256_file(checkpoint) and model.quantization == quantization
        assert model.parameters == parameters  # what fairseq-train logged
        assert model.size_bytes == sum(p.stat().st_size for p in out.iterdir() if p.name != "export.json")
        assert (out / "sentencepiece.model").read_bytes() == (data / "spm.model").read_bytes()
        assert model.record["data"]["fingerprint"] == json.loads((data / "prep.json").read_text())["fingerprint"]
    # int8 weights, float32 per-row scales, biases and norms: at 32 dimensions that is ~0.7 of float32
    assert load_export(tmp_path / "int8").record["size_bytes"]["model_bin"] < \
        0.8 * load_export(tmp_path / "float32").record["size_bytes"]["model_bin"]
    float32 = translate("fairseq", data, checkpoint, "test", beam=5)
    int8 = translate("ctranslate2", data, checkpoint, "test", quantization="int8", beam=5)
    # int8 flips near-ties of this 32-dimension model, and how many depends on the processor's int8 kernels:
    # 29 of 60 identical on an AMD EPYC machine (2026-12-08), with the code of 03aed80 too, against >= 48
    # on the machines before; the check is that the int8 export translates every sentence, mostly alike
    assert len(int8) == 60 and all(int8) and sum(a == b for a, b in zip(float32, int8)) >= 0.4 * len(int8)


@pytest.mark.slow
def test_export_refuses_to_replace_another_export_or_foreign_files(reversal, trained_checkpoint, bible_slice, tmp_path, capsys):
    from eval.export import main as export_main

    data, checkpoint, _ = reversal
    out = tmp_path / "export"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]
    assert export_main(args) == 0 and export_main(args) == 0  # the same export again: nothing to do
    assert export_main(args + ["--quantization", "int8"]) == 2
    assert f"{out} holds another export ({checkpoint}" in capsys.readouterr().err
    assert export_main(args + ["--quantization", "int8", "--overwrite"]) == 0
    assert json.loads((out / "export.json").read_text())["quantization"] == "int8"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert export_main(args[:-1] + [str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "is not a CTranslate2 export" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()
    (out / "export.json").write_text('{"checkpoint": ')  # a damaged record: named, and --overwrite replaces it
    assert export_main(args) == 2
    assert f"{out / 'export.json'}: not a readable JSON record" in capsys.readouterr().err
    assert export_main(args + ["--overwrite"]) == 0 and json.loads((out / "export.json").read_text())["quantization"] == "float32"
    other_vocabulary = ["--checkpoint", str(trained_checkpoint), "--data", str(data), "--out", str(tmp_path / "other")]
    assert export_main(other_vocabulary) == 2  # the converter's state-dict traceback before
    err = capsys.readouterr().err
    assert f"{trained_checkpoint} has" in err and "give the --data the checkpoint was trained on" in err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_an_architecture_ctranslate2_cannot_run_is_a_clear_error(trained_checkpoint, bible_slice, tmp_path, capsys):
    from eval.export import main as export_main
    from fairseq_plugins.checkpoint import load_fairseq_checkpoint

    state = load_fairseq_checkpoint(trained_checkpoint)
    state["cfg"]["model"].decoder_attention_heads = 4  # encoder has 2: CTranslate2 needs them equal
    torch.save(state, tmp_path / "odd.pt")
    assert export_main(["--checkpoint", str(tmp_path / "odd.pt"), "--data", str(bible_slice),
                        "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot be converted to CTranslate2" in err and "attention-heads" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.slow
def test_eval_bleu_with_each_engine_and_the_refusals(reversal, bible_slice, second_checkpoint, tmp_path, capsys):
    from eval.cli import main as eval_main

    data, checkpoint, _ = reversal
    base = ["bleu", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path), "--beam", "2"]
    assert eval_main(base) == 0 and eval_main(base + ["--engine", "ctranslate2", "--quantization", "int8"]) == 0
    fairseq = json.loads((tmp_path / "bleu-test.json").read_text())
    int8 = json.loads((tmp_path / "bleu-test-ctranslate2-int8.json").read_text())
    assert fairseq["engine"]["name"] == "fairseq" and int8["engine"]["name"] == "ctranslate2-int8"
    assert int8["engine"]["model"] == str((checkpoint.parent / "checkpoint_last.ctranslate2-int8").resolve())
    assert int8["hypotheses_file"].endswith("test-ctranslate2-int8.hyp.en") and int8["sentences"] == 60
    capsys.readouterr()
    export = checkpoint.parent / "checkpoint_last.ctranslate2-int8"
    assert eval_main(["bleu", "--checkpoint", str(checkpoint), "--data", str(bible_slice), "--out", str(tmp_path),
                      "--engine", "ctranslate2", "--ctranslate2-model", str(export)]) == 2
    assert f"exported with the vocabulary {data.resolve()}/bin/dict.de.txt" in capsys.readouterr().err
    assert eval_main(["bleu", "--checkpoint", str(second_checkpoint), "--data", str(data), "--out", str(tmp_path),
                      "--engine", "ctranslate2", "--ctranslate2-model", str(export)]) == 2
    assert f"not from {second_checkpoint}" in capsys.readouterr().err
    assert eval_main(["bleu", "--checkpoint", f"{checkpoint}:{checkpoint}", "--data", str(data), "--out", str(tmp_path),
                      "--engine", "ctranslate2"]) == 2
    assert "the fairseq engine (--engine fairseq) averages ensembles" in capsys.readouterr().err


@pytest.mark.slow
def test_speed_measures_each_engine_in_its_own_process(reversal, tmp_path):
    from eval.cli import main as eval_main

    data, checkpoint, parameters = reversal
    assert eval_main(["speed", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path),
                      "--engines", "fairseq", "ct2-int8", "--threads", "1", "--beam", "2",
                      "--latency-sentences", "5"]) == 0
    record = json.loads((tmp_path / "speed-test.json").read_text())
    assert [(r["engine"], r["threads"]) for r in record["runs"]] == [("fairseq", 1), ("ct2-int8", 1)]
    fairseq, int8 = record["runs"]
    assert fairseq["source_words"] == sum(len(line.split()) for line in (data / "raw" / "test.de").read_text().splitlines())
    assert int8["latency_ms"]["sentences"] == 5 and int8["latency_ms"]["p50"] <= int8["latency_ms"]["p90"]
    # the CTranslate2 process loads neither torch nor fairseq: a fraction of fairseq's memory
    assert int8["peak_resident_mb"] < 0.5 * fairseq["peak_resident_mb"]
    assert record["engines"]["fairseq"]["parameters"] == record["engines"]["ct2-int8"]["parameters"] == parameters
    assert record["engines"]["fairseq"]["identical_to_fairseq"] == 1.0
    assert record["engines"]["ct2-int8"]["bleu"]["signature"].startswith("nrefs:1")
    assert record["checkpoint"]["sha256"] and "VmHWM" in record["measurement"]
