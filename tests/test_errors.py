"""One way to report a known error from every console script: one line, exit status 2, traceback on demand."""
import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lskd.errors import LSKDError, console_script


@console_script("lskd-demo")
def demo(argv):
    if argv == ["known"]:
        raise LSKDError("data/x.txt, line 3: not valid UTF-8\n(see the README)")
    if argv == ["bug"]:
        raise KeyError("a bug keeps its traceback")
    return 0


def test_a_known_error_is_one_line_and_exit_status_2(capsys, monkeypatch):
    monkeypatch.delenv("LSKD_DEBUG", raising=False)
    assert demo(["known"]) == 2
    assert capsys.readouterr().err == "lskd-demo: error: data/x.txt, line 3: not valid UTF-8 | (see the README)\n"
    assert demo([]) == 0


def test_lskd_debug_shows_the_traceback_and_a_bug_is_never_hidden(monkeypatch):
    monkeypatch.setenv("LSKD_DEBUG", "1")
    with pytest.raises(LSKDError, match="not valid UTF-8"):
        demo(["known"])
    monkeypatch.delenv("LSKD_DEBUG")
    with pytest.raises(KeyError):
        demo(["bug"])


@pytest.mark.parametrize("command", [
    ["eval.cli", "score", "--hyp", "missing.hyp", "--ref", "missing.ref"],
    ["eval.report", "no-such-run-dir"],
    ["data_prep.distill", "--data", "no-such-dir", "--teacher-path", "t.pt", "--out", "out"],
    ["eval.export", "--checkpoint", "no.pt", "--data", "no-such-dir", "--out", "out"],
    ["eval.cli", "speed", "--checkpoint", "no.pt", "--data", "no-such-dir", "--out", "out"],
    ["data_prep.cli", "text", "--src", "de", "--tgt", "en", "--train", "no/train", "--valid", "no/valid",
     "--test", "no/test", "--out", "out"],
])
def test_console_scripts_report_missing_inputs_in_one_line(tmp_path, command):
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and ": error: " in result.stderr and "no" in result.stderr


def fake_prepared(root):
    """The files of an lskd-prepare directory that the commands read before they load a checkpoint."""
    (root / "bin").mkdir(parents=True)
    (root / "raw").mkdir()
    for lang in ("de", "en"):
        (root / "bin" / f"dict.{lang}.txt").write_text("▁a 5\n▁b 3\n", encoding="utf-8")
        (root / "raw" / f"test.{lang}").write_text("a\nb\n", encoding="utf-8")
    (root / "prep.json").write_text(json.dumps({
        "options": {"src": "de", "tgt": "en"}, "fingerprint": "0" * 64,
        "outputs": {"bin_dir": "bin", "spm_model": "spm.model", "binarized_sentences": {"train": 2, "test": 2}},
    }), encoding="utf-8")
    return root


class Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def commands_given(checkpoint, data, out):
    return {
        "lskd-eval bleu": (eval_main, ["bleu", "--checkpoint", checkpoint, "--data", data, "--out", out]),
        "lskd-eval stability": (eval_main, ["stability", "--checkpoint", checkpoint, "--data", data, "--out", out]),
        "lskd-eval project": (eval_main, ["project", "--checkpoints", checkpoint, "--data", data, "--out", f"{out}/p.png"]),
        "lskd-dump-topk": (dump_topk_main, [f"{data}/bin", "--teacher-path", checkpoint, "--source-lang", "de",
                                            "--target-lang", "en", "--k", "2", "--out", out]),
        "lskd-distill-corpus": (distill_main, ["--data", data, "--teacher-path", checkpoint, "--out", out]),
    }


from data_prep.distill import main as distill_main  # noqa: E402
from data_prep.dump_topk import main as dump_topk_main  # noqa: E402
from eval.cli import main as eval_main  # noqa: E402

COMMANDS = sorted(commands_given("c", "d", "o"))


@pytest.mark.parametrize("kind", ["missing", "refused"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_or_refused_checkpoint_is_one_line_in_every_script(tmp_path, capsys, monkeypatch, command, kind):
    monkeypatch.delenv("LSKD_DEBUG", raising=False)
    checkpoint = tmp_path / f"{kind}.pt"
    if kind == "refused":
        torch.save({"model": {}, "cfg": {"criterion": Payload()}}, checkpoint)
    main, argv = commands_given(str(checkpoint), str(fake_prepared(tmp_path / "data")), str(tmp_path / "out"))[command]
    assert main(argv) == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"{command.split()[0]}: error: "), captured.err
    assert str(checkpoint) in error[0] and ("checkpoint not found" if kind == "missing" else "builtins.print (at cfg.criterion)") in error[0]
    assert "weights_only=False" not in error[0] and "TORCH_FORCE" not in error[0]
    assert "payload ran" not in captured.out
    assert not (tmp_path / "out").exists()  # failed before writing anything (no options.json left behind)


def _prepare_argv(tmp_path):
    return ["bible", "--out", str(tmp_path / "out")]


def _distill_argv(tmp_path):
    return ["--data", str(tmp_path / "data"), "--teacher-path", str(tmp_path / "t.pt"), "--out", str(tmp_path / "out")]


COUNT_FLAGS = [  # (script, its module, argv before the flag, flag, bad value, minimum)
    ("lskd-prepare", "data_prep.cli", _prepare_argv, "--limit-train", "-5", 1),  # [:-5] dropped the last 5 pairs
    ("lskd-prepare", "data_prep.cli", _prepare_argv, "--limit-test", "0", 1),
    ("lskd-prepare", "data_prep.cli", _prepare_argv, "--workers", "0", 1),  # fairseq-preprocess: size // 0, late
    ("lskd-prepare", "data_prep.cli", _prepare_argv, "--vocab-size", "8", 16),  # refused only after the fetch
    ("lskd-distill-corpus", "data_prep.distill", _distill_argv, "--chunk-size", "0", 1),  # range() traceback
    ("lskd-distill-corpus", "data_prep.distill", _distill_argv, "--num-shards", "0", 1),
    ("lskd-distill-corpus", "data_prep.distill", _distill_argv, "--max-chunks", "-1", 1),  # skipped the last chunk forever
    ("lskd-distill-corpus", "data_prep.distill", _distill_argv, "--workers", "ten", 1),
    ("lskd-distill-corpus", "data_prep.distill", _distill_argv, "--max-source-tokens", "1", 2),  # all "too long"
    ("lskd-eval stability", "eval.cli", lambda p: ["stability", "--checkpoint", str(p / "t.pt"), "--data", str(p / "data"),
                                                "--out", str(p / "out")], "--max-classes", "0", 1),  # "over 0 classes"
    ("lskd-eval compare", "eval.cli", lambda p: ["compare", "--baseline", "a", "--system", "b", "--ref", "r"],
     "--samples", "-5", 1),  # sacrebleu used 1000 and the record said -5
    ("lskd-vision-project", "eval.vision_project", lambda p: ["--checkpoints", "c.pt", "--classes", "a", "b", "c",
                                                           "--out", str(p / "o.png")],
     "--limit", "0", 1),
    ("lskd-train", "lskd.train.cli", lambda p: ["config.yaml"], "--stop-after-epochs", "-1", 1),
    ("lskd-eval stability", "eval.cli", lambda p: ["stability", "--checkpoint", str(p / "t.pt"), "--data", str(p / "data"),
                                                "--out", str(p / "out")], "--max-tokens", "0", 1),  # 1 sentence a batch, silently
    ("lskd-dump-topk", "data_prep.dump_topk", lambda p: [str(p / "bin"), "--teacher-path", str(p / "t.pt"),
                                                      "--out", str(p / "out")], "--max-tokens", "0", 1),
]


@pytest.mark.parametrize("script,module,argv,flag,value,minimum", COUNT_FLAGS, ids=[f"{c[0]} {c[3]}" for c in COUNT_FLAGS])
def test_a_count_flag_below_its_minimum_is_refused_before_any_work(tmp_path, capsys, script, module, argv, flag, value,
                                                                   minimum):
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([*argv(tmp_path), flag, value])
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
    assert f"error: argument {flag}: expected an integer >= {minimum}, got '{value}'" in capsys.readouterr().err


OUT_DIRECTORY_SCRIPTS = [  # (script, its module, argv without --out)
    ("lskd-eval bleu", "eval.cli", lambda p: ["bleu", "--checkpoint", str(p / "t.pt"), "--data", str(p / "data")]),
    ("lskd-eval speed", "eval.cli", lambda p: ["speed", "--checkpoint", str(p / "t.pt"), "--data", str(p / "data")]),
    ("lskd-eval stability", "eval.cli", lambda p: ["stability", "--checkpoint", str(p / "t.pt"), "--data", str(p / "data")]),
    ("lskd-export", "eval.export", lambda p: ["--checkpoint", str(p / "t.pt"), "--data", str(p / "data")]),
    ("lskd-prepare", "data_prep.cli", lambda p: ["bible"]),
    ("lskd-dump-topk", "data_prep.dump_topk", lambda p: [str(p / "bin"), "--teacher-path", str(p / "t.pt")]),
    ("lskd-distill-corpus", "data_prep.distill", lambda p: ["--data", str(p / "data"), "--teacher-path", str(p / "t.pt")]),
]


@pytest.mark.parametrize("script,module,argv", OUT_DIRECTORY_SCRIPTS, ids=[c[0] for c in OUT_DIRECTORY_SCRIPTS])
@pytest.mark.parametrize("below", [False, True], ids=["the file", "a folder under it"])
def test_an_output_directory_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, script, module, argv, below):
    """``lskd-eval bleu --out FILE`` used to decode the whole split, then stop in mkdir with a traceback."""
    import importlib

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out" if below else blocker
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([*argv(tmp_path), "--out", str(out)])
    assert stop.value.code == 2 and blocker.read_text() == "not a directory"
    assert f"error: argument --out: {out}: {blocker} is a file, not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("script,module,argv", [
    ("lskd-vision-project", "eval.vision_project", ["--checkpoints", "c.pt", "--classes", "a", "b", "c"]),
    ("lskd-eval project", "eval.cli", ["project", "--checkpoints", "c.pt", "--data", "d"]),
])
def test_a_picture_file_matplotlib_cannot_write_is_refused_before_any_work(tmp_path, capsys, script, module, argv):
    """Before: matplotlib's ValueError traceback at the end, after every activation was computed."""
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([*argv, "--out", str(tmp_path / "picture.txt")])
    assert stop.value.code == 2
    err = capsys.readouterr().err  # the formats are matplotlib's own list
    assert f"argument --out: {tmp_path / 'picture.txt'}: give a picture file ending in ." in err and ".png, " in err


def test_empty_files_and_a_missing_data_directory_are_one_line(tmp_path, capsys):
    from data_prep.dump_topk import main as dump_main
    from eval.cli import main as eval_main

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert eval_main(["compare", "--baseline", str(empty), "--system", str(empty), "--ref", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == "lskd-eval: error: no references to score against"  # an IndexError before
    assert dump_main([str(tmp_path / "nodir"), "--teacher-path", "t.pt", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (f"lskd-dump-topk: error: {tmp_path / 'nodir'}: no such directory (give "
                                               f"fairseq-binarized data, e.g. PREP_DIR/bin)")


@pytest.mark.parametrize("command", ["lskd-eval bleu", "lskd-eval stability", "lskd-eval project"])
def test_a_split_the_data_lacks_is_named_before_any_model_is_read(tmp_path, capsys, command):
    """Before: lskd-eval bleu and project ended in fairseq's "Dataset not found" traceback (bleu after an export)."""
    data = fake_prepared(tmp_path / "data")
    main, argv = commands_given(str(tmp_path / "missing.pt"), str(data), str(tmp_path / "out"))[command]
    assert main(argv + ["--split", "tset"]) == 2
    assert capsys.readouterr().err.strip() == f"{command.split()[0]}: error: {data} has no split 'tset' (it has train, test)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
@pytest.mark.parametrize("command,engine", [("lskd-eval bleu", "fairseq"), ("lskd-eval bleu", "ctranslate2"),
                                            ("lskd-distill-corpus", "fairseq"), ("lskd-eval speed", "ctranslate2"),
                                            ("lskd-dump-topk", "fairseq")])
def test_gpu_without_a_cuda_device_is_one_line_before_any_work(tmp_path, capsys, command, engine):
    """Before: torch's "Torch not compiled with CUDA enabled" assertion or CTranslate2's "CUDA failed",
    as tracebacks after the model was read (or exported)."""
    data = fake_prepared(tmp_path / "data")
    if command == "lskd-eval speed":
        main, argv = eval_main, ["speed", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(data), "--out",
                                 str(tmp_path / "out"), "--engines", "ct2-int8", "--gpu"]
    else:
        main, argv = commands_given(str(tmp_path / "c.pt"), str(data), str(tmp_path / "out"))[command]
        argv = argv + ["--gpu"] + ["--engine", engine] * (command != "lskd-dump-topk")
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"{command.split()[0]}: error: --gpu: {engine} sees no CUDA device on "
                                               f"this machine (leave out --gpu to run on the CPU)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,message", [
    (["--nbest", "3"], "--nbest 3 without --seq-inter: only the best hypothesis would be kept; add --seq-inter to "
                       "choose among the n-best, or leave out --nbest"),
    (["--filtered", "copy-reference", "--score-quantile", "0.1"],
     "--score-quantile, --filtered copy-reference set how --filter leaves outputs out, but --filter is not given "
     "(without it every output is kept and only measured)"),
])
def test_distillation_flags_that_would_do_nothing_are_refused(tmp_path, capsys, flags, message):
    """Before: `--nbest 2` alone and `--filtered copy-reference` without --filter were silently ignored."""
    main, argv = commands_given(str(tmp_path / "t.pt"), str(fake_prepared(tmp_path / "data")),
                                str(tmp_path / "out"))["lskd-distill-corpus"]
    assert main(argv + flags) == 2
    assert capsys.readouterr().err.strip() == f"lskd-distill-corpus: error: {message}"
    with_their_use = ["--seq-inter"] if flags[0] == "--nbest" else ["--filter"]
    assert main(argv + flags + with_their_use) == 2
    assert "teacher checkpoint not found" in capsys.readouterr().err  # accepted: the next check stops it


# -- a read-only or full output location: one line naming it, before any expensive work ---------------------------

def _work_done(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} ran before the output location was checked")
    return refuse


def _corpus(tmp_path):
    """A tiny parallel corpus outside the output location: PREFIX.de / PREFIX.en per split."""
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            (tmp_path / f"{split}.{lang}").write_text("ein Satz\nnoch einer\n" if lang == "de" else "a line\nanother\n")
    return [f"--{split}={tmp_path / split}" for split in ("train", "valid", "test")]


def _fake_module(monkeypatch, name, **functions):
    """``name`` in sys.modules as a module of ``functions`` (the expensive step, which must not run)."""
    import types

    module = types.ModuleType(name)
    module.__dict__.update(functions)
    monkeypatch.setitem(sys.modules, name, module)


def _disk_scripts():
    """script -> (main, argv for an output location LOC and inputs under TMP, work that must not run first).
    ``work(monkeypatch)`` replaces the expensive step with one that fails the test if it runs."""
    import data_prep.bible
    import data_prep.pipeline
    import eval.vision_project
    from data_prep.cli import main as prepare_main
    from eval.export import main as export_main
    from eval.report import main as report_main
    from lskd.train.cli import main as train_main

    def train_argv(loc, tmp):
        (tmp / "c.yaml").write_text("model:\n  name: resnet8\n")
        return [str(tmp / "c.yaml"), "--out-dir", str(loc / "run")]

    return {
        "lskd-prepare bible": (prepare_main, lambda loc, tmp: ["bible", "--out", str(loc / "out")],
                               lambda mp: mp.setattr(data_prep.bible, "fetch_bible_db", _work_done("the Bible's fetch"))),
        "lskd-prepare text": (prepare_main,
                              lambda loc, tmp: ["text", "--src", "de", "--tgt", "en", "--out", str(loc / "out"),
                                                *_corpus(tmp)],
                              lambda mp: mp.setattr(data_prep.pipeline, "normalise", _work_done("normalisation"))),
        "lskd-prepare iwslt14": (prepare_main, lambda loc, tmp: ["iwslt14", "--archive", str(tmp / "de-en.tgz"),
                                                                 "--out", str(loc / "out")],
                                 lambda mp: _fake_module(mp, "data_prep.iwslt14",
                                                         extract_iwslt14=_work_done("the archive's extraction"))),
        "lskd-export": (export_main, lambda loc, tmp: ["--checkpoint", str(tmp / "c.pt"), "--data",
                                                       str(fake_prepared(tmp / "data")), "--out", str(loc / "model")],
                        lambda mp: _fake_module(mp, "fairseq_plugins.ctranslate2_export",
                                                export_checkpoint=_work_done("the export"))),
        "lskd-report": (report_main, lambda loc, tmp: [str(loc)], lambda mp: None),  # reads a few records: no work
        "lskd-train": (train_main, train_argv,
                       lambda mp: _fake_module(mp, "lskd.train.trainer", Trainer=_work_done("training"))),
        "lskd-vision-project": (eval.vision_project.main,
                                lambda loc, tmp: ["--checkpoints", str(tmp / "c.pt"), "--classes", "a", "b", "c",
                                                  "--out", str(loc / "p.png")],
                                lambda mp: mp.setattr(eval.vision_project, "penultimate_points",
                                                      _work_done("the activations"))),
    }


DISK_SCRIPTS = ["lskd-prepare bible", "lskd-prepare text", "lskd-prepare iwslt14", "lskd-export", "lskd-report",
                "lskd-train", "lskd-vision-project"]
DISK_ERRORS = {"read-only": errno.EROFS, "full": errno.ENOSPC}


def refuse_writes(monkeypatch, location, code):
    """Every directory made and every file opened for writing under ``location`` fails with ``code``, as
    on a read-only (EROFS) or full (ENOSPC) disk: ``os.open`` (tempfile's probe), ``open`` and ``os.mkdir``."""
    import builtins
    import io

    root = location.resolve()
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def under(path):
        return isinstance(path, (str, bytes, os.PathLike)) and Path(os.fsdecode(path)).resolve().is_relative_to(root)

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if under(path) and not os.path.exists(path):  # an existing directory is EEXIST, even read-only
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    for module, name, replacement in ((os, "open", os_open), (builtins, "open", open_), (io, "open", open_),
                                      (os, "mkdir", mkdir)):
        monkeypatch.setattr(module, name, replacement)


@pytest.fixture
def disk(request, tmp_path, monkeypatch):
    """(location, errno): a directory that cannot be written, read-only or full; injected errors, or a real
    64 KiB tmpfs where this process may mount one (root), else skipped."""
    kind, how = request.param
    location = tmp_path / "disk"
    location.mkdir()
    if how == "injected":
        refuse_writes(monkeypatch, location, DISK_ERRORS[kind])
        yield location, DISK_ERRORS[kind]
        return
    options = "size=64k,ro" if kind == "read-only" else "size=64k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(location)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        if kind == "full":
            filler = os.open(location / "filler", os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):
                while os.write(filler, b"\0" * 4096):
                    pass
            os.close(filler)
        yield location, DISK_ERRORS[kind]
    finally:
        subprocess.run(["umount", "-l", str(location)], check=True)


@pytest.mark.parametrize("disk", [(kind, how) for kind in DISK_ERRORS for how in ("injected", "tmpfs")], indirect=True,
                         ids=lambda param: "-".join(param))
@pytest.mark.parametrize("script", DISK_SCRIPTS)
def test_an_output_location_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, disk,
                                                                                script):
    """Before: lskd-prepare bible fetched the Bible, lskd-train read the data and trained, lskd-export and
    lskd-vision-project did their work, all before the first write failed."""
    monkeypatch.delenv("LSKD_DEBUG", raising=False)
    location, code = disk
    main, argv, work = _disk_scripts()[script]
    argv = argv(location, tmp_path)
    work(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script.split()[0]}: error: {location}"), err
    assert os.strerror(code) in lines[0] and "Traceback" not in err
