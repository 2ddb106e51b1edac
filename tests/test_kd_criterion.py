"""The fairseq KD criterion: exactness at alpha = 0, teacher handling, the top-k cache, and bad input."""
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, train_tiny

pytestmark = pytest.mark.slow


def build(data, *criterion_args):
    """fairseq's own config, task, student model and criterion, in this process."""
    from conftest import TINY_TRANSFORMER
    from fairseq_plugins.components import build_training_components

    return build_training_components(
        [str(data), "--user-dir", str(REPO / "fairseq_plugins"), *TINY_TRANSFORMER, "--cpu",
         "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "1024", "--required-batch-size-multiple", "1",
         "--seed", "1", *criterion_args])


def first_batch(task, shuffle=False, seed=1):
    dataset = task.dataset("valid")
    return next(iter(task.get_batch_iterator(dataset, max_tokens=1024, required_batch_size_multiple=1,
                                             seed=seed).next_epoch_itr(shuffle=shuffle)))


def test_alpha_zero_equals_fairseq_label_smoothed_cross_entropy(bible_slice, trained_checkpoint):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    _, task, model, ours = build(bible_slice / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd",
                                 "--label-smoothing", "0.1", "--kd-alpha", "0", "--teacher-path", str(trained_checkpoint))
    theirs = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    sample = first_batch(task)
    model.eval()
    loss, size, log = ours(model, sample)
    want, want_size, want_log = theirs(model, sample)
    assert torch.equal(loss, want) and size == want_size and torch.equal(log["nll_loss"], want_log["nll_loss"])


def test_online_teacher_is_frozen_hidden_and_follows_the_kd_formula(bible_slice, trained_checkpoint):
    from fairseq.trainer import Trainer

    from lskd.losses import word_kd_loss

    cfg, task, model, criterion = build(
        bible_slice / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1",
        "--kd-alpha", "0.7", "--kd-temperature", "2", "--teacher-path", str(trained_checkpoint))
    teacher = criterion._teachers[0]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert not list(criterion.parameters()) and not criterion.state_dict()
    trainer = Trainer(cfg, task, model, criterion)
    for seed in (1, 2):
        trainer.train_step([first_batch(task, shuffle=True, seed=seed)])
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())  # it only ever ran under no_grad
    optimised = {id(p) for group in trainer.optimizer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert not criterion.state_dict()  # nothing of the teacher goes into a checkpoint

    # the criterion's loss is the KD formula on the teacher's and student's distributions
    model.eval()
    sample = first_batch(task)
    loss, _, log = criterion(model, sample)
    with torch.no_grad():
        student = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
        t_scores = teacher.get_normalized_probs(teacher(**sample["net_input"]), log_probs=True)
    v = student.size(-1)
    want = word_kd_loss(student.view(-1, v), sample["target"].view(-1), t_scores.view(-1, v), alpha=0.7,
                        temperature=2.0, epsilon=0.1, ignore_index=task.target_dictionary.pad())
    assert loss.item() == pytest.approx(want.loss.item(), rel=1e-6)
    assert {"kd_loss", "teacher_entropy", "teacher_agree", "teacher_nll"} <= set(log)


def test_at_t1_the_criterions_loss_and_gradients_follow_the_written_out_formula(bible_slice, trained_checkpoint):
    from lskd.losses import label_smoothed_nll_loss

    _, task, model, criterion = build(
        bible_slice / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1",
        "--kd-alpha", "0.7", "--kd-temperature", "1", "--teacher-path", str(trained_checkpoint))
    model.eval()  # no dropout: both computations see the same network
    sample, pad = first_batch(task), task.target_dictionary.pad()
    loss, _, log = criterion(model, sample)
    loss.backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    # the KD formula written out on fairseq's log-probabilities, with autograd's own backward
    lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    lprobs, target = lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1)
    with torch.no_grad():
        teacher = criterion._teachers[0]
        teacher_lp = teacher.get_normalized_probs(teacher(**sample["net_input"]), log_probs=True).view_as(lprobs)
    ls, nll = label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=pad)
    kl = (teacher_lp.exp() * (teacher_lp - lprobs)).sum(-1).masked_fill(target.eq(pad), 0.0).sum()
    want = 0.3 * ls + 0.7 * kl
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert log["kd_loss"].item() == pytest.approx(kl.item(), rel=1e-4)
    for name, p in model.named_parameters():
        assert torch.allclose(got[name], p.grad, rtol=1e-3, atol=1e-6), name


def test_cache_gives_the_online_top_k_loss_under_shuffling(bible_slice, trained_checkpoint, tmp_path):
    from data_prep.dump_topk import main as dump_main

    assert dump_main([str(bible_slice / "bin"), "--teacher-path", str(trained_checkpoint), "--k", "4",
                      "--out", str(tmp_path / "cache"), "--splits", "valid"]) == 0
    common = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1",
              "--kd-alpha", "0.5", "--kd-temperature", "2", "--train-subset", "valid", "--valid-subset", "valid"]
    _, task, model, online = build(bible_slice / "bin", *common, "--teacher-path", str(trained_checkpoint),
                                   "--teacher-topk", "4")
    _, _, _, cached = build(bible_slice / "bin", *common, "--teacher-topk-cache", str(tmp_path / "cache"))
    model.train()
    for seed in (3, 4):
        sample = first_batch(task, shuffle=True, seed=seed)
        torch.manual_seed(0)
        want, _, want_log = online(model, sample)
        torch.manual_seed(0)
        got, _, got_log = cached(model, sample)
        assert got.item() == pytest.approx(want.item(), rel=2e-3)  # fp16 probabilities in the cache
        assert not any(key.startswith("teacher_") for key in got_log)  # diagnostics: validation only
    model.eval()
    _, _, want_log = online(model, sample)
    _, _, got_log = cached(model, sample)
    assert 0 < got_log["teacher_gold_in_topk"] == want_log["teacher_gold_in_topk"]
    assert got_log["teacher_agree"] == want_log["teacher_agree"]


def test_cache_for_other_data_is_refused(bible_slice, trained_checkpoint, tmp_path):
    from data_prep.dump_topk import main as dump_main
    from lskd.topk_cache import TopKCacheError

    assert dump_main([str(bible_slice / "bin"), "--teacher-path", str(trained_checkpoint), "--k", "4",
                      "--out", str(tmp_path / "cache"), "--splits", "test"]) == 0
    (tmp_path / "cache" / "test").rename(tmp_path / "cache" / "valid")  # a test-set cache posing as valid
    with pytest.raises(TopKCacheError, match="was built for data .* not for this data"):
        build(bible_slice / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd", "--kd-alpha", "0.5",
              "--train-subset", "valid", "--teacher-topk-cache", str(tmp_path / "cache"))


def test_a_cache_never_mixes_teachers(bible_slice, trained_checkpoint, second_checkpoint, tmp_path, capsys):
    """lskd-dump-topk replaced another teacher's split without a word, and fairseq-train then trained on
    one teacher's cache and validated on the other's."""
    from data_prep.dump_topk import main as dump_main
    from lskd.topk_cache import TopKCacheError

    cache = tmp_path / "cache"
    dump = [str(bible_slice / "bin"), "--k", "4", "--out", str(cache), "--max-tokens", "8192"]
    assert dump_main([*dump, "--teacher-path", str(trained_checkpoint), "--splits", "test"]) == 0
    before = (cache / "test" / "probs.npy").read_bytes()
    assert dump_main([*dump, "--teacher-path", str(second_checkpoint), "--splits", "valid"]) == 2
    assert f"{cache} holds top-k caches of another teacher or k (test): pass --overwrite" in capsys.readouterr().err
    assert (cache / "test" / "probs.npy").read_bytes() == before and not (cache / "valid").exists()
    (cache / "test").rename(tmp_path / "aside")  # set aside, to make a mixed cache below
    assert dump_main([*dump, "--teacher-path", str(second_checkpoint), "--splits", "valid"]) == 0
    (tmp_path / "aside").rename(cache / "test")  # valid is the second teacher's, test the first's
    with pytest.raises(TopKCacheError, match="its valid and test splits come from different teachers or k"):
        build(bible_slice / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd", "--kd-alpha", "0.5",
              "--train-subset", "valid", "--valid-subset", "test", "--teacher-topk-cache", str(cache))
    assert dump_main([*dump, "--teacher-path", str(second_checkpoint), "--splits", "valid", "--overwrite"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == [".lskd.lock", "valid"]  # the first teacher's test split is gone


def test_dump_topk_names_a_missing_split_before_dumping_any(bible_slice, trained_checkpoint, tmp_path, capsys):
    # before: " nope" (or "train, valid") reached fairseq's FileNotFoundError traceback after train was dumped
    from data_prep.dump_topk import main as dump_main

    assert dump_main([str(bible_slice / "bin"), "--teacher-path", str(trained_checkpoint), "--k", "4",
                      "--out", str(tmp_path / "cache"), "--splits", "valid, nope"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lskd-dump-topk: error: --splits 'valid, nope': {bible_slice / 'bin'} has no binarized split 'nope'")
    assert dump_main([str(bible_slice / "bin"), "--teacher-path", str(trained_checkpoint), "--k", "4",
                      "--out", str(tmp_path / "cache"), "--splits", " , "]) == 2
    assert "--splits ' , ' names no split" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args,message", [
    (["--kd-alpha", "1.5"], r"kd alpha must be in \[0, 1\], got 1.5"),
    (["--label-smoothing", "1.0"], r"--label-smoothing 1.0 must be in \[0, 1\)"),
    (["--label-smoothing", "-0.1"], r"--label-smoothing -0.1 must be in \[0, 1\)"),
    (["--kd-alpha", "0.5", "--kd-temperature", "0"], "kd temperature must be > 0"),
    (["--kd-alpha", "0.5"], "needs a teacher"),
    (["--kd-alpha", "0.5", "--teacher-path", "/nonexistent/teacher.pt"], "teacher checkpoint not found: /nonexistent/teacher.pt"),
    (["--kd-alpha", "0.5", "--teacher-path", "TEACHER", "--teacher-topk", "100000"], r"--teacher-topk 100000 must be between 0 and the vocabulary size"),
])
def test_bad_settings_stop_early_with_a_clear_message(bible_slice, trained_checkpoint, args, message):
    args = [str(trained_checkpoint) if a == "TEACHER" else a for a in args]
    with pytest.raises(ValueError, match=message):
        build(bible_slice / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd", *args)


def test_unreadable_teacher_and_other_dictionary_are_named(bible_slice, tmp_path, trained_checkpoint):
    from fairseq_plugins.teacher import TeacherError

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherError, match="teacher checkpoint .*junk.pt is unreadable"):
        build(bible_slice / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd", "--teacher-path", str(junk))

    # a student on data with another dictionary (same corpus, other vocabulary size)
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "data_prep.cli", "bible", "--out", str(other), "--limit-train", "300",
                    "--vocab-size", "400"], check=True, capture_output=True)
    with pytest.raises(TeacherError, match=rf"target dictionary .*/dict.en.txt \(\d+ types\) but the student's target "
                                           rf"dictionary is {other / 'bin' / 'dict.en.txt'} \(\d+ types\)"):
        build(other / "bin", "--criterion", "label_smoothed_cross_entropy_with_kd", "--teacher-path", str(trained_checkpoint))


def test_fairseq_train_with_online_ensemble_and_cached_teachers(bible_slice, trained_checkpoint, second_checkpoint, tmp_path):
    from data_prep.dump_topk import main as dump_main

    assert dump_main([str(bible_slice / "bin"), "--teacher-path", str(trained_checkpoint), "--k", "8",
                      "--out", str(tmp_path / "cache")]) == 0
    teachers = {
        "online": ["--teacher-path", str(trained_checkpoint)],
        "ensemble": ["--teacher-path", f"{trained_checkpoint}:{second_checkpoint}"],
        "cache": ["--teacher-topk-cache", str(tmp_path / "cache")],
    }
    for name, teacher_args in teachers.items():
        result = train_tiny(bible_slice / "bin", tmp_path / name, "--criterion", "label_smoothed_cross_entropy_with_kd",
                            "--label-smoothing", "0.1", "--kd-alpha", "0.5", *teacher_args, updates=3)
        log = result.stdout + result.stderr
        train_line = [line for line in log.splitlines() if "| train |" in line][-1]
        valid_line = [line for line in log.splitlines() if "| valid |" in line][-1]
        for metric in ("kd_loss", "nll_loss"):
            assert re.search(rf"\b{metric} [\d.]+", train_line), (name, metric, train_line)
        for metric in ("kd_loss", "teacher_entropy", "teacher_agree", "teacher_nll", "nll_loss"):
            assert re.search(rf"\b{metric} [\d.]+", valid_line), (name, metric, valid_line)
        assert "teacher_agree" not in train_line
        assert "label smoothing 0.1" in log or "teacher label smoothing [0.1]" in log
        state = torch.load(tmp_path / name / "checkpoint_last.pt", weights_only=True)
        assert not any("teacher" in key for key in state["model"])
        assert state.get("criterion") is None
