"""Stability (Shen et al. Eq. 2) and calibration, against direct NumPy computations."""
import numpy as np
import pytest
import torch

from lskd.metrics import CalibrationAccumulator, StabilityAccumulator


def direct_one_minus_s(probs: np.ndarray, labels: np.ndarray) -> float:
    """Eq. 2 literally: per class, mean squared distance to the class mean; then mean over classes."""
    values = []
    for c in np.unique(labels):
        members = probs[labels == c]
        values.append(np.mean(np.sum((members - members.mean(axis=0)) ** 2, axis=1)))
    return float(np.mean(values))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 9)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 6, size=200)
    labels[17] = 8  # a class with a single example
    return probs, labels


def test_stability_matches_numpy_including_a_singleton_class(data):
    probs, labels = data
    acc = StabilityAccumulator(9)
    acc.update(torch.tensor(probs), torch.tensor(labels))
    assert acc.result() == pytest.approx(direct_one_minus_s(probs, labels), rel=1e-10)
    assert acc.per_class()[8] == pytest.approx(0.0, abs=1e-15)
    assert set(acc.per_class()) == set(np.unique(labels).tolist())


def test_streaming_in_batches_equals_all_at_once(data):
    probs, labels = data
    whole, streamed = StabilityAccumulator(9), StabilityAccumulator(9)
    whole.update(torch.tensor(probs), torch.tensor(labels))
    for start in range(0, 200, 37):
        streamed.update(torch.tensor(probs[start:start + 37]), torch.tensor(labels[start:start + 37]))
    assert streamed.result() == pytest.approx(whole.result(), rel=1e-12)


def test_one_hot_teacher_has_zero_variance():
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 2])
    acc = StabilityAccumulator(4)
    acc.update(torch.nn.functional.one_hot(labels, 4).double(), labels)
    assert acc.result() == 0.0


def test_restricting_classes_keeps_only_those(data):
    probs, labels = data
    acc = StabilityAccumulator(9, classes=[0, 1])
    acc.update(torch.tensor(probs), torch.tensor(labels))
    keep = np.isin(labels, [0, 1])
    assert acc.result() == pytest.approx(direct_one_minus_s(probs[keep], labels[keep]), rel=1e-10)
    with pytest.raises(ValueError, match="exceed max_classes=1"):
        StabilityAccumulator(9, classes=[0, 1], max_classes=1)


def test_ece_hand_worked_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.58 (right), 0.55 (wrong), 15 bins:
    # bin (13/15, 14/15]: conf 0.9, acc 0.5 -> |0.5 - 0.9| = 0.4, weight 2/4
    # bin (8/15, 9/15]: confs 0.58, 0.55 (mean 0.565), acc 0.5 -> 0.065, weight 2/4
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.05, 0.05], [0.2, 0.58, 0.22], [0.55, 0.45, 0.0]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    acc = CalibrationAccumulator(15)
    acc.update(probs, labels)
    assert acc.ece() == pytest.approx(0.5 * 0.4 + 0.5 * 0.065, abs=1e-12)
    assert acc.accuracy() == 0.5
    entropy = -sum(p * np.log(p) for row in probs.tolist() for p in row if p > 0) / 4
    assert acc.mean_entropy() == pytest.approx(entropy, rel=1e-12)


def test_given_log_probs_give_the_same_entropy_and_float32_inputs_agree(data):
    probs, labels = data
    p64, p32 = torch.tensor(probs), torch.tensor(probs, dtype=torch.float32)
    a, b = CalibrationAccumulator(), CalibrationAccumulator()
    a.update(p64, torch.tensor(labels))
    b.update(p32, torch.tensor(labels), p32.log())
    assert b.mean_entropy() == pytest.approx(a.mean_entropy(), rel=1e-6)
    assert b.ece() == pytest.approx(a.ece(), abs=1e-6)
    s64, s32 = StabilityAccumulator(9), StabilityAccumulator(9)
    s64.update(p64, torch.tensor(labels))
    s32.update(p32, torch.tensor(labels))
    assert s32.result() == pytest.approx(s64.result(), rel=1e-5)


def test_teacher_statistics_against_direct_sums_and_the_losss_entropy():
    from lskd.losses import word_kd_loss
    from lskd.metrics import teacher_statistics

    g = torch.Generator().manual_seed(3)
    teacher = torch.log_softmax(torch.randn(12, 7, generator=g) * 2, -1)
    student = torch.log_softmax(torch.randn(12, 7, generator=g), -1)
    target = torch.randint(1, 7, (12,), generator=g)
    target[[2, 9]] = 0  # padding
    mask = target.ne(0)
    p = teacher.exp()
    want_entropy = float(-(p * teacher).sum(-1)[mask].sum())
    stats = teacher_statistics(teacher, student, target, mask)
    assert float(stats["teacher_entropy"]) == pytest.approx(want_entropy, rel=1e-6)
    assert int(stats["teacher_agree"]) == int((teacher.argmax(-1).eq(student.argmax(-1)) & mask).sum())
    assert float(stats["teacher_nll"]) == pytest.approx(float(-teacher[torch.arange(12), target][mask].sum()), rel=1e-6)
    assert int(stats["teacher_nll_count"]) == int(mask.sum())

    loss = word_kd_loss(student, target, teacher, alpha=0.5, temperature=1.0, epsilon=0.1, ignore_index=0,
                        teacher_normalized=True)
    assert float(loss.teacher_entropy) == pytest.approx(want_entropy, rel=1e-6)
    given = teacher_statistics(teacher, student, target, mask, teacher_entropy=loss.teacher_entropy)
    assert {k: float(v) for k, v in given.items()} == pytest.approx({k: float(v) for k, v in stats.items()})


def test_top1_agreement_full_and_topk_against_argmax():
    from lskd.losses import topk_scores
    from lskd.metrics import top1_agreement

    g = torch.Generator().manual_seed(4)
    teacher = torch.log_softmax(torch.randn(40, 9, generator=g), -1)
    student = torch.log_softmax(torch.randn(40, 9, generator=g), -1)
    student[:10] = student[:10] + 5 * torch.nn.functional.one_hot(teacher[:10].argmax(-1), 9)  # some agree
    want = teacher.argmax(-1).eq(student.argmax(-1))
    assert 10 <= int(want.sum()) < 40
    assert torch.equal(top1_agreement(teacher, student), want)
    values, indices = topk_scores(teacher, 3)
    assert torch.equal(top1_agreement(values, student, indices), want)


def test_top1_agreement_counts_a_tie_at_the_teachers_top():
    from lskd.metrics import top1_agreement

    teacher = torch.tensor([[0.0, 0.0, -5.0], [0.0, 0.0, -5.0]]).log_softmax(-1)
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]]).log_softmax(-1)
    assert top1_agreement(teacher, student).tolist() == [True, False]
