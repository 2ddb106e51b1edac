"""``lskd-prepare bible``: book-level splits, translation codes, and the real database end to end."""
import json
import sqlite3

import pytest

from data_prep.bible import _clean, extract_parallel, resolve_bible, split_of
from lskd.corpus import CorpusError


def test_books_go_to_their_split():
    assert split_of(43) == "test"  # John
    assert split_of(8) == "valid" and split_of(57) == "valid"  # Ruth, Philemon
    assert {split_of(b) for b in (1, 40, 41, 42, 44, 66)} == {"train"}


def test_translation_codes_are_checked_against_languages():
    assert resolve_bible("de", None) == "e" and resolve_bible("en", None) == "k"
    assert resolve_bible("de", "s") == "s"
    with pytest.raises(CorpusError, match="Bible 'k' is in 'en', not 'de'"):
        resolve_bible("de", "k")
    with pytest.raises(CorpusError, match="unknown Bible code 'x'"):
        resolve_bible("de", "x")
    with pytest.raises(CorpusError, match="no Bible in the database for language 'xx'"):
        resolve_bible("xx", None)


def test_cross_reference_markers_and_spacing_are_removed():
    assert _clean("Denn also (3:19) hat  Gott (3:20-21) die Welt") == "Denn also hat Gott die Welt"


def test_extract_joins_on_book_chapter_verse(tmp_path):
    db = tmp_path / "bible.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)")
        rows = [("e", 1, 1, 1, "Im Anfang"), ("k", 1, 1, 1, "In the beginning"),
                ("e", 43, 3, 16, "Denn also"), ("k", 43, 3, 16, "For God"),
                ("e", 8, 1, 2, "nur deutsch"),  # no English verse: not a pair
                ("k", 57, 1, 1, "Paul"), ("e", 57, 1, 1, "Paulus")]
        c.executemany("INSERT INTO bible VALUES (0, ?, ?, ?, ?, ?)", rows)
    pairs = extract_parallel(db, "e", "k")
    assert pairs == {"train": [("Im Anfang", "In the beginning")], "valid": [("Paulus", "Paul")],
                     "test": [("Denn also", "For God")]}


@pytest.mark.slow
def test_real_bible_slice_counts_and_manifest(bible_slice):
    prep = json.loads((bible_slice / "prep.json").read_text())
    assert prep["bible"]["extracted_pairs"] == {"train": 300, "valid": 110, "test": 879}
    assert prep["outputs"]["binarized_sentences"] == {"train": 300, "valid": 110, "test": 879}
    test_en = (bible_slice / "raw" / "test.en").read_text(encoding="utf-8").splitlines()
    assert len(test_en) == 879
    assert test_en[0] == "In the beginning was the Word, and the Word was with God, and the Word was God."
    assert (bible_slice / "bin" / "dict.de.txt").read_bytes() == (bible_slice / "bin" / "dict.en.txt").read_bytes()


def test_limits_keep_the_first_train_and_test_pairs_and_are_recorded(tmp_path, monkeypatch):
    from data_prep import bible

    db = tmp_path / "bible.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)")
        for book, verses in ((1, 3), (43, 3), (8, 2)):  # Genesis: train, John: test, Ruth: valid
            for verse in range(1, verses + 1):
                c.execute("INSERT INTO bible VALUES (0, 'e', ?, 1, ?, ?)", (book, verse, f"de {book}:{verse}"))
                c.execute("INSERT INTO bible VALUES (0, 'k', ?, 1, ?, ?)", (book, verse, f"en {book}:{verse}"))
    monkeypatch.setattr(bible, "fetch_bible_db", lambda: db)
    paths, summary = bible.write_bible_corpus(tmp_path / "out", "de", "en", "e", "k", limit_train=2, limit_test=1)
    lines = {split: [p.read_text(encoding="utf-8").splitlines() for p in pair] for split, pair in paths.items()}
    assert lines == {"train": [["de 1:1", "de 1:2"], ["en 1:1", "en 1:2"]], "test": [["de 43:1"], ["en 43:1"]],
                     "valid": [["de 8:1", "de 8:2"], ["en 8:1", "en 8:2"]]}
    record = summary["bible"]
    assert (record["limit_train"], record["limit_test"]) == (2, 1)
    assert record["extracted_pairs"] == {"train": 2, "valid": 2, "test": 1}


def test_one_language_on_both_sides_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from data_prep import bible
    from data_prep.cli import main as prepare_main

    def no_download():
        raise AssertionError("the Bible was fetched before the languages were checked")

    monkeypatch.setattr(bible, "fetch_bible_db", no_download)
    code = prepare_main(["bible", "--src", "de", "--tgt", "de", "--src-bible", "s", "--out", str(tmp_path / "d")])
    assert code == 2
    assert capsys.readouterr().err == ("lskd-prepare: error: source and target language are both 'de': they must "
                                       "differ (each side's files are named SPLIT.de, one would overwrite the other)\n")
    assert not (tmp_path / "d").exists()
