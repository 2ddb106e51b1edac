"""benchmarks/gpu_check.py where there is no GPU: its arguments, its reference and its loss check on the CPU."""
import importlib.util

import pytest
import torch

from conftest import REPO
from lskd.losses import topk_scores, word_kd_loss

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_arguments_defaults_and_refusals(tmp_path, capsys):
    args = gpu_check.parse_args([])
    assert (args.device, args.tokens, args.vocab, args.work, args.skip_commands) == ("cuda", 1024, 8000, None, False)
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--vocab", "8"])  # not above the top-k case's k
    (tmp_path / "old.log").write_text("x")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--work", str(tmp_path)])
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("name,alpha,t,k,normalized", gpu_check.CASES)
def test_reference_equals_the_loss_and_its_autograd_gradient(name, alpha, t, k, normalized):
    logits, teacher, target = gpu_check.loss_inputs(tokens=30, vocab=40)
    scores, indices = topk_scores(teacher, k) if k else (teacher, None)
    if normalized:
        scores = scores.log_softmax(-1)
    z = logits.clone().requires_grad_(True)
    out = word_kd_loss(z, target, scores, alpha=alpha, temperature=t, epsilon=0.1, ignore_index=gpu_check.PAD,
                       teacher_indices=indices, teacher_normalized=normalized, student_normalized=False)
    (gradient,) = torch.autograd.grad(out.loss, z, create_graph=True)
    want = gpu_check.reference(logits, scores, target, alpha=alpha, temperature=t, epsilon=0.1, teacher_indices=indices)
    for field in ("loss", "nll_loss", "kd_loss"):
        assert getattr(out, field).item() == pytest.approx(want[field].item(), rel=1e-10), field
    assert torch.allclose(gradient, want["gradient"], atol=1e-12)
    direction = torch.randn_like(logits)
    (second,) = torch.autograd.grad(gradient, z, direction)
    want_second = gpu_check.reference_second_derivative(logits, target, direction, alpha=alpha, temperature=t)
    assert torch.allclose(second, want_second, atol=1e-12)


def test_loss_check_passes_on_the_cpu_in_every_dtype(capsys):
    assert gpu_check.check_loss(torch.device("cpu"), tokens=24, vocab=50) == []
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(gpu_check.DTYPES) * len(gpu_check.CASES) and all(line.endswith("ok") for line in lines)


def test_without_cuda_it_says_skipped_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out == "gpu_check: skipped: no CUDA\n"


def test_synthetic_corpus_is_parallel_and_sized():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        prefixes = gpu_check.write_corpus(Path(directory), sentences=50)
        for split, size in (("train", 50), ("valid", 20), ("test", 20)):
            de = prefixes[split].with_suffix(".de").read_text().splitlines()
            en = prefixes[split].with_suffix(".en").read_text().splitlines()
            assert len(de) == len(en) == size
            assert all(len(a.split()) == len(b.split()) for a, b in zip(de, en))


@pytest.mark.slow
def test_the_whole_check_runs_on_the_cpu(tmp_path, capsys):
    """The same script a GPU session runs, with ``--device cpu``: every step, to the final line."""
    assert gpu_check.main(["--device", "cpu", "--tokens", "64", "--vocab", "300", "--sentences", "40",
                           "--work", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    for step in ("prepare", "teacher", "KD step", "lskd-eval bleu", "lskd-distill-corpus"):
        assert any(line.startswith(step) and line.endswith("ok") for line in out.splitlines()), step
    assert out.rstrip().endswith("gpu_check: all checks passed")
