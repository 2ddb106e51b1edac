"""Checkpoints load under torch.load's safe default; a pickled code payload is refused, unexecuted."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

import argparse

import fairseq_plugins  # noqa: F401  (what fairseq imports for --user-dir fairseq_plugins)
from fairseq_plugins.checkpoint import load_fairseq_checkpoint
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
    with pytest.raises(CheckpointError, match="junk.pt is unreadable as a torch checkpoint") as err:
        load_checkpoint(junk)
    assert not isinstance(err.value, UnsafeCheckpointError)
