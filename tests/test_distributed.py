"""fairseq's own distributed training with the KD criterion: 2 CPU processes (gloo) under torchrun."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_TRANSFORMER

REPO = Path(__file__).resolve().parent.parent


def logged_losses(output: str) -> list[tuple[int, float, float]]:
    """(update, loss, kd_loss) from fairseq's json train_inner lines."""
    rows = []
    for line in output.splitlines():
        if "train_inner" in line and "{" in line:
            record = json.loads(line[line.index("{"):])
            rows.append((int(record["num_updates"]), float(record["loss"]), float(record["kd_loss"])))
    return rows


def test_torchrun_flags_need_torchrun():
    from fairseq_plugins.torchrun_train import torchrun_flags

    with pytest.raises(SystemExit, match="run me under torchrun"):
        torchrun_flags({"RANK": "0"})
    flags = torchrun_flags({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "x", "MASTER_PORT": "1"})
    assert flags[flags.index("--distributed-rank") + 1] == "1" and "--distributed-no-spawn" in flags


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_batches(bible_slice, trained_checkpoint, tmp_path):
    common = [str(bible_slice / "bin"), "--user-dir", str(REPO / "fairseq_plugins"), "--cpu", *TINY_TRANSFORMER,
              "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "512",
              "--required-batch-size-multiple", "1", "--max-update", "3", "--seed", "1", "--num-workers", "0",
              "--log-format", "json", "--log-interval", "1", "--disable-validation", "--no-save",
              "--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1",
              "--kd-alpha", "0.5", "--teacher-path", str(trained_checkpoint)]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    # each of the 2 workers takes every other batch; one process accumulating 2 batches sees the same pairs
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                          "fairseq_plugins.torchrun_train", *common, "--distributed-backend", "gloo",
                          "--ddp-backend", "legacy_ddp"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "fairseq_cli.train", *common, "--update-freq", "2"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    distributed, single = logged_losses(two.stdout + two.stderr), logged_losses(one.stdout + one.stderr)
    assert [u for u, _, _ in single] == [1, 2, 3]
    assert "distributed init (rank 1)" in two.stdout + two.stderr
    assert [u for u, _, _ in distributed] == [1, 2, 3]
    flat = [value for row in distributed for value in row[1:]]
    assert flat == pytest.approx([value for row in single for value in row[1:]], abs=2e-3)  # logs keep 3 decimals
