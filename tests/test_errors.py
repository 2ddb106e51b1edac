"""One way to report a known error from every console script: one line, exit status 2, traceback on demand."""
import json
import subprocess
import sys

import pytest
import torch

from lskd.errors import LSKDError, console_script, one_line


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


@pytest.mark.parametrize("flags,message", [(["--chunk-size", "0"], "--chunk-size 0 must be at least 1"),
                                           (["--num-shards", "0"], "--num-shards 0 must be at least 1")])
def test_distill_refuses_a_count_below_one_before_writing_anything(tmp_path, capsys, flags, message):
    # before: --chunk-size 0 was a traceback (range() arg 3 must not be zero), --num-shards 0 a riddle
    argv = ["--data", str(fake_prepared(tmp_path / "data")), "--teacher-path", str(tmp_path / "t.pt"),
            "--out", str(tmp_path / "out"), *flags]
    assert distill_main(argv) == 2
    assert capsys.readouterr().err.strip() == f"lskd-distill-corpus: error: {message}"
    assert not (tmp_path / "out").exists()
