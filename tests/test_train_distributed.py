"""lskd-train under torchrun: 2 CPU processes on gloo; rank 0's metrics are the sum of both ranks' passes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lskd.metrics import CalibrationAccumulator, StabilityAccumulator
from lskd.train.trainer import load_trained_model
from lskd.vision.data import FASHION_MNIST_DIR, FASHION_MNIST_INSTALL, normalize, read_idx

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGES = 90  # odd per rank (45 each): the shards differ in content, not in size


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed: {FASHION_MNIST_INSTALL}")
@pytest.mark.slow  # seconds of subprocesses: keeps -m 'not slow' under a minute
def test_two_gloo_workers_train_and_rank_zero_reports_the_reduction_of_both_ranks(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lskd.train.cli",
               str(REPO / "configs" / "fmnist_teacher.yaml"), "--out-dir", str(tmp_path), "--set",
               "model.name=resnet8", "model.width=4", "data.train_limit=256", f"data.test_limit={TEST_IMAGES}",
               "data.batch_size=64", "data.eval_batch_size=32", "schedule.epochs=2", "device=cpu"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("epoch 2/2") == 1  # only rank 0 prints

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    record = json.loads((tmp_path / "eval" / "classification-test.json").read_text())
    assert record["system"]["world_size"] == 2 and len(list((tmp_path / "tensorboard").iterdir())) == 1
    assert [h["train"]["examples"] for h in metrics["history"]] == [256, 256]  # 128 per rank, summed
    reported = metrics["history"][-1]["eval"]
    assert reported == record["scores"]

    # each rank evaluated examples rank, rank + 2, ... with rank 0's final weights; redo both passes here
    model, _ = load_trained_model(tmp_path / "checkpoint_last.pt")
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", TEST_IMAGES).unsqueeze(1)
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", TEST_IMAGES).long()
    ranks = []
    for rank in range(2):
        shard_images, shard_labels = images[rank::2], labels[rank::2]
        with torch.no_grad():
            log_p = torch.cat([F.log_softmax(model(normalize(shard_images[i:i + 32], (0.2860,), (0.3530,))), -1)
                               for i in range(0, len(shard_labels), 32)])
        stability, calibration = StabilityAccumulator(10), CalibrationAccumulator(15)
        stability.update(log_p.exp(), shard_labels)
        calibration.update(log_p.exp(), shard_labels, log_p)
        ranks.append((stability, calibration, int((log_p.argmax(-1) == shard_labels).sum()),
                      float(-log_p.gather(1, shard_labels[:, None]).sum())))
    (stability, calibration, correct, nll), (other_s, other_c, other_correct, other_nll) = ranks
    for mine, theirs in zip(stability.state_tensors() + calibration.state_tensors(),
                            other_s.state_tensors() + other_c.state_tensors()):
        mine += theirs
    assert reported["examples"] == TEST_IMAGES
    assert reported["top1"] == pytest.approx(100 * (correct + other_correct) / TEST_IMAGES)
    assert reported["nll"] == pytest.approx((nll + other_nll) / TEST_IMAGES, rel=1e-5)
    assert reported["one_minus_s"] == pytest.approx(stability.result(), rel=1e-5)
    assert reported["ece_15_bins"] == pytest.approx(calibration.ece(), rel=1e-5, abs=1e-7)
    assert reported["mean_entropy"] == pytest.approx(calibration.mean_entropy(), rel=1e-5)
    # a rank-0-only pass would differ: the reduction is what made these numbers
    assert ranks[0][2] * 100 / 45 != pytest.approx(reported["top1"]) or ranks[0][3] / 45 != pytest.approx(reported["nll"])
