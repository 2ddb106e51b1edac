"""IWSLT'14 De-En from the official ``de-en.tgz`` (downloaded by the user; nothing here downloads).

Makes the split of fairseq's ``examples/translation/prepare-iwslt14.sh``: the talk transcripts
``train.tags.de-en.*`` without their url/talkid/keywords lines, the length filter of Moses'
``clean-corpus-n.perl -ratio 1.5 ... 1 175`` on the Moses-tokenised text, every 23rd kept pair
held out as valid, and dev2010, TEDX dev2012 (when present), tst2010, tst2011, tst2012
concatenated as test. sacremoses' ``MosesTokenizer`` stands in for ``tokenizer.perl`` and
:func:`clean_corpus_keeps` for ``clean-corpus-n.perl``. The tokens only decide which pairs are
kept: the kept pairs are written as they are in the archive (not tokenised, not lowercased),
because the shared pipeline applies SentencePiece to raw text and BLEU is computed by sacrebleu
on detokenized output.
"""
from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path

from lskd.corpus import CorpusError, iter_lines, write_lines

#: Metadata lines dropped from the training transcripts, exactly as in fairseq's script (talk
#: titles and descriptions are kept as text, without their tags).
_META_LINE = re.compile(r"<(url|talkid|keywords)>")
_META_TAG = re.compile(r"</?(title|description)>")
_SEGMENT = re.compile(r'<seg id="?\d+"?>\s*(.*?)\s*</seg>')
#: Test sets in fairseq's order; a missing TEDX dev2012 is skipped (and recorded).
TEST_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
VALID_EVERY = 23
#: clean-corpus-n.perl as fairseq's script runs it (``-ratio 1.5 ... 1 175``), with its default
#: longest word of 1000 characters; lengths count Moses tokens.
MIN_TOKENS, MAX_TOKENS, MAX_RATIO, MAX_WORD_CHARS = 1, 175, 1.5, 1000


def _unreadable(path: Path, error: Exception) -> CorpusError:
    """A file that is no (whole) tar archive, e.g. an HTML page saved by a failed download or a
    cut-short download, named as such: tarfile's and gzip's tracebacks do not say which file."""
    reason = str(error).splitlines()[0].rstrip(":") or type(error).__name__
    return CorpusError(f"{path}: not a readable .tgz archive ({reason}); download the official de-en.tgz again")


def _members(archive: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    return {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}


def _read(archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> list[str]:
    if name not in members:
        raise CorpusError(f"the archive has no {name}: is it the official IWSLT'14 de-en.tgz?")
    return list(iter_lines(archive.extractfile(members[name]), f"{name} in the archive"))


def _transcript(lines: list[str]) -> list[str]:
    return [_META_TAG.sub("", line).strip() for line in lines if not _META_LINE.search(line)]


def _segments(lines: list[str]) -> list[str]:
    return [m.group(1).replace("\u2019", "'") for line in lines for m in [_SEGMENT.search(line)] if m]


def moses_tokenise(lines: list[str], lang: str) -> list[str]:
    """``tokenizer.perl -l LANG`` as fairseq's script runs it (escaping on, its default), by sacremoses."""
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(line, return_str=True) for line in lines]


def clean_corpus_keeps(source: str, target: str) -> bool:
    """Whether ``clean-corpus-n.perl -ratio 1.5 CORPUS L1 L2 OUT 1 175`` keeps this tokenised pair.

    As the Perl script: runs of whitespace are one separator and ends are trimmed, then a pair is
    dropped when a side has fewer than 1 or more than 175 tokens, when one side has more than 1.5
    times the tokens of the other, or when a token is longer than 1000 characters. (Its removal of
    ``|`` does not apply: the Moses tokenizer has escaped every ``|`` as ``&#124;``.)
    """
    s, t = source.split(), target.split()
    if not (MIN_TOKENS <= len(s) <= MAX_TOKENS and MIN_TOKENS <= len(t) <= MAX_TOKENS):
        return False
    if len(s) / len(t) > MAX_RATIO or len(t) / len(s) > MAX_RATIO:
        return False
    return max(map(len, s + t)) <= MAX_WORD_CHARS


def _read_archive(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """The training transcripts, the test segments (per language) and the test sets present in the archive."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = _members(archive)
            transcript = {lang: _transcript(_read(archive, members, f"train.tags.de-en.{lang}")) for lang in ("de", "en")}
            if len(transcript["de"]) != len(transcript["en"]):
                raise CorpusError(
                    f"train.tags.de-en.de has {len(transcript['de'])} text lines but train.tags.de-en.en has "
                    f"{len(transcript['en'])} after removing metadata lines"
                )
            present = [name for name in TEST_SETS if f"IWSLT14.{name}.de-en.de.xml" in members]
            test = {lang: [] for lang in ("de", "en")}
            for name in present:
                for lang in ("de", "en"):
                    test[lang] += _segments(_read(archive, members, f"IWSLT14.{name}.de-en.{lang}.xml"))
                if len(test["de"]) != len(test["en"]):
                    raise CorpusError(f"IWSLT14.{name}: the de and en files hold different numbers of segments")
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise _unreadable(path, error) from error
    return transcript, test, present


def extract_iwslt14(archive_path: Path, out_dir: Path, src: str, tgt: str) -> tuple[dict[str, tuple[Path, Path]], dict]:
    """Write ``{split}.{lang}`` files under ``out_dir``; return their paths and a summary."""
    if not Path(archive_path).is_file():
        raise CorpusError(f"archive not found: {archive_path} (download the official de-en.tgz yourself)")
    transcript, test, present = _read_archive(Path(archive_path))
    pairs = list(zip(transcript["de"], transcript["en"]))
    print(f"[lskd-prepare] Moses-tokenising {len(pairs)} training pairs for the length filter", flush=True)
    tokenised = zip(moses_tokenise(transcript["de"], "de"), moses_tokenise(transcript["en"], "en"))
    cleaned = [pair for pair, tokens in zip(pairs, tokenised) if clean_corpus_keeps(*tokens)]
    splits = {
        "train": [p for i, p in enumerate(cleaned, start=1) if i % VALID_EVERY != 0],
        "valid": [p for i, p in enumerate(cleaned, start=1) if i % VALID_EVERY == 0],
        "test": list(zip(test["de"], test["en"])),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    side = {"de": 0, "en": 1}
    paths = {}
    for name, rows in splits.items():
        paths[name] = (out_dir / f"{name}.{src}", out_dir / f"{name}.{tgt}")
        write_lines(paths[name][0], (row[side[src]] for row in rows))
        write_lines(paths[name][1], (row[side[tgt]] for row in rows))
    summary = {
        "iwslt14": {
            "archive": str(Path(archive_path).resolve()),
            "test_sets": [f"IWSLT14.{name}" for name in present],
            "missing_test_sets": [f"IWSLT14.{name}" for name in TEST_SETS if name not in present],
            "train_pairs_before_length_filter": len(pairs),
            "length_filter": {"counts": "Moses tokens (sacremoses MosesTokenizer)", "min_tokens": MIN_TOKENS,
                              "max_tokens": MAX_TOKENS, "max_ratio": MAX_RATIO, "max_word_chars": MAX_WORD_CHARS},
            "removed_by_length_filter": len(pairs) - len(cleaned),
            "extracted_pairs": {name: len(rows) for name, rows in splits.items()},
        }
    }
    return paths, summary
