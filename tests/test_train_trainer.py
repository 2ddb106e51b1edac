"""The generic trainer on a real Fashion-MNIST slice: losses, evaluation, records, exact resume."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lskd.train.config import ConfigError, KDConfig, load_config
from lskd.train.trainer import Trainer, classification_loss, load_trained_model
from lskd.vision.data import FASHION_MNIST_DIR, FASHION_MNIST_INSTALL, normalize

needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed: {FASHION_MNIST_INSTALL}")
TINY = ["model.name=resnet8", "model.width=4", "data.train_limit=192", "data.test_limit=96", "data.batch_size=64",
        "data.eval_batch_size=64", "schedule.epochs=2", "optim.lr=0.05", "progress=false"]


def tiny(out_dir: Path, *overrides: str):
    return load_config(None, [*TINY, f"out_dir={out_dir}", *overrides])


def independent_kd(student, teacher, labels, alpha, temperature, eps):
    """(1 - alpha) * LS-CE(eps over C - 1 classes) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)), summed."""
    log_p = F.log_softmax(student.double(), -1)
    classes = student.shape[-1]
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    others = -log_p.sum(-1) - nll
    ls = ((1 - eps) * nll + eps / (classes - 1) * others).sum()
    if teacher is None:
        return ls
    kl = F.kl_div(F.log_softmax(student.double() / temperature, -1), F.log_softmax(teacher.double() / temperature, -1),
                  reduction="sum", log_target=True)
    return (1 - alpha) * ls + alpha * temperature ** 2 * kl


def test_teacher_loss_at_ls0_is_torch_cross_entropy_and_ls_follows_fairseqs_convention():
    torch.manual_seed(0)
    logits, labels = torch.randn(32, 10) * 3, torch.randint(0, 10, (32,))
    plain = classification_loss(logits, labels, None, KDConfig(), 0.0)
    torch.testing.assert_close(plain.loss, F.cross_entropy(logits, labels, reduction="sum"))
    smoothed = classification_loss(logits, labels, None, KDConfig(), 0.1)
    torch.testing.assert_close(smoothed.loss.double(), independent_kd(logits, None, labels, 0, 1, 0.1))


@pytest.mark.parametrize("alpha, temperature", [(1.0, 1.0), (0.5, 1.0), (1.0, 2.0), (0.3, 64.0)])
def test_student_loss_is_the_kd_formula(alpha, temperature):
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(32, 10) * 2, torch.randn(32, 10) * 4, torch.randint(0, 10, (32,))
    kd = KDConfig(teacher="t.pt", alpha=alpha, temperature=temperature)
    out = classification_loss(student, labels, teacher, kd, 0.1)
    torch.testing.assert_close(out.loss.double(), independent_kd(student, teacher, labels, alpha, temperature, 0.1),
                               rtol=1e-5, atol=1e-4)


def test_top_k_teacher_is_renormalised_over_its_k_best_classes():
    torch.manual_seed(2)
    student, teacher, labels = torch.randn(16, 10), torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    kd = KDConfig(teacher="t.pt", alpha=1.0, temperature=2.0, topk=3)
    out = classification_loss(student, labels, teacher, kd, 0.0)
    values, indices = teacher.topk(3, dim=-1)
    p_k = F.softmax(values.double() / 2, -1)  # renormalised over the k classes, at temperature T
    log_q = F.log_softmax(student.double() / 2, -1).gather(1, indices)
    expected = 4 * (p_k * (p_k.log() - log_q)).sum()
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-5)


def first_batch(trainer: Trainer):
    trainer.sampler.set_epoch(0)
    images, labels = next(iter(trainer.train_loader))
    return trainer.inputs(images), labels


@needs_fashion_mnist
def test_a_training_step_optimises_the_loss_the_formula_gives(tmp_path):
    teacher_run = Trainer(tiny(tmp_path / "teacher", "loss.label_smoothing=0"))
    inputs, labels = first_batch(teacher_run)
    expected = F.cross_entropy(copy.deepcopy(teacher_run.model).train()(inputs), labels, reduction="sum")
    out, _ = teacher_run.train_step(inputs, labels)
    torch.testing.assert_close(out.loss, expected)
    teacher_run.fit()

    checkpoint = tmp_path / "teacher" / "checkpoint_last.pt"
    student_run = Trainer(tiny(tmp_path / "student", f"kd.teacher={checkpoint}", "kd.alpha=0.7", "kd.temperature=3",
                               "loss.label_smoothing=0.1"))
    teacher = student_run.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    frozen = copy.deepcopy(teacher.state_dict())
    inputs, labels = first_batch(student_run)
    student_logits = copy.deepcopy(student_run.model).train()(inputs)
    expected = independent_kd(student_logits, teacher(inputs), labels, 0.7, 3.0, 0.1)
    out, _ = student_run.train_step(inputs, labels)
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-4)
    student_run.fit()
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())  # the teacher never moved
    record = json.loads((tmp_path / "student" / "eval" / "classification-test.json").read_text())
    assert record["system"]["teacher_label_smoothing"] == 0.0 and record["system"]["kd_temperature"] == 3.0
    assert record["system"]["teacher"]["path"] == str(checkpoint.resolve())


@needs_fashion_mnist
def test_run_writes_metrics_tensorboard_and_an_evaluation_an_independent_pass_confirms(tmp_path):
    Trainer(tiny(tmp_path, "loss.label_smoothing=0.1", "schedule.epochs=1")).fit()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    record = json.loads((tmp_path / "eval" / "classification-test.json").read_text())
    assert metrics["finished"] and len(metrics["history"]) == 1 and metrics["history"][0]["train"]["examples"] == 192
    assert "versions" in record and "command" in record and record["checkpoint"]["sha256"]
    assert record["data"]["train_examples"] == 192 and record["system"]["method"] == "CE"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "config.yaml").is_file()

    model, state = load_trained_model(tmp_path / "checkpoint_last.pt")
    from lskd.vision.data import read_idx
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", 96).unsqueeze(1)
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 96).long()
    with torch.no_grad():
        log_p = F.log_softmax(model(normalize(images, (0.2860,), (0.3530,))), -1).double()
    probs, scores = log_p.exp().numpy(), record["scores"]
    assert scores["examples"] == 96
    assert scores["top1"] == pytest.approx(100 * float((log_p.argmax(-1) == labels).double().mean()))
    assert scores["nll"] == pytest.approx(float(-log_p.gather(1, labels[:, None]).mean()), rel=1e-5)
    variances = [np.mean(np.sum((probs[labels == c] - probs[labels == c].mean(0)) ** 2, 1)) for c in labels.unique()]
    assert scores["one_minus_s"] == pytest.approx(float(np.mean(variances)), rel=1e-4)


@needs_fashion_mnist
def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    overrides = ["model.name=binary_resnet8", "optim.name=adam", "optim.lr=1e-3", "schedule.warmup_epochs=0.5",
                 "loss.label_smoothing=0.1"]
    whole = Trainer(tiny(tmp_path / "whole", *overrides))
    whole.fit()
    first = Trainer(tiny(tmp_path / "sliced", *overrides))
    first.fit(stop_after_epochs=1)
    assert first.epoch == 1 and not (tmp_path / "sliced" / "eval").exists()
    resumed = Trainer(tiny(tmp_path / "sliced", *overrides))
    assert resumed.resumed and resumed.epoch == 1
    resumed.fit()
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    whole_opt, resumed_opt = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(whole_opt[i][k], resumed_opt[i][k]) for i in whole_opt for k in whole_opt[i])
    assert [h["eval"] for h in whole.history] == [h["eval"] for h in resumed.history]
    assert [h["train"]["loss"] for h in whole.history] == [h["train"]["loss"] for h in resumed.history]


@needs_fashion_mnist
def test_a_checkpoint_of_another_experiment_is_not_resumed(tmp_path):
    Trainer(tiny(tmp_path, "schedule.epochs=1")).fit()
    with pytest.raises(ConfigError, match="another experiment.*loss.label_smoothing: checkpoint 0.0, now 0.1"):
        Trainer(tiny(tmp_path, "schedule.epochs=1", "loss.label_smoothing=0.1"))


@needs_fashion_mnist
def test_teacher_from_other_data_or_a_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint not found"):
        Trainer(tiny(tmp_path / "s", f"kd.teacher={tmp_path / 'none.pt'}", "kd.alpha=1"))
    with pytest.raises(ConfigError, match="kd.topk 11 exceeds the 10 classes"):
        Trainer(tiny(tmp_path / "s", f"kd.teacher={tmp_path / 'none.pt'}", "kd.alpha=1", "kd.topk=11"))
