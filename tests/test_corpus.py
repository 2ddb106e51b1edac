"""Strict reading of parallel text: line ends, line counts, bad bytes, empty splits and empty sides."""
import io
import sqlite3
import tarfile

import pytest

from lskd.corpus import CorpusError, count_lines, has_visible_text, read_lines, read_parallel, write_lines
from lskd.provenance import sha256_file

#: Characters that ``str.splitlines`` breaks at but that sit inside one line of real text.
LINE_BREAKS_INSIDE_A_LINE = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"]


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


def test_pairs_are_read_as_they_are_and_emptiness_is_left_to_the_pipeline(tmp_path):
    src = write(tmp_path / "t.de", b"eins\n\nzwei\ndrei\n")
    tgt = write(tmp_path / "t.en", b"one\ntwo\n   \nthree\n")
    split = read_parallel("train", src, tgt)
    assert split.source == ["eins", "", "zwei", "drei"]
    assert split.target == ["one", "two", "   ", "three"]


def test_visible_text_ignores_separators_controls_and_format_characters():
    for empty in ["", "  \t", "\u200b", "\x07", "\ufeff", "\u00ad\u200d\u200e", "\u2028\u3000"]:
        assert not has_visible_text(empty), repr(empty)
    for text in ["a", "\u200bx", ".", "\u0301a", "中"]:
        assert has_visible_text(text), repr(text)
    # what fairseq's tokenize_line splits away as whitespace (Python's \s) prints nothing either
    assert not any(has_visible_text(chr(code)) for code in range(0x110000) if chr(code).isspace())


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


def tar_with(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("char", LINE_BREAKS_INSIDE_A_LINE, ids=lambda c: f"U+{ord(c):04X}")
def test_every_reader_keeps_a_line_break_character_inside_its_line(tmp_path, char):
    """Corpus files, the IWSLT'14 archive, distillation chunks and the Bible database: each character
    stays inside its line, and CRLF line ends are line ends. (Decoders hand hypotheses over in
    memory, by sentence id: no decoder output is parsed as text.)"""
    de = ["eins zwei drei", f"vier{char}fünf sechs", "sieben acht neun"]
    en = ["one two three", "four five six", f"seven{char}eight nine"]
    crlf = lambda lines: "".join(f"{line}\r\n" for line in lines).encode()  # noqa: E731

    # plain files (lskd-prepare text, lskd-eval, the pipeline's own raw/norm/spm files)
    split = read_parallel("train", write(tmp_path / "t.de", crlf(de)), write(tmp_path / "t.en", crlf(en)))
    assert (split.source, split.target) == (de, en)

    # the IWSLT'14 archive: transcripts and one test set, whose second segment holds the character
    from data_prep.iwslt14 import extract_iwslt14

    segments = lambda lang: crlf([f'<seg id="1"> {lang} one </seg>', f'<seg id="2"> {lang}{char}two </seg>'])  # noqa: E731
    archive = tar_with(tmp_path / "de-en.tgz", {
        "de-en/train.tags.de-en.de": crlf(["<url>u</url>", *de]), "de-en/train.tags.de-en.en": crlf(["<url>u</url>", *en]),
        "de-en/IWSLT14.TED.tst2010.de-en.de.xml": segments("de"), "de-en/IWSLT14.TED.tst2010.de-en.en.xml": segments("en"),
    })
    paths, _ = extract_iwslt14(archive, tmp_path / "iwslt", "de", "en")
    assert (read_lines(paths["train"][0]), read_lines(paths["train"][1])) == (de, en)
    assert read_lines(paths["test"][1]) == ["en one", f"en{char}two"]

    # chunks of lskd-distill-corpus, written as it writes them
    from data_prep.distill import chunk_path, collect, write_chunk

    rows = [{"id": i, "status": "decoded", "pieces": f"\u2581{line}"} for i, line in enumerate(en)]
    write_chunk(chunk_path(tmp_path, 0, 3), rows, "inputs", {"seconds": 0.0})
    assert collect(tmp_path, 3, 3, fingerprint="inputs") == rows

    # Bible verses: one database row is one line, whatever it holds
    from data_prep.bible import extract_parallel

    db = tmp_path / "bible.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)")
        c.executemany("INSERT INTO bible VALUES (0, ?, 1, 1, ?, ?)",
                      [(code, v, text) for code, side in (("e", de), ("k", en)) for v, text in enumerate(side)])
    pairs = extract_parallel(db, "e", "k")["train"]
    write_lines(tmp_path / "b.de", [s for s, _ in pairs])
    assert len(pairs) == 3 and len(read_lines(tmp_path / "b.de")) == 3
