"""One way to report a known error from every console script: one line, exit status 2, traceback on demand."""
import subprocess
import sys

import pytest

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
