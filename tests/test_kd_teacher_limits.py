"""Online KD with a student that accepts longer pairs than its teacher, and the criterion's non-finite knobs.

A few binarized pairs of known lengths (``test_too_long.binarize``) and untrained teachers saved by
fairseq's own Trainer, one with learned positions and one with sinusoidal ones, each with its own
``--max-source-positions`` / ``--max-target-positions``; the criterion is built in this process.
Before: the learned-position teacher stopped at the first long batch with ``IndexError: index out of
range in self`` (a 207-line traceback from fairseq-train), the sinusoidal one scored positions it never
trained on, silently. The knob tests need no teacher and are fast; the teacher tests build several
(seconds each) and are marked slow.
"""
import dataclasses
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_TRANSFORMER
from test_too_long import SOURCE, TARGET, binarize

#: (source, target) limits of each teacher; the ensemble of both accepts (5, 6)
TEACHERS = {"learned": (5, 9), "sinusoidal": (8, 6)}
LEARNED_POSITIONS = ["--encoder-learned-pos", "--decoder-learned-pos"]


def build(data, *args):
    """fairseq-train's config, task, student and criterion for ``args``, in this process."""
    from fairseq_plugins.components import build_training_components

    return build_training_components(
        [str(data), "--user-dir", str(REPO / "fairseq_plugins"), *TINY_TRANSFORMER, "--cpu", "--optimizer", "adam",
         "--lr", "1e-3", "--max-tokens", "1024", "--required-batch-size-multiple", "1", *args], splits=("train",))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lengths")
    for split in ("train", "valid"):
        binarize(directory, "de", SOURCE, split)
        binarize(directory, "en", TARGET, split)
    return directory


@pytest.fixture(scope="module")
def task(data):
    from fairseq_plugins.tasks import translation_task

    return translation_task(data, "de", "en")


@pytest.fixture(scope="module")
def teachers(data, tmp_path_factory):
    """name -> checkpoint path: untrained teachers, saved by fairseq's Trainer as fairseq-train saves them."""
    from fairseq.trainer import Trainer

    paths = {}
    for name, (source, target) in TEACHERS.items():
        cfg, task, model, criterion = build(
            data, "--criterion", "label_smoothed_cross_entropy", "--no-save-optimizer-state", "--max-source-positions", str(source),
            "--max-target-positions", str(target), *(LEARNED_POSITIONS if name == "learned" else []))
        paths[name] = str(tmp_path_factory.mktemp(name) / "checkpoint.pt")
        Trainer(cfg, task, model, criterion).save_checkpoint(paths[name], {})
    paths["ensemble"] = f"{paths['learned']}:{paths['sinusoidal']}"
    return paths


def kd(teacher_path, *args):
    return ["--criterion", "label_smoothed_cross_entropy_with_kd", "--kd-alpha", "0.5", "--kd-temperature", "2",
            "--teacher-path", teacher_path, *args]


def too_long_ids(source_limit, target_limit):
    """Independently of fairseq: the pairs longer than the limits, from the lengths written."""
    return [i for i, (s, t) in enumerate(zip(SOURCE, TARGET)) if s > source_limit or t > target_limit]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["learned", "sinusoidal"])
def test_a_student_longer_than_its_teacher_is_refused_at_start_naming_both_limits(data, teachers, name):
    from lskd.too_long import TooLongError

    source, target = TEACHERS[name]
    with pytest.raises(TooLongError) as refused:
        build(data, *kd(teachers[name]))  # fairseq's default limits: 1024 a side
    assert str(refused.value) == (
        f"student --max-source-positions 1024 and --max-target-positions 1024 exceed the teacher's {source} and "
        f"{target} ({teachers[name]}): train with --max-source-positions {source} --max-target-positions {target}, "
        f"or pass --teacher-too-long skip")
    # one side only, and the fix the message names is accepted
    with pytest.raises(TooLongError, match=rf"^student --max-target-positions 1024 exceeds the teacher's {target} "):
        build(data, *kd(teachers[name]), "--max-source-positions", str(source))
    build(data, *kd(teachers[name]), "--max-source-positions", str(source), "--max-target-positions", str(target))


@pytest.mark.slow
def test_an_ensemble_names_the_member_that_sets_each_limit(data, teachers):
    from lskd.too_long import TooLongError

    with pytest.raises(TooLongError) as refused:
        build(data, *kd(teachers["ensemble"]))
    assert str(refused.value) == (
        f"student --max-source-positions 1024 exceeds the teacher's 5 ({teachers['learned']}); student "
        f"--max-target-positions 1024 exceeds the teacher's 6 ({teachers['sinusoidal']}): train with "
        f"--max-source-positions 5 --max-target-positions 6, or pass --teacher-too-long skip")


def summed_pass(criterion, model, batches):
    """The criterion over ``batches`` (eval mode): summed logging outputs and fairseq's reduced metrics."""
    from fairseq.logging import metrics

    logs = [criterion(model, sample)[2] for sample in batches]
    with metrics.aggregate(new_root=True) as aggregated:
        criterion.reduce_metrics(logs)
    totals = {key: sum(float(log.get(key, 0)) for log in logs) for key in ("loss", "kd_loss", "ntokens", "nsentences")}
    return totals, aggregated.get_smoothed_values()


def batches(task, max_positions=None):
    return task.get_batch_iterator(task.dataset("train"), max_tokens=16, max_positions=max_positions,
                                   ignore_invalid_inputs=True, required_batch_size_multiple=1).next_epoch_itr(shuffle=False)


@pytest.mark.slow
@pytest.mark.parametrize("name,topk", [("learned", 0), ("sinusoidal", 0), ("ensemble", 3)])
def test_skip_leaves_out_exactly_the_pairs_fairseq_would_filter_with_the_teachers_limits(data, teachers, name, topk):
    limits = (5, 6) if name == "ensemble" else TEACHERS[name]
    expected = too_long_ids(*limits)
    assert 0 < len(expected) < len(SOURCE)
    _, task, model, skipping = build(data, *kd(teachers[name], "--teacher-too-long", "skip", "--teacher-topk", str(topk)))
    model.eval()
    with torch.no_grad():
        got, metrics = summed_pass(skipping, model, batches(task))
        # the same student, trained with the teacher's limits as its own: fairseq's filter leaves the pairs out
        _, limited_task, _, limited = build(data, *kd(teachers[name], "--teacher-topk", str(topk)),
                                            "--max-source-positions", str(limits[0]),
                                            "--max-target-positions", str(limits[1]))
        want, _ = summed_pass(limited, model, batches(limited_task, limits))
    assert metrics["teacher_too_long"] == len(expected)
    assert got["nsentences"] == want["nsentences"] == len(SOURCE) - len(expected)
    assert got["ntokens"] == want["ntokens"] == sum(t for i, t in enumerate(TARGET) if i not in expected)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5) and got["kd_loss"] == pytest.approx(want["kd_loss"], rel=1e-5)


@pytest.mark.slow
def test_skip_trains_on_a_batch_of_only_too_long_pairs_without_a_nan(data, teachers):
    _, task, model, skipping = build(data, *kd(teachers["learned"], "--teacher-too-long", "skip"))
    too_long = too_long_ids(*TEACHERS["learned"])
    only = task.dataset("train").collater([task.dataset("train")[i] for i in too_long])
    loss, sample_size, log = skipping(model, only)
    loss.backward()
    assert loss.item() == 0 and sample_size == 0 and log["teacher_too_long"] == len(too_long)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_skip_with_a_top_k_cache_is_refused(data, tmp_path):
    from lskd.topk_cache import TopKCacheError

    with pytest.raises(TopKCacheError, match="--teacher-too-long skip is for online teachers"):
        build(data, "--criterion", "label_smoothed_cross_entropy_with_kd", "--kd-alpha", "0.5",
              "--teacher-topk-cache", str(tmp_path), "--teacher-too-long", "skip")


def float_knobs():
    from fairseq_plugins.criterions.label_smoothed_cross_entropy_with_kd import LabelSmoothedCrossEntropyWithKDConfig

    return [f.name for f in dataclasses.fields(LabelSmoothedCrossEntropyWithKDConfig) if f.type is float]


def test_the_knobs_checked_are_the_criterions_float_fields():
    assert sorted(float_knobs()) == ["kd_alpha", "kd_temperature", "label_smoothing"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("knob", ["kd_alpha", "kd_temperature", "label_smoothing"])
def test_a_non_finite_knob_is_refused_naming_its_flag(task, knob, value):
    """Before: --kd-temperature inf passed every range check and the first update's gradients were NaN
    (fairseq's parser reads the three as Python floats: ``float("inf")``, ``float("nan")``)."""
    from fairseq_plugins.criterions.label_smoothed_cross_entropy_with_kd import LabelSmoothedCrossEntropyWithKDCriterion
    from lskd.errors import InvalidValueError

    knobs = {"label_smoothing": 0.1, "kd_alpha": 0.0, "kd_temperature": 2.0, knob: float(value)}
    with pytest.raises(InvalidValueError, match=rf"^--{knob.replace('_', '-')} {value}: expected a finite number$"):
        LabelSmoothedCrossEntropyWithKDCriterion(task, sentence_avg=False, **knobs)


@pytest.mark.slow  # two fairseq-train processes (a refusal at start, and two updates)
def test_fairseq_train_ends_with_the_refusal_and_logs_what_skip_leaves_out(data, teachers, tmp_path):
    from conftest import train_tiny

    command = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", str(REPO / "fairseq_plugins"),
               *TINY_TRANSFORMER, "--cpu", "--optimizer", "adam", "--max-tokens", "1024",
               "--save-dir", str(tmp_path / "refused"), *kd(teachers["learned"])]
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"lskd.too_long.TooLongError: student --max-source-positions 1024 and --max-target-positions 1024 exceed the "
        f"teacher's 5 and 9 ({teachers['learned']}): train with --max-source-positions 5 --max-target-positions 9, "
        f"or pass --teacher-too-long skip"), refused.stderr[-2000:]
    assert "IndexError" not in refused.stderr and not list((tmp_path / "refused").glob("*.pt"))

    result = train_tiny(data, tmp_path / "skip", *kd(teachers["learned"], "--teacher-too-long", "skip"), updates=2)
    log = result.stdout + result.stderr
    expected = len(too_long_ids(*TEACHERS["learned"]))
    for subset in ("train", "valid"):  # one batch an epoch: the epoch's count is the split's
        line = [line for line in log.splitlines() if f"| {subset} |" in line][-1]
        assert re.search(rf"\bteacher_too_long {expected}\b", line), line
