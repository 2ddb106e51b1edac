"""``lskd-prepare iwslt14`` on a small archive built in the official de-en.tgz layout."""
import io
import json
import tarfile

import pytest

from data_prep.cli import main as prepare_main
from data_prep.iwslt14 import extract_iwslt14
from lskd.corpus import CorpusError, read_lines

META = ["<url>http://www.ted.com/talks/x.html</url>", "<keywords>talks</keywords>", "<talkid>1</talkid>"]


def transcript(lang, n):
    lines = []
    for i in range(n):
        if i % 10 == 0:
            lines += META
            lines.append(f"<title>Talk {i} {lang}</title>")
            lines.append(f"<description>About talk {i} {lang}</description>")
        lines.append(f"{'Satz' if lang == 'de' else 'sentence'} number {i} is here .")
    return lines


def xml(name, lang, n):
    segs = [f'<seg id="{i}"> {name} {lang} segment {i} it\u2019s </seg>' for i in range(1, n + 1)]
    return ["<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "<mteval>", f'<doc docid="1">', *segs, "</doc>", "</mteval>"]


def build_archive(path, train=50, sets=(("TED.dev2010", 3), ("TEDX.dev2012", 2), ("TED.tst2010", 4),
                                        ("TED.tst2011", 2), ("TED.tst2012", 3)), text=None, segments=None):
    """An archive in the official layout; ``text`` (lang -> lines) replaces the generated transcript
    text and ``segments`` (lang -> {set name: segment texts}) the generated test segments."""
    files = {f"de-en/train.tags.de-en.{lang}": transcript(lang, train) if text is None else [*META, *text[lang]]
             for lang in ("de", "en")}
    for name, n in sets:
        for lang in ("de", "en"):
            files[f"de-en/IWSLT14.{name}.de-en.{lang}.xml"] = xml(name, lang, n)
    for lang, by_set in (segments or {}).items():
        for name, texts in by_set.items():
            files[f"de-en/IWSLT14.{name}.de-en.{lang}.xml"] = [f'<seg id="{i}"> {t} </seg>' for i, t in enumerate(texts, 1)]
    with tarfile.open(path, "w:gz") as archive:
        for name, lines in files.items():
            data = ("\n".join(lines) + "\n").encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_split_follows_the_fairseq_convention(tmp_path):
    archive = build_archive(tmp_path / "de-en.tgz")
    paths, summary = extract_iwslt14(archive, tmp_path / "corpus", "de", "en")
    counts = summary["iwslt14"]["extracted_pairs"]
    # 50 sentences + 5 titles + 5 descriptions = 60 text lines, every 23rd held out (lines 23, 46)
    assert counts == {"train": 58, "valid": 2, "test": 3 + 2 + 4 + 2 + 3}
    valid_en = paths["valid"][1].read_text().splitlines()
    assert valid_en == ["sentence number 18 is here .", "sentence number 37 is here ."]
    test_de = paths["test"][0].read_text().splitlines()
    assert test_de[0] == "TED.dev2010 de segment 1 it's"  # tags stripped, curly apostrophe mapped
    assert test_de[3] == "TEDX.dev2012 de segment 1 it's"
    assert test_de[-1] == "TED.tst2012 de segment 3 it's"
    train_en = paths["train"][1].read_text().splitlines()
    assert train_en[:3] == ["Talk 0 en", "About talk 0 en", "sentence number 0 is here ."]
    assert not any("<" in line for line in train_en)


def test_en_de_direction_swaps_sides(tmp_path):
    archive = build_archive(tmp_path / "de-en.tgz")
    paths, _ = extract_iwslt14(archive, tmp_path / "corpus", "en", "de")
    assert paths["train"][0].name == "train.en"
    assert paths["train"][0].read_text().splitlines()[2] == "sentence number 0 is here ."


def test_missing_member_is_named(tmp_path):
    archive = build_archive(tmp_path / "de-en.tgz", sets=())
    with tarfile.open(archive) as a:
        assert "de-en/train.tags.de-en.de" in a.getnames()
    broken = tmp_path / "broken.tgz"
    with tarfile.open(archive) as src, tarfile.open(broken, "w:gz") as dst:
        for member in src.getmembers():
            if not member.name.endswith(".en"):
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(CorpusError, match="the archive has no train.tags.de-en.en"):
        extract_iwslt14(broken, tmp_path / "c", "de", "en")


@pytest.mark.slow
def test_cli_runs_the_shared_pipeline(tmp_path):
    archive = build_archive(tmp_path / "de-en.tgz", train=120)
    out = tmp_path / "iwslt"
    assert prepare_main(["iwslt14", "--archive", str(archive), "--out", str(out), "--vocab-size", "80",
                         "--workers", "1"]) == 0
    prep = json.loads((out / "prep.json").read_text())
    assert prep["outputs"]["binarized_sentences"] == {"train": 138, "valid": 6, "test": 14}
    assert prep["iwslt14"]["missing_test_sets"] == []


def test_length_filter_matches_clean_corpus_n():
    from data_prep.iwslt14 import clean_corpus_keeps

    assert clean_corpus_keeps("a b", "x y z")  # ratio 1.5 is kept (the script drops above it)
    assert not clean_corpus_keeps("a b", "x y z w")  # ratio 2
    assert clean_corpus_keeps(" a  b\t", "x y")  # runs of whitespace are one separator
    assert clean_corpus_keeps("a " * 175, "x " * 175)
    assert not clean_corpus_keeps("a " * 176, "x " * 176)  # more than 175 tokens
    assert not clean_corpus_keeps("", "x") and not clean_corpus_keeps("  ", "x")
    assert clean_corpus_keeps("a" * 1000, "x") and not clean_corpus_keeps("a" * 1001, "x")  # longest word


def test_split_counts_moses_tokens_like_prepare_iwslt14_sh(tmp_path):
    """fairseq's recipe filters lengths on Moses-tokenised text, where punctuation is a token.

    60 text lines (hand-derived): lines 1-10 "Ja, nein, gut, N." / "yes no good N" are 4 and 4
    words but 8 and 4 tokens (ratio 2: dropped); line 11 "Hallo!" / "hello there you" is 1 and 3
    words but 2 and 3 tokens (ratio 1.5: kept), so are lines 33 and 54; line 12 has 90 words but
    180 tokens a side (over 175: dropped); the other 46 lines have 6 tokens a side. Kept: 49 lines,
    in order 11, 13-32, 33, 34-53, 54, 55-60; the 23rd and 46th of them (lines 34 and 57) are valid.
    Counting untokenised words instead keeps 57 lines and holds out lines 24 and 48.
    """
    kinds = ["B"] * 10 + ["C", "D"] + ["A"] * 20 + ["C"] + ["A"] * 20 + ["C"] + ["A"] * 6
    texts = {"A": ("Satz Nummer {n} ist hier .", "sentence number {n} is here ."),
             "B": ("Ja, nein, gut, {n}.", "yes no good {n}"),
             "C": ("Hallo!", "hello there you"),
             "D": ("Wort, " * 90, "word, " * 90)}
    text = {lang: [texts[k][side].format(n=n).strip() for n, k in enumerate(kinds, 1)] for side, lang in enumerate(("de", "en"))}
    archive = build_archive(tmp_path / "de-en.tgz", text=text)
    paths, summary = extract_iwslt14(archive, tmp_path / "corpus", "de", "en")
    assert summary["iwslt14"]["removed_by_length_filter"] == 11
    assert summary["iwslt14"]["extracted_pairs"]["train"] == 47
    assert read_lines(paths["valid"][1]) == ["sentence number 34 is here .", "sentence number 57 is here ."]
    train_de = read_lines(paths["train"][0])
    assert train_de[0] == "Hallo!"  # kept as in the archive, not tokenised
    assert train_de.count("Hallo!") == 3 and not any(line.startswith(("Ja,", "Wort,")) for line in train_de)


def test_line_separator_inside_a_line_keeps_pairs_and_segments(tmp_path):
    """U+2028 in German line 5, English line 9 and a tst2010 segment: 40 aligned pairs, every segment."""
    text = {lang: [f"{word} {n} ist hier ." if lang == "de" else f"{word} {n} is here ." for n in range(1, 41)]
            for lang, word in (("de", "Satz"), ("en", "sentence"))}
    text["de"][4] = "Satz 5\u2028ist hier ."
    text["en"][8] = "sentence 9\u2028is here ."
    segments = {lang: {"TED.tst2010": [f"{lang} one", f"{lang}\u2028two", f"{lang} three"]} for lang in ("de", "en")}
    archive = build_archive(tmp_path / "de-en.tgz", sets=(), text=text, segments=segments)
    paths, summary = extract_iwslt14(archive, tmp_path / "corpus", "de", "en")
    assert summary["iwslt14"]["extracted_pairs"] == {"train": 39, "valid": 1, "test": 3}
    train = list(zip(read_lines(paths["train"][0]), read_lines(paths["train"][1])))
    valid = list(zip(read_lines(paths["valid"][0]), read_lines(paths["valid"][1])))
    pairs = train[:22] + valid + train[22:]
    assert pairs == list(zip(text["de"], text["en"]))
    assert read_lines(paths["test"][0]) == ["de one", "de\u2028two", "de three"]


def test_a_file_that_is_not_a_tgz_is_named(tmp_path, capsys):
    page = tmp_path / "de-en.tgz"
    page.write_text("<html><body>404 Not Found</body></html>\n", encoding="utf-8")  # a failed download
    cut = build_archive(tmp_path / "cut.tgz")
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])  # a download cut short
    for archive in (page, cut):
        code = prepare_main(["iwslt14", "--archive", str(archive), "--out", str(tmp_path / "out")])
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lskd-prepare: error: {archive}: not a readable .tgz archive (") and err.count("\n") == 1
        assert err.endswith("); download the official de-en.tgz again\n")
