"""lskd.allocator: glibc malloc settings applied from inside a process, with an opt-out."""
import ctypes.util
import platform

import pytest

from lskd.allocator import OPT_OUT, keep_freed_memory


def test_opt_out_keeps_glibcs_defaults(monkeypatch):
    monkeypatch.setenv(OPT_OUT, "0")
    assert keep_freed_memory() is False


def test_settings_given_at_start_are_left_alone(monkeypatch):
    monkeypatch.delenv(OPT_OUT, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=33554432")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("mallopt called although GLIBC_TUNABLES has it"))
    assert keep_freed_memory() is True


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_mallopt_is_applied_on_glibc(monkeypatch, caplog):
    monkeypatch.delenv(OPT_OUT, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with caplog.at_level("INFO", logger="lskd.allocator"):
        assert keep_freed_memory() is True
    assert f"{OPT_OUT}=0" in caplog.text and ctypes.util.find_library("c")
