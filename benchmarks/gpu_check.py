"""GPU check: the KD loss and the NMT commands on CUDA, in one short run (about two minutes).

1. ``word_kd_loss`` and its gradient with respect to the student's logits, on CUDA in fp32, fp16
   and bf16, on each path (full teacher at T = 1 and T = 2, log-probability teacher, top-k,
   alpha = 0), against the loss written out and its closed-form gradient in float64 on the CPU;
   the second derivatives (``create_graph=True``) in fp32; all under
   ``torch.cuda.set_sync_debug_mode("error")``, so a host synchronisation fails the check.
2. One ``fairseq-train`` run of the KD criterion (online teacher) on CUDA with ``--fp16``.
3. ``lskd-eval bleu --gpu`` and ``lskd-distill-corpus --gpu`` on a small synthetic corpus.

Without CUDA it prints ``gpu_check: skipped: no CUDA`` and exits 0; ``--device cpu`` runs the same
checks on the CPU (to try the script out before a GPU session). Exit status 1 if a check fails.

    python benchmarks/gpu_check.py [--work DIR] [--tokens 1024] [--vocab 8000] [--skip-commands]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: lskd from this checkout
    sys.path.insert(0, str(REPO))

from lskd.losses import topk_scores, word_kd_loss  # noqa: E402
from lskd.metrics import teacher_statistics  # noqa: E402

PAD = 1
#: dtype of the logits and teacher scores -> tolerance on the gradient, relative to its largest entry
#: (the gradient comes back in the input's dtype; the loss is computed in float32 whatever the input)
DTYPES = {"fp32": (torch.float32, 1e-5), "fp16": (torch.float16, 2e-3), "bf16": (torch.bfloat16, 1e-2)}
LOSS_RTOL = 1e-4
#: (name, alpha, temperature, teacher top-k (0: full), teacher given as log-probabilities)
CASES = [("T=1", 0.5, 1.0, 0, False), ("T=1 log-probs", 0.5, 1.0, 0, True), ("T=2", 0.7, 2.0, 0, False),
         ("top-8", 0.5, 1.0, 8, False), ("alpha=0", 0.0, 1.0, 0, True)]
TINY_TRANSFORMER = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
                    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
                    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
                    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings"]
WORDS = [("Haus", "house"), ("Baum", "tree"), ("Hund", "dog"), ("Katze", "cat"), ("Wasser", "water"),
         ("Brot", "bread"), ("Licht", "light"), ("Weg", "way"), ("Berg", "mountain"), ("Stadt", "city")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cuda (default; skipped without CUDA) or cpu, to try the script out")
    parser.add_argument("--work", type=Path,
                        help="new directory for the corpus, models, outputs and logs, kept (default: a temporary one)")
    parser.add_argument("--tokens", type=int, default=1024, help="target positions in the loss check")
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary size in the loss check")
    parser.add_argument("--sentences", type=int, default=200, help="training pairs of the synthetic corpus")
    parser.add_argument("--skip-commands", action="store_true", help="only the loss check (part 1)")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.vocab <= max(case[3] for case in CASES):
        parser.error(f"--tokens must be >= 2 and --vocab > {max(case[3] for case in CASES)}")
    if args.work and args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work} is not empty: give a new directory (a check starts from nothing)")
    return args


# -- part 1: the loss ------------------------------------------------------------------------
def loss_inputs(tokens: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits, teacher logits (float64, CPU) and gold targets with 10 % padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, vocab, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(tokens, vocab, generator=g, dtype=torch.float64) * 4
    target = torch.randint(2, vocab, (tokens,), generator=g)
    target[torch.randperm(tokens, generator=g)[: tokens // 10]] = PAD
    return logits, teacher, target


def reference(logits: torch.Tensor, teacher_scores: torch.Tensor, target: torch.Tensor, *, alpha: float,
              temperature: float, epsilon: float, teacher_indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The loss written out in float64 on the CPU, and its gradient with respect to the logits in closed form.

    ``loss = sum over kept positions of (1 - alpha) * -(q_ls . log p) + alpha * T^2 * KL(p_t^T || p^T)``
    with ``q_ls`` fairseq's smoothed one-hot; ``d loss / dz = (1 - alpha) (p - q_ls) + alpha T (p^T - p_t^T)``.
    A top-k teacher is renormalised over its k classes (``p_t^T`` is 0 elsewhere).
    """
    z, scores, target = logits.double().cpu(), teacher_scores.double().cpu(), target.cpu()
    vocab, t = z.size(-1), temperature
    log_p, log_p_tempered = z.log_softmax(-1), (z / t).log_softmax(-1)
    teacher_log_p = (scores / t).log_softmax(-1)
    student_on_teacher = log_p_tempered if teacher_indices is None else log_p_tempered.gather(-1, teacher_indices.cpu())
    kl = (teacher_log_p.exp() * (teacher_log_p - student_on_teacher)).sum(-1)
    one_hot = torch.nn.functional.one_hot(target, vocab).double()
    q_ls = (1 - epsilon - epsilon / (vocab - 1)) * one_hot + epsilon / (vocab - 1)
    kept = target.ne(PAD)
    teacher_p = teacher_log_p.exp()
    if teacher_indices is not None:
        teacher_p = torch.zeros_like(z).scatter(-1, teacher_indices.cpu(), teacher_p)
    gradient = (1 - alpha) * (log_p.exp() - q_ls) + alpha * t * (log_p_tempered.exp() - teacher_p)
    return {
        "loss": ((1 - alpha) * -(q_ls * log_p).sum(-1) + alpha * t * t * kl)[kept].sum(),
        "nll_loss": -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)[kept].sum(),
        "kd_loss": kl[kept].sum(),
        "gradient": torch.where(kept.unsqueeze(-1), gradient, 0.0),
    }


def reference_second_derivative(logits: torch.Tensor, target: torch.Tensor, direction: torch.Tensor, *,
                                alpha: float, temperature: float) -> torch.Tensor:
    """``(d^2 loss / dz^2) v = (1 - alpha) H(p) v + alpha H(p^T) v`` per position, ``H(p) = diag(p) - p p^T``."""
    z, v = logits.double().cpu(), direction.double().cpu()

    def times_jacobian(p: torch.Tensor) -> torch.Tensor:
        return p * v - p * (p * v).sum(-1, keepdim=True)

    want = (1 - alpha) * times_jacobian(z.softmax(-1)) + alpha * times_jacobian((z / temperature).softmax(-1))
    return torch.where(target.cpu().ne(PAD).unsqueeze(-1), want, 0.0)


def no_host_sync(device: torch.device):
    """Make any host synchronisation an error on CUDA (nothing to watch on the CPU)."""
    if device.type != "cuda":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def watching():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)

    return watching()


def check_loss(device: torch.device, tokens: int, vocab: int, epsilon: float = 0.1) -> list[str]:
    """Part 1; returns the failures (empty if all agree) and prints one line per dtype and case."""
    logits, teacher, target = loss_inputs(tokens, vocab)
    failures = []
    for dtype_name, (dtype, gradient_tol) in DTYPES.items():
        z_in, teacher_in, target_in = logits.to(device, dtype), teacher.to(device, dtype), target.to(device)
        for name, alpha, t, k, normalized in CASES:
            scores, indices = topk_scores(teacher_in, k) if k else (teacher_in, None)
            if normalized:
                scores = scores.float().log_softmax(-1)
            z = z_in.clone().requires_grad_(True)
            with no_host_sync(device):
                out = word_kd_loss(z, target_in, scores, alpha=alpha, temperature=t, epsilon=epsilon, ignore_index=PAD,
                                   teacher_indices=indices, teacher_normalized=normalized, student_normalized=False)
                (gradient,) = torch.autograd.grad(out.loss, z, create_graph=dtype_name == "fp32")
                if normalized or k:  # log-probabilities at T = 1, as the criterion passes them
                    teacher_statistics(scores, z.detach(), target_in, target_in.ne(PAD), indices)
            want = reference(z_in, scores, target, alpha=alpha, temperature=t, epsilon=epsilon, teacher_indices=indices)
            problems = [f"{field} {getattr(out, field).item():.6g} vs {want[field].item():.6g}"
                        for field in ("loss", "nll_loss", "kd_loss")
                        if not math.isclose(getattr(out, field).item(), want[field].item(), rel_tol=LOSS_RTOL)]
            error = (gradient.double().cpu() - want["gradient"]).abs().max().item() / want["gradient"].abs().max().item()
            if gradient.dtype != dtype or not error <= gradient_tol:
                problems.append(f"gradient {gradient.dtype}, max error {error:.2e} of its largest entry (tolerance {gradient_tol:.0e})")
            if dtype_name == "fp32":
                direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                direction_in = direction.to(device, dtype)  # a copy from the host waits for it: not in the watch
                with no_host_sync(device):
                    (second,) = torch.autograd.grad(gradient, z, direction_in)
                want_second = reference_second_derivative(z_in, target, direction, alpha=alpha, temperature=t)
                second_error = (second.double().cpu() - want_second).abs().max().item() / want_second.abs().max().item()
                if not second_error <= gradient_tol * 10:
                    problems.append(f"second derivative: max error {second_error:.2e} of its largest entry")
            line = f"loss {dtype_name:4s} {name:13s} " + ("ok" if not problems else "FAILED: " + "; ".join(problems))
            print(line, flush=True)
            failures += [line] if problems else []
    return failures


# -- parts 2 and 3: fairseq training, decoding, distillation ---------------------------------------
def write_corpus(directory: Path, sentences: int) -> dict[str, Path]:
    """A word-for-word German-English corpus, PREFIX.de / PREFIX.en per split: easy to learn, nothing downloaded."""
    directory.mkdir(parents=True, exist_ok=True)
    prefixes = {}
    for split, size, offset in (("train", sentences, 0), ("valid", 20, 7), ("test", 20, 13)):
        de, en = [], []
        for i in range(offset, offset + size):
            chosen = [WORDS[(i * step + step) % len(WORDS)] for step in (1, 3, 7)[: 2 + i % 2]]
            de.append(" ".join(w[0] for w in chosen) + f" {i % 50}")
            en.append(" ".join(w[1] for w in chosen) + f" {i % 50}")
        (directory / f"{split}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
        (directory / f"{split}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
        prefixes[split] = directory / split
    return prefixes


def run_module(log: Path, module: str, *args: str) -> str | None:
    """``python -m module args`` in the checkout, output in ``log``; None if it succeeded, else a failure line."""
    with log.open("w") as out:
        status = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    return None if status == 0 else f"{module} exited with status {status} (log: {log})"


def finite_kd_losses(log: Path) -> list[float]:
    """The ``kd_loss`` values of a fairseq-train ``--log-format json`` log."""
    values = []
    for line in log.read_text().splitlines():
        start = line.find("{")
        if start >= 0 and '"kd_loss"' in line:
            values.append(float(json.loads(line[start:])["kd_loss"]))
    return values


def check_commands(device: torch.device, work: Path, sentences: int) -> list[str]:
    """Parts 2 and 3; returns the failures and prints one line per step."""
    on_gpu = device.type == "cuda"
    prefixes = write_corpus(work / "corpus", sentences)
    data = work / "data"
    steps = [("prepare", "data_prep.cli", ["text", "--src", "de", "--tgt", "en", *(f"--{s}={p}" for s, p in prefixes.items()),
                                           "--out", str(data), "--vocab-size", "60", "--workers", "1", "--overwrite"])]
    train = [str(data / "bin"), "--user-dir", str(REPO / "fairseq_plugins"), *TINY_TRANSFORMER,
             *(["--fp16"] if on_gpu else ["--cpu"]), "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "1024",
             "--required-batch-size-multiple", "1", "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "1",
             "--log-format", "json", "--log-interval", "1", "--disable-validation"]
    teacher, student = work / "teacher", work / "student"
    steps += [
        ("teacher", "fairseq_cli.train", [*train, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                                          "--max-update", "20", "--save-dir", str(teacher)]),
        ("KD step", "fairseq_cli.train", [*train, "--criterion", "label_smoothed_cross_entropy_with_kd",
                                          "--label-smoothing", "0.1", "--kd-alpha", "0.5", "--teacher-path",
                                          str(teacher / "checkpoint_last.pt"), "--max-update", "2", "--save-dir", str(student)]),
        ("lskd-eval bleu", "eval.cli", ["bleu", "--checkpoint", str(student / "checkpoint_last.pt"), "--data", str(data),
                                        "--out", str(work / "eval"), "--beam", "2", *(["--gpu"] if on_gpu else [])]),
        ("lskd-distill-corpus", "data_prep.distill", ["--data", str(data), "--teacher-path", str(teacher / "checkpoint_last.pt"),
                                                       "--out", str(work / "distilled"), "--beam", "2", "--workers", "1",
                                                       "--overwrite", *(["--gpu"] if on_gpu else [])]),
    ]
    failures = []
    for name, module, args in steps:
        log = work / f"{name.replace(' ', '-')}.log"
        failure = run_module(log, module, *args) or step_result_problem(name, work, log, sentences)
        line = f"{name:19s} " + ("ok" if failure is None else f"FAILED: {failure}")
        print(line, flush=True)
        if failure:
            return failures + [line]  # later steps need this one's output
    return failures


def step_result_problem(name: str, work: Path, log: Path, sentences: int) -> str | None:
    """What is wrong with a finished step's output, if anything."""
    if name == "KD step":
        losses = finite_kd_losses(log)
        if not losses or not all(math.isfinite(v) for v in losses):
            return f"kd_loss values {losses} in {log}: expected finite ones"
    if name == "lskd-eval bleu":
        record = json.loads((work / "eval" / "bleu-test.json").read_text())
        if record["sentences"] != 20 or not math.isfinite(record["scores"]["bleu"]["score"]):
            return f"bleu-test.json: {record['sentences']} sentences, BLEU {record['scores']['bleu']['score']}"
    if name == "lskd-distill-corpus":
        counts = json.loads((work / "distilled" / "distill.json").read_text())["counts"]
        if counts["inputs"] != sentences or counts["outputs"] != sentences:
            return f"distill.json counts {counts}: expected {sentences} in and out"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA")
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    failures = check_loss(device, args.tokens, args.vocab)
    if not args.skip_commands:
        with contextlib.ExitStack() as stack:
            work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lskd-gpu-check-")))
            failures += check_commands(device, work, args.sentences)
    print(f"gpu_check: {'all checks passed' if not failures else f'{len(failures)} check(s) FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
