"""Strict reading of parallel text: line counts, bad bytes, empty splits and empty-side pairs."""
import pytest

from lskd.corpus import CorpusError, count_lines, read_lines, read_parallel, write_lines
from lskd.provenance import sha256_file


def write(path, text: bytes):
    path.write_bytes(text)
    return path


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    src = write(tmp_path / "train.de", b"a\nb\nc\n")
    tgt = write(tmp_path / "train.en", b"a\nb\n")
    with pytest.raises(CorpusError) as err:
        read_parallel("train", src, tgt)
    message = str(err.value)
    assert str(src) in message and "3 lines" in message
    assert str(tgt) in message and "2 lines" in message


def test_non_utf8_byte_names_file_and_line(tmp_path):
    bad = write(tmp_path / "valid.de", "gut\nschön\n".encode() + b"caf\xe9\n")
    with pytest.raises(CorpusError, match=r"valid\.de, line 3: not valid UTF-8 \(byte 0xe9"):
        read_lines(bad)


def test_empty_split_is_an_error(tmp_path):
    src = write(tmp_path / "test.de", b"")
    tgt = write(tmp_path / "test.en", b"")
    with pytest.raises(CorpusError, match="test split is empty"):
        read_parallel("test", src, tgt)


def test_empty_side_pairs_are_dropped_and_counted(tmp_path):
    src = write(tmp_path / "t.de", b"eins\n\nzwei\ndrei\n")
    tgt = write(tmp_path / "t.en", b"one\ntwo\n   \nthree\n")
    split = read_parallel("train", src, tgt)
    assert split.source == ["eins", "drei"]
    assert split.target == ["one", "three"]
    assert split.dropped_empty == 2


def test_crlf_and_missing_final_newline(tmp_path):
    path = write(tmp_path / "x.txt", b"a\r\nb\r\nc")
    assert read_lines(path) == ["a", "b", "c"]
    assert count_lines(path) == 3


def test_write_lines_refuses_embedded_newline(tmp_path):
    with pytest.raises(CorpusError, match="item 2 contains a newline"):
        write_lines(tmp_path / "out.txt", ["fine", "not\nfine"])


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = write(tmp_path / "f", b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
