"""Checkpoints load under torch.load's safe default; a pickled code payload is refused, unexecuted."""
import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

import fairseq_plugins  # noqa: F401  (what fairseq imports for --user-dir fairseq_plugins)
from fairseq_plugins.checkpoint import load_fairseq_checkpoint
from conftest import run_module, train_tiny
from lskd.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint

MARKER_ENV = "LSKD_TEST_PAYLOAD_MARKER"


class Payload:
    """Unpickling this would create a file: proof that the payload ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(path, marker):
    torch.save({"model": {"w": torch.zeros(2)}, "args": Payload(str(marker))}, path)
    assert not marker.exists()  # saving does not run it


def test_fairseq_state_loads_safely_and_the_core_alone_does_not_allow_it(tmp_path):
    path = tmp_path / "fairseq-like.pt"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(arch="transformer")}, path)
    assert load_fairseq_checkpoint(path)["args"].arch == "transformer"
    # fairseq's own loaders (fairseq-generate, a resumed fairseq-train) still find it allowed afterwards
    assert argparse.Namespace in torch.serialization.get_safe_globals()
    # lskd's core allows no fairseq class by itself: that is the adapter's to say
    core_only = subprocess.run([sys.executable, "-c", f"from lskd.checkpoint import load_checkpoint; "
                                f"load_checkpoint({str(path)!r})"], capture_output=True, text=True)
    assert "UnsafeCheckpointError" in core_only.stderr and "argparse.Namespace" in core_only.stderr


@pytest.mark.slow
def test_fairseq_train_checkpoint_loads_with_weights_only(trained_checkpoint):
    state = load_fairseq_checkpoint(trained_checkpoint)
    assert "model" in state and any(k.startswith("encoder.") for k in state["model"])
    # and through fairseq's own loader, which calls torch.load without weights_only
    from fairseq import checkpoint_utils

    fairseq_state = checkpoint_utils.load_checkpoint_to_cpu(str(trained_checkpoint))
    assert fairseq_state["cfg"]["criterion"]["_name"] == "label_smoothed_cross_entropy"


def test_payload_is_refused_with_clear_error_and_not_run(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    malicious_checkpoint(path, marker)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*evil.pt.*Nothing from it was executed"):
        load_fairseq_checkpoint(path)
    assert not marker.exists()


def test_fairseq_loader_also_refuses_the_payload(tmp_path):
    from fairseq import checkpoint_utils

    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    malicious_checkpoint(path, marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.slow
def test_generate_loads_checkpoint_without_environment_override(trained_checkpoint, bible_slice):
    """fairseq-generate with --user-dir fairseq_plugins loads the checkpoint: no env var needed."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.generate", str(bible_slice / "bin"), "--path", str(trained_checkpoint),
         "--user-dir", os.path.join(repo, "fairseq_plugins"), "--gen-subset", "valid", "--beam", "1",
         "--max-len-b", "3", "--batch-size", "64", "--required-batch-size-multiple", "1", "--cpu"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    hypotheses = [line for line in result.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 110  # every Ruth + Philemon verse, none dropped


def test_junk_file_is_reported_as_unreadable_not_unsafe(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"checkpoint .*junk.pt is unreadable \(corrupt, or not a torch "
                                              r"checkpoint\): Unsupported operand 110$") as err:
        load_checkpoint(junk)
    assert not isinstance(err.value, UnsafeCheckpointError)


def fairseq_eval_bleu_state(**extra_state) -> dict:
    """The shape of a checkpoint fairseq-train writes with ``--eval-bleu``: its BLEU meters sum numpy arrays."""
    bleu_meter = {"val": np.array([20, 16, 12, 8]), "sum": np.array([542, 432, 324, 216]), "count": 20, "round": None}
    metrics = OrderedDict(valid=[(10, "loss", "AverageMeter", {"val": torch.tensor(9.7), "sum": torch.tensor(97.0),
                                                               "count": 10, "round": 3}),
                                 (10, "_bleu_counts", "AverageMeter", bleu_meter)])
    return {"model": OrderedDict(w=torch.ones(2)), "args": None, "cfg": {"task": {"data": "bin"}},
            "extra_state": {"metrics": metrics, "val_loss": 0.0, **extra_state}}


@pytest.mark.parametrize("values", [
    {},  # the integer arrays of the BLEU meters
    {"best": np.float64(12.5), "val_loss": np.float32(3.25)},  # numpy scalars
    {"flags": np.array([True, False]), "lengths": np.array([1, 2], dtype=np.int32), "half": np.float16(0.5),
     "counts": np.array([[1, 2]], dtype=np.uint8)},  # the other numeric dtypes
])
def test_numpy_arrays_and_scalars_load_with_weights_only(tmp_path, values):
    path = tmp_path / "eval-bleu.pt"
    torch.save(fairseq_eval_bleu_state(**values), path)
    state = load_fairseq_checkpoint(path)
    meter = state["extra_state"]["metrics"]["valid"][1][3]
    np.testing.assert_array_equal(meter["sum"], [542, 432, 324, 216])
    for key, value in values.items():
        loaded = state["extra_state"][key]
        assert type(loaded) is type(value) and np.array_equal(loaded, value)


def test_a_refusal_names_the_global_and_where_it_sits(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    state = fairseq_eval_bleu_state()
    state["extra_state"]["metrics"]["valid"].append((10, "x", "AverageMeter", {"val": Payload(str(marker))}))
    torch.save(state, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_fairseq_checkpoint(path)
    message = str(err.value)
    assert "io.open (at extra_state.metrics.valid[2][3].val)" in message, message
    assert "weights_only=False" not in message and "TORCH_FORCE" not in message and "add_safe_globals" not in message
    assert not marker.exists()


def test_an_object_array_is_refused_naming_its_class(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save(fairseq_eval_bleu_state(names=np.array(["a", None], dtype=object)), path)
    with pytest.raises(UnsafeCheckpointError, match="ObjectDType"):
        load_fairseq_checkpoint(path)


#: fairseq's IWSLT example's options (with a beam and length fit for a 4-update model), two validations
#: so that --keep-best-checkpoints and --patience have a history.
EVAL_BLEU_OPTIONS = ("--eval-bleu", "--eval-bleu-remove-bpe", "sentencepiece", "--eval-bleu-detok", "space",
                     "--eval-bleu-args", '{"beam": 1, "max_len_b": 5}', "--best-checkpoint-metric", "bleu",
                     "--maximize-best-checkpoint-metric", "--keep-best-checkpoints", "2", "--patience", "3",
                     "--validate-interval-updates", "2")
#: Each set of stock fairseq options that LSKD's loaders allow, as fairseq-train writes it on CPU (``--fp16``
#: itself needs CUDA; --memory-efficient-fp16 writes the same loss-scale state).
STOCK_OPTIONS = {
    "eval-bleu+keep-best+patience": EVAL_BLEU_OPTIONS,
    "amp+ema": ("--amp", "--store-ema", "--ema-start-update", "0"),
    "memory-efficient-fp16+ema-fp32": ("--memory-efficient-fp16", "--store-ema", "--ema-fp32", "--ema-start-update", "0"),
}


def train_with(options, bible_slice, save_dir):
    train_tiny(bible_slice / "bin", save_dir, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing",
               "0.1", *options)
    return save_dir


@pytest.fixture(scope="session")
def eval_bleu_run(bible_slice, tmp_path_factory):
    """A save directory written by fairseq-train with fairseq's IWSLT example options."""
    return train_with(EVAL_BLEU_OPTIONS, bible_slice, tmp_path_factory.mktemp("eval-bleu"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STOCK_OPTIONS))
def test_stock_fairseq_checkpoints_load_and_resume(name, bible_slice, eval_bleu_run, tmp_path):
    from fairseq_plugins.checkpoint import describe_checkpoint

    save_dir = eval_bleu_run if name.startswith("eval-bleu") else train_with(STOCK_OPTIONS[name], bible_slice, tmp_path)
    checkpoints = sorted(save_dir.glob("*.pt"))
    assert len(checkpoints) >= 2  # checkpoint_last, checkpoint_best (and checkpoint.best_bleu_*.pt)
    for path in checkpoints:
        assert load_fairseq_checkpoint(path)["extra_state"]["train_iterator"]["epoch"] == 1
        assert describe_checkpoint(path)["criterion"] == "label_smoothed_cross_entropy"
    if name.startswith("eval-bleu"):
        meters = {m[1]: m[3] for m in load_fairseq_checkpoint(save_dir / "checkpoint_last.pt")["extra_state"]["metrics"]["valid"]}
        assert isinstance(meters["_bleu_totals"]["sum"], np.ndarray)  # what made these checkpoints refused
    resumed = tmp_path / "resumed"
    shutil.copytree(save_dir, resumed)
    log = train_tiny(bible_slice / "bin", resumed, "--criterion", "label_smoothed_cross_entropy",
                     "--label-smoothing", "0.1", *STOCK_OPTIONS[name], updates=5)
    assert "Loaded checkpoint" in log.stdout + log.stderr and "num_updates=5" in log.stdout + log.stderr


@pytest.mark.slow
def test_an_eval_bleu_checkpoint_serves_every_lskd_tool(eval_bleu_run, bible_slice, tmp_path):
    """lskd-eval bleu, the KD criterion's --teacher-path and lskd-dump-topk all read it."""
    checkpoint = eval_bleu_run / "checkpoint_last.pt"
    run_module("eval.cli", "bleu", "--checkpoint", str(checkpoint), "--data", str(bible_slice), "--split", "valid",
               "--beam", "1", "--out", str(tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "bleu-valid.json").read_text())["sentences"] == 110
    train_tiny(bible_slice / "bin", tmp_path / "student", "--criterion", "label_smoothed_cross_entropy_with_kd",
               "--teacher-path", str(checkpoint), "--kd-alpha", "0.5", updates=1)
    assert (tmp_path / "student" / "checkpoint_last.pt").is_file()
    run_module("data_prep.dump_topk", str(bible_slice / "bin"), "--teacher-path", str(checkpoint), "--k", "4",
               "--splits", "valid", "--out", str(tmp_path / "topk"))
    assert json.loads((tmp_path / "topk" / "valid" / "manifest.json").read_text())["sentences"] == 110
