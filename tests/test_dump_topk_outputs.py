"""lskd-dump-topk's output is never silently wrong: one writer per --out, splits renamed into place
complete, any kill recoverable, a full or read-only disk one line before the teacher's pass.

Each test loads the real tiny teacher of conftest; the interrupted runs are real processes killed with
SIGKILL at an injected point."""
import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from lskd.output_files import LOCK_FILE, writer_lock
from lskd.topk_cache import MANIFEST, TopKCache
from test_too_long import one_error_line

pytestmark = pytest.mark.slow

SPLITS = ("valid", "train")  # train: 300 sentences, the test split has 879
ARRAYS = ("offsets.npy", "indices.npy", "probs.npy")


def dump_args(bible_slice, checkpoint, out, *extra):
    return [str(bible_slice / "bin"), "--teacher-path", str(checkpoint), "--k", "4", "--out", str(out),
            "--splits", ",".join(SPLITS), "--max-tokens", "8192", *extra]


@pytest.fixture
def no_teacher_pass(monkeypatch):
    """Fail the test if the teacher's pass starts: the errors below must come before it."""
    def teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher's pass started")

    monkeypatch.setattr("fairseq_plugins.teacher.teacher_log_probs", teacher_pass)


@pytest.fixture(scope="module")
def uninterrupted(bible_slice, trained_checkpoint, tmp_path_factory):
    from data_prep.dump_topk import main as dump_main

    out = tmp_path_factory.mktemp("uninterrupted") / "cache"
    assert dump_main(dump_args(bible_slice, trained_checkpoint, out)) == 0
    return out


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(bible_slice, trained_checkpoint, tmp_path, capsys,
                                                                   no_teacher_pass):
    """Two lskd-dump-topk on one --out: the second truncated the first's arrays, and the first still
    wrote its manifest over 42,863 all-zero rows."""
    from data_prep.dump_topk import main as dump_main

    out = tmp_path / "cache"
    with writer_lock(out):  # the first writer, mid-pass
        assert dump_main(dump_args(bible_slice, trained_checkpoint, out)) == 2
    assert one_error_line(capsys, "lskd-dump-topk") == (
        f"lskd-dump-topk: error: {out} is being written by another process (pid {os.getpid()}): wait for it to "
        f"finish, or give another output directory")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


KILLER = """
import os, signal, sys
from pathlib import Path

import lskd.topk_cache
from data_prep.dump_topk import main

point, argv = sys.argv[1], sys.argv[2:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "teacher pass":  # the train split, after 5 sentences
    write = lskd.topk_cache.TopKCacheWriter.write
    def dying_write(self, *args):
        write(self, *args)
        if self.directory.name == "train" and self.written.sum() == 5:
            die()
    lskd.topk_cache.TopKCacheWriter.write = dying_write
elif point == "rename":  # the finished train split, into its place
    rename = os.rename
    os.rename = lambda src, dst: die() if Path(dst).name == "train" else rename(src, dst)
elif point == "manifest write":  # the train split's, written but not yet replacing its temporary file
    replace = os.replace
    os.replace = lambda src, dst: die() if Path(dst).name == "manifest.json" and ".train." in str(dst) else replace(src, dst)
sys.exit(main(argv))
"""


@pytest.mark.parametrize("point", ["teacher pass", "rename", "manifest write"])
def test_a_kill_at_any_point_then_a_rerun_equals_an_uninterrupted_run(bible_slice, trained_checkpoint, uninterrupted,
                                                                      tmp_path, point, capsys):
    from data_prep.dump_topk import main as dump_main

    out = tmp_path / "cache"
    args = dump_args(bible_slice, trained_checkpoint, out)
    killed = subprocess.run([sys.executable, "-c", KILLER, point, *args], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    for split in (p for p in out.iterdir() if not p.name.startswith(".")):  # what is in place is whole
        TopKCache(split)
    assert (out / "valid" / MANIFEST).exists() and not (out / "train").exists()

    assert dump_main(args) == 0
    assert f"valid: kept {out / 'valid'}" in capsys.readouterr().out  # finished before the kill
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, *sorted(SPLITS)]  # no leftovers
    for split in SPLITS:
        for name in ARRAYS:
            assert np.array_equal(np.load(out / split / name), np.load(uninterrupted / split / name)), (split, name)
        assert TopKCache(out / split).manifest["files"] == TopKCache(uninterrupted / split).manifest["files"]


def test_a_full_disk_is_one_line_before_the_teacher_pass(bible_slice, trained_checkpoint, tmp_path):
    """A 1 MB tmpfs (a real full disk): before, the memory-mapped arrays were "Bus error", exit 135."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        args = dump_args(bible_slice, trained_checkpoint, disk / "cache")
        args[args.index("--k") + 1] = "500"  # valid: > 10 MB of arrays
        result = subprocess.run([sys.executable, "-m", "data_prep.dump_topk", *args], cwd=REPO, capture_output=True,
                                text=True)
        assert result.returncode == 2, result.stderr[-2000:]
        assert re.fullmatch(rf"lskd-dump-topk: error: {re.escape(str(disk))}/cache/\.valid\.partial-\d+/indices\.npy: "
                            rf"not enough disk space for \d+ bytes \(No space left on device\)",
                            result.stderr.strip().splitlines()[-1])
        assert "top-500 valid" not in result.stdout + result.stderr  # no teacher pass began
        assert sorted(p.name for p in (disk / "cache").iterdir()) == [LOCK_FILE]  # its space given back
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def refuse_fallocate(monkeypatch, out):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    return rf"{re.escape(str(out))}/\.valid\.partial-\d+/indices\.npy: not enough disk space for \d+ bytes " \
           rf"\(No space left on device\)"


def refuse_writing(monkeypatch, out):
    import tempfile

    probe = tempfile.NamedTemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return probe(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    return rf"{re.escape(str(out))}: cannot write here \(Read-only file system\)"


@pytest.mark.parametrize("inject", [refuse_fallocate, refuse_writing], ids=["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_one_line_before_the_teacher_pass(bible_slice, trained_checkpoint, tmp_path,
                                                                      monkeypatch, capsys, no_teacher_pass, inject):
    from data_prep.dump_topk import main as dump_main

    out = tmp_path / "cache"
    expected = inject(monkeypatch, out)
    assert dump_main(dump_args(bible_slice, trained_checkpoint, out)) == 2
    assert re.fullmatch(f"lskd-dump-topk: error: {expected}", one_error_line(capsys, "lskd-dump-topk"))
    assert not [p for p in out.iterdir() if p.name != LOCK_FILE]  # nothing half-made left
