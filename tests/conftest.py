"""Shared fixtures: a small real slice of the Bible corpus and a checkpoint written by fairseq-train."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parent.parent
#: A deliberately tiny Transformer: these fixtures test plumbing, not translation quality.
TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings",
]


def run_module(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` with this interpreter; fail the test with its output."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        pytest.fail(f"{module} {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def bible_slice(tmp_path_factory) -> Path:
    """The real Bible De-En data, training split cut to 300 verses (test and valid are whole)."""
    out = tmp_path_factory.mktemp("bible") / "de-en"
    run_module("data_prep.cli", "bible", "--out", str(out), "--limit-train", "300", "--vocab-size", "600")
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(bible_slice, tmp_path_factory) -> Path:
    """A checkpoint written by the real fairseq-train (4 updates of a tiny model)."""
    save_dir = tmp_path_factory.mktemp("ckpt")
    train_tiny(bible_slice / "bin", save_dir, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")
    return save_dir / "checkpoint_last.pt"


def train_tiny(data: Path, save_dir: Path, *extra: str, updates: int = 4, seed: int = 1,
               arch: Sequence[str] = TINY_TRANSFORMER) -> subprocess.CompletedProcess:
    """fairseq-train a tiny model (``arch``: its flags) for a few updates; returns the finished process
    (log in stdout/stderr)."""
    return run_module(
        "fairseq_cli.train", str(data), "--user-dir", str(REPO / "fairseq_plugins"),
        *arch, "--cpu", "--optimizer", "adam", "--lr", "1e-3",
        "--max-tokens", "1024", "--max-update", str(updates), "--required-batch-size-multiple", "1",
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--num-workers", "0", "--seed", str(seed),
        "--log-format", "simple", "--log-interval", "1", *extra,
    )


@pytest.fixture(scope="session")
def second_checkpoint(bible_slice, tmp_path_factory) -> Path:
    """Another teacher on the same data (no label smoothing, other seed): an ensemble partner."""
    save_dir = tmp_path_factory.mktemp("ckpt2")
    train_tiny(bible_slice / "bin", save_dir, "--criterion", "label_smoothed_cross_entropy",
               "--label-smoothing", "0", seed=2)
    return save_dir / "checkpoint_last.pt"
