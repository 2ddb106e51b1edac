"""The LS / KD loss math against independent, elementwise reference computations."""
import math

import pytest
import torch

from lskd.losses import (
    ensemble_log_probs,
    kd_terms,
    label_smoothed_nll_loss,
    topk_scores,
    word_kd_loss,
)

PAD = 1


def softmax_list(row, t=1.0):
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def reference_loss(student_logits, teacher_logits, target, alpha, t, eps, pad=PAD):
    """Word-level KD written out position by position with Python floats."""
    total = nll_total = kd_total = 0.0
    for s_row, t_row, y in zip(student_logits.tolist(), teacher_logits.tolist(), target.tolist()):
        if y == pad:
            continue
        p_s = softmax_list(s_row)
        v = len(p_s)
        nll = -math.log(p_s[y])
        smooth = sum(-math.log(p_s[c]) for c in range(v) if c != y)
        ls = (1 - eps) * nll + eps / (v - 1) * smooth
        q_t, q_s = softmax_list(t_row, t), softmax_list(s_row, t)
        kl = sum(a * math.log(a / b) for a, b in zip(q_t, q_s) if a > 0)
        total += (1 - alpha) * ls + alpha * t * t * kl
        nll_total += nll
        kd_total += kl
    return total, nll_total, kd_total


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    n, v = 12, 7
    student = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    target = torch.randint(2, v, (n,), generator=g)
    target[[3, 8]] = PAD
    return student, teacher, target


def lossof(student, teacher, target, **kw):
    return word_kd_loss(torch.log_softmax(student, -1), target, teacher, ignore_index=PAD, **kw)


@pytest.mark.parametrize("alpha,t,eps", [(0.0, 1.0, 0.1), (1.0, 1.0, 0.0), (0.5, 1.0, 0.1), (0.5, 2.0, 0.1),
                                         (0.9, 64.0, 0.1), (1.0, 0.6, 0.2)])
def test_matches_elementwise_reference(batch, alpha, t, eps):
    student, teacher, target = batch
    got = lossof(student, teacher, target, alpha=alpha, temperature=t, epsilon=eps)
    want = reference_loss(student, teacher, target, alpha, t, eps)
    assert got.loss.item() == pytest.approx(want[0], rel=1e-9)
    assert got.nll_loss.item() == pytest.approx(want[1], rel=1e-9)
    if alpha > 0:
        assert got.kd_loss.item() == pytest.approx(want[2], rel=1e-9)


def test_alpha_zero_is_exactly_fairseqs_loss(batch):
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss as fairseq_ls

    student, teacher, target = batch
    lprobs = torch.log_softmax(student.float(), -1)
    want_loss, want_nll = fairseq_ls(lprobs, target, 0.1, ignore_index=PAD)
    got = word_kd_loss(lprobs, target, teacher.float(), alpha=0.0, temperature=2.0, epsilon=0.1, ignore_index=PAD)
    assert torch.equal(got.loss, want_loss) and torch.equal(got.nll_loss, want_nll)
    ours = label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=PAD)
    assert torch.equal(ours[0], want_loss)


def test_temperature_squared_scaling(batch):
    student, teacher, target = batch
    for t in (1.0, 2.0, 3.0):
        kd = lossof(student, teacher, target, alpha=1.0, temperature=t, epsilon=0.0)
        assert kd.loss.item() == pytest.approx(t * t * kd.kd_loss.item(), rel=1e-12)


def test_topk_with_k_equal_vocab_is_the_full_distribution(batch):
    student, teacher, target = batch
    full = lossof(student, teacher, target, alpha=0.7, temperature=2.0, epsilon=0.1)
    values, indices = topk_scores(teacher, teacher.size(-1))
    topk = lossof(student, values, target, alpha=0.7, temperature=2.0, epsilon=0.1, teacher_indices=indices)
    assert topk.loss.item() == pytest.approx(full.loss.item(), rel=1e-12)


def test_topk_renormalises_over_the_kept_classes(batch):
    student, teacher, target = batch
    values, indices = topk_scores(teacher, 3)
    got, _ = kd_terms(values, torch.log_softmax(student, -1), 1.0, indices)
    for i in range(student.size(0)):
        p = softmax_list(teacher[i].tolist())
        kept = indices[i].tolist()
        z = sum(p[c] for c in kept)
        q = softmax_list(student[i].tolist())
        want = sum(p[c] / z * math.log(p[c] / z / q[c]) for c in kept)
        assert got[i].item() == pytest.approx(want, rel=1e-9)


def test_topk_larger_than_vocab_is_refused(batch):
    with pytest.raises(ValueError, match="top-k 9 is larger than the vocabulary \\(7\\)"):
        topk_scores(batch[1], 9)


def test_padding_contributes_nothing(batch):
    student, teacher, target = batch
    base = lossof(student, teacher, target, alpha=0.5, temperature=2.0, epsilon=0.1)
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[target == PAD] = 100.0 * torch.randn_like(noisy_s[target == PAD])
    noisy_t[target == PAD] = -50.0
    assert lossof(noisy_s, noisy_t, target, alpha=0.5, temperature=2.0, epsilon=0.1).loss.item() == pytest.approx(
        base.loss.item(), rel=1e-12)
    keep = target != PAD
    subset = lossof(student[keep], teacher[keep], target[keep], alpha=0.5, temperature=2.0, epsilon=0.1)
    assert subset.loss.item() == pytest.approx(base.loss.item(), rel=1e-12)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_gradients_by_gradcheck(batch, t):
    student, teacher, target = batch
    student = student[:5].clone().requires_grad_(True)

    def f(s):
        return word_kd_loss(torch.log_softmax(s, -1), target[:5], teacher[:5], alpha=0.6, temperature=t,
                            epsilon=0.1, ignore_index=PAD).loss

    assert torch.autograd.gradcheck(f, (student,))
    values, indices = topk_scores(teacher[:5], 3)
    assert torch.autograd.gradcheck(
        lambda s: word_kd_loss(torch.log_softmax(s, -1), target[:5], values, alpha=1.0, temperature=1.5,
                               epsilon=0.0, ignore_index=PAD, teacher_indices=indices).loss, (student,))


def test_zero_teacher_probability_and_confident_student_stay_finite():
    target = torch.tensor([2, 3])
    teacher = torch.tensor([[0.0, 0.0, 0.0, float("-inf")], [float("-inf"), 0.0, 5.0, 1.0]])
    student = torch.tensor([[0.0, -1e4, 1e4, 0.0], [3.0, 2.0, 1.0, -1e4]], requires_grad=True)
    out = word_kd_loss(torch.log_softmax(student, -1), target, teacher, alpha=0.5, temperature=1.0, epsilon=0.1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(student.grad).all()
    p_t, teacher_lp = torch.softmax(teacher, -1), torch.log_softmax(teacher, -1)
    want_kd = torch.where(p_t > 0, p_t * (teacher_lp - torch.log_softmax(student.detach(), -1)), 0.0).sum()
    assert out.kd_loss.item() == pytest.approx(want_kd.item(), rel=1e-6)  # 0 * log 0 taken as 0


def test_logits_and_log_probs_give_the_same_loss_and_gradient(batch):
    """``student_normalized=False``: the same loss and gradient w.r.t. the logits as log-probabilities give."""
    student, teacher, target = batch
    for alpha, t in ((0.0, 1.0), (0.4, 1.0), (0.4, 2.0)):
        results = []
        for entry in ("lprobs", "logits"):
            s = (student + 7.0).requires_grad_(True)
            kwargs = dict(alpha=alpha, temperature=t, epsilon=0.1, ignore_index=PAD)
            out = (word_kd_loss(torch.log_softmax(s, -1), target, teacher, **kwargs) if entry == "lprobs"
                   else word_kd_loss(s, target, teacher, student_normalized=False, **kwargs))
            out.loss.backward()
            results.append((out, s.grad))
        (a, a_grad), (b, b_grad) = results
        for field in ("loss", "nll_loss", "kd_loss", "teacher_entropy"):
            assert getattr(b, field).item() == pytest.approx(getattr(a, field).item(), rel=1e-12, abs=1e-12)
        assert torch.allclose(a_grad, b_grad, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_match_float32(batch, dtype):
    student, teacher, target = batch
    s16, t16 = student.to(dtype), teacher.to(dtype)
    ref = lossof(s16.double(), t16.double(), target, alpha=0.5, temperature=2.0, epsilon=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = word_kd_loss(torch.log_softmax(s16, -1), target, t16, alpha=0.5, temperature=2.0, epsilon=0.1,
                           ignore_index=PAD)
    assert got.loss.dtype == torch.float32
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_give_float32_arithmetic(batch, dtype):
    student, teacher, target = batch
    s16, t16 = student.to(dtype).requires_grad_(True), teacher.to(dtype)
    ref = lossof(s16.detach().double(), t16.double(), target, alpha=0.5, temperature=1.0, epsilon=0.1)
    got = word_kd_loss(s16, target, t16, alpha=0.5, temperature=1.0, epsilon=0.1, ignore_index=PAD,
                       student_normalized=False)
    got.loss.backward()
    assert got.loss.dtype == torch.float32 and s16.grad.dtype == dtype and torch.isfinite(s16.grad).all()
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)  # half inputs, float32 arithmetic


def test_ensemble_averages_member_probabilities():
    g = torch.Generator().manual_seed(1)
    members = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    got = ensemble_log_probs(members).exp()
    want = sum(torch.softmax(m, -1) for m in members) / 3
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("alpha,t,message", [(1.5, 1.0, "alpha must be in \\[0, 1\\]"), (-0.1, 1.0, "alpha"),
                                             (0.5, 0.0, "temperature must be > 0"), (0.5, -2.0, "temperature")])
def test_bad_knobs_are_refused(batch, alpha, t, message):
    student, teacher, target = batch
    with pytest.raises(ValueError, match=message):
        lossof(student, teacher, target, alpha=alpha, temperature=t, epsilon=0.1)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_normalized_teacher_shortcut_gives_the_same_loss(batch, t):
    student, teacher, target = batch
    teacher_lp = torch.log_softmax(teacher, -1)
    plain = lossof(student, teacher, target, alpha=0.5, temperature=t, epsilon=0.1)
    shortcut = lossof(student, teacher_lp, target, alpha=0.5, temperature=t, epsilon=0.1, teacher_normalized=True)
    assert shortcut.loss.item() == pytest.approx(plain.loss.item(), rel=1e-12)


# -- autograd: one contract on every path ------------------------------------------------------
# Closed forms for logits z, p = softmax(z), p^T = softmax(z / T) and the teacher's p_t^T over V
# (0 outside a top-k): d LS / dz = p - q_ls, d KL / dz = (p^T - p_t^T) / T, and the second
# derivatives of the loss are (1 - alpha) H(p) + alpha H(p^T), with H(p) = diag(p) - p p^T.
PATHS = [(entry, teacher_kind, t, alpha) for entry in ("logits", "lprobs") for teacher_kind in ("logits", "lprobs", "topk")
         for t in (1.0, 2.0) for alpha in (0.0, 0.3, 1.0)]


def loss_on_path(z, teacher, target, entry, teacher_kind, t, alpha, eps=0.1):
    kwargs = dict(alpha=alpha, temperature=t, epsilon=eps, ignore_index=PAD)
    if teacher_kind == "lprobs":
        kwargs.update(teacher_scores=torch.log_softmax(teacher, -1), teacher_normalized=True)
    elif teacher_kind == "topk":
        values, indices = topk_scores(teacher, 3)
        kwargs.update(teacher_scores=values, teacher_indices=indices)  # log p over V: renormalised here
    else:
        kwargs.update(teacher_scores=teacher)
    if entry == "lprobs":
        return word_kd_loss(torch.log_softmax(z, -1), target, **kwargs)
    return word_kd_loss(z, target, student_normalized=False, **kwargs)


def teacher_distribution(teacher, t, teacher_kind):
    """p_t^T over V: p_t^(1/T) renormalised over the kept classes (all of them, or the top 3)."""
    p = torch.softmax(teacher, -1)
    kept = torch.ones_like(p) if teacher_kind != "topk" else torch.zeros_like(p).scatter(-1, p.topk(3).indices, 1.0)
    powered = p.pow(1 / t) * kept
    return powered / powered.sum(-1, keepdim=True)


def times_softmax_jacobian(p, v):
    """H(p) v row by row, H(p) = diag(p) - p p^T: the Jacobian of softmax."""
    return p * v - p * (p * v).sum(-1, keepdim=True)


@pytest.mark.parametrize("entry,teacher_kind,t,alpha", PATHS)
def test_gradients_of_loss_nll_and_kd_equal_the_closed_forms(batch, entry, teacher_kind, t, alpha):
    student, teacher, target = batch
    z = student.clone().requires_grad_(True)
    out = loss_on_path(z, teacher, target, entry, teacher_kind, t, alpha)
    assert out.loss.requires_grad and out.nll_loss.requires_grad and out.kd_loss.requires_grad
    assert not out.teacher_entropy.requires_grad
    v, eps = z.size(-1), 0.1
    p, p_tempered, p_teacher = torch.softmax(student, -1), torch.softmax(student / t, -1), teacher_distribution(teacher, t, teacher_kind)
    one_hot = torch.nn.functional.one_hot(target, v).double()
    q_ls = (1 - eps - eps / (v - 1)) * one_hot + eps / (v - 1)
    kept = (target != PAD).unsqueeze(-1)
    want = {
        "loss": (1 - alpha) * (p - q_ls) + alpha * t * (p_tempered - p_teacher),
        "nll_loss": p - one_hot,
        "kd_loss": (p_tempered - p_teacher) / t,
    }
    for name, gradient in want.items():
        (got,) = torch.autograd.grad(getattr(out, name), z, retain_graph=True)
        assert torch.allclose(got, torch.where(kept, gradient, 0.0), atol=1e-12), name


@pytest.mark.parametrize("entry,teacher_kind,t,alpha", PATHS)
def test_double_backward_equals_the_closed_form_second_derivatives(batch, entry, teacher_kind, t, alpha):
    student, teacher, target = batch
    z = student.clone().requires_grad_(True)
    out = loss_on_path(z, teacher, target, entry, teacher_kind, t, alpha)
    (gradient,) = torch.autograd.grad(out.loss, z, create_graph=True)
    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    (got,) = torch.autograd.grad(gradient, z, direction)
    p, p_tempered = torch.softmax(student, -1), torch.softmax(student / t, -1)
    want = (1 - alpha) * times_softmax_jacobian(p, direction) + alpha * times_softmax_jacobian(p_tempered, direction)
    assert torch.allclose(got, torch.where((target != PAD).unsqueeze(-1), want, 0.0), atol=1e-12)


def test_loss_gradient_and_diagnostics_read_no_value_on_the_host():
    """On the meta device a tensor has no data: any ``.item()``, ``bool()`` or ``.tolist()`` (what
    synchronises a GPU with the host) raises, so running there shows the step never needs one."""
    from lskd.metrics import teacher_statistics

    z = torch.randn(6, 9, device="meta", requires_grad=True)
    teacher, target = torch.randn(6, 9, device="meta"), torch.empty(6, dtype=torch.long, device="meta")
    for entry, teacher_kind, t, alpha in PATHS:
        out = loss_on_path(z, teacher, target, entry, teacher_kind, t, alpha)
        (gradient,) = torch.autograd.grad(out.loss, z, create_graph=True)
        gradient.sum().backward()
    values, indices = topk_scores(teacher, 3)
    for scores, top in ((teacher, None), (values, indices)):
        stats = teacher_statistics(scores, z, target, target.ne(PAD), top)
        assert all(value.device.type == "meta" for value in stats.values())
