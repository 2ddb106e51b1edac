"""The Unicode form text is scored in, and the lines of a file that a model cannot produce.

SentencePiece normalises every training target (``nmt_nfkc`` by default: Unicode's NFKC plus rules
for spaces and control characters), so a model trained on ``lskd-prepare``'s data writes composed
text only. BLEU, chrF and TER compare code points: the same correct translation scored 96.68 BLEU
against composed references, 3.05 against the same references decomposed (NFD: ``u`` + U+0308 for
``ü``) and 43.31 with compatibility characters (the ligature ``ﬁ``, fullwidth forms), and nothing
said why. The normalisation forms are those of Unicode Standard Annex #15, *Unicode Normalization
Forms* (UAX #15, https://www.unicode.org/reports/tr15/), as the standard library's
:mod:`unicodedata` implements them for its Unicode version; nothing here has tables of its own.

* :func:`normalize_lines` brings lines to a form before scoring: ``nfc`` (canonical composition:
  text already in NFC is returned unchanged, so scores of such text do not move), ``nfkc``
  (compatibility characters folded as well, as SentencePiece folds them) or ``none``.
* :func:`unicode_issues` counts, per kind, the lines that differ from what a model can produce;
  :func:`unicode_warnings` words them, one line per file and kind, with the share of lines.
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Iterable, Mapping, Sequence

from lskd.errors import InvalidValueError

#: The forms ``--unicode-form`` accepts: a UAX #15 normalisation form applied to both sides, or none.
UNICODE_FORMS: tuple[str, ...] = ("nfc", "nfkc", "none")
#: NFC: a file's bytes (composed or decomposed) do not change its score; NFC text is scored as it is.
DEFAULT_UNICODE_FORM = "nfc"

#: The kinds of lines :func:`unicode_issues` counts, each with what it says about such a line.
ISSUES: dict[str, str] = {
    "not_nfc": "are not in NFC (decomposed or reordered characters; a SentencePiece-trained model writes "
               "composed text, UAX #15)",
    "compatibility": "hold compatibility characters that NFKC folds (ligatures such as 'ﬁ', fullwidth forms, "
                     "superscripts; a model trained through SentencePiece's NFKC never writes them, UAX #15)",
    "replacement_character": "hold U+FFFD replacement characters (bytes lost when the text was decoded)",
    "byte_order_mark": "hold a byte-order mark U+FEFF",
    "c1_control": "hold C1 control characters U+0080-U+009F (bytes read as Latin-1)",
    "mojibake": "hold UTF-8 read as Latin-1 or Windows-1252 (mojibake such as 'Ã¤' for 'ä', 'â€™' for '’')",
}
#: Encoding damage, which no normalisation form repairs.
ENCODING_ISSUES = ("replacement_character", "byte_order_mark", "c1_control", "mojibake")


def check_unicode_form(form: str) -> str:
    """``form`` if it is one of :data:`UNICODE_FORMS`, else an :class:`InvalidValueError` naming them."""
    if form not in UNICODE_FORMS:
        raise InvalidValueError(f"unknown Unicode form {form!r}: choose one of {', '.join(UNICODE_FORMS)}")
    return form


def normalize_lines(lines: Iterable[str], form: str) -> list[str]:
    """``lines`` in the UAX #15 normalisation form ``form`` (``nfc``, ``nfkc``), or as they are (``none``).

    Raises :class:`InvalidValueError` for another ``form``."""
    if check_unicode_form(form) == "none":
        return list(lines)
    return [unicodedata.normalize(form.upper(), line) for line in lines]


def line_issues(line: str) -> set[str]:
    """The kinds of :data:`ISSUES` one line has (empty for text a SentencePiece-trained model can write).

    ``not_nfc``: NFC would change it; ``compatibility``: NFKC would change it beyond NFC (UAX #15)."""
    composed = unicodedata.normalize("NFC", line)
    found = {
        "not_nfc": composed != line,
        "compatibility": not unicodedata.is_normalized("NFKC", composed),
        "replacement_character": "\ufffd" in line,
        "byte_order_mark": "\ufeff" in line,
        "c1_control": any("\x80" <= char <= "\x9f" for char in line),
        "mojibake": has_mojibake(line),
    }
    return {kind for kind, present in found.items() if present}


def unicode_issues(lines: Iterable[str]) -> dict[str, int]:
    """How many of ``lines`` have each kind of :data:`ISSUES` (kinds no line has are left out).

    A line counts once per kind; one line may count under several kinds."""
    counts = Counter(kind for line in lines for kind in line_issues(line))
    return {kind: counts[kind] for kind in ISSUES if kind in counts}


def unicode_warnings(files: Mapping[str, Sequence[str]], form: str) -> list[str]:
    """One warning per file (``{name: lines}``) and kind of :data:`ISSUES` it has: the file, the share
    of its lines, and what scoring in ``form`` does about them; empty when every line is clean."""
    warnings = []
    for name, lines in files.items():
        for kind, count in unicode_issues(lines).items():
            warnings.append(f"{name}: {count} of {len(lines)} lines ({100 * count / len(lines):.1f} %) "
                            f"{ISSUES[kind]}; {_what_scoring_does(kind, form)}")
    return warnings


def _what_scoring_does(kind: str, form: str) -> str:
    """The consequence of a kind of issue when text is scored in ``form``, and the remedy."""
    if kind == "byte_order_mark":
        return "no Unicode form removes it, and it joins the first word of its line: write the file without it"
    if kind in ENCODING_ISSUES:
        return "no Unicode form repairs this: decode the file with its real encoding, or make it again"
    if kind == "not_nfc" and form != "none":
        return f"both sides are scored in {form.upper()}"
    if kind == "compatibility" and form == "nfkc":
        return "both sides are scored in NFKC"
    remedy = "nfc" if kind == "not_nfc" else "nfkc"
    return (f"scored as they are ({form}), correct translations lose n-grams: pass --unicode-form {remedy} to score "
            f"both sides in {remedy.upper()}")


def has_mojibake(line: str) -> bool:
    """Whether ``line`` holds a UTF-8 sequence of a Windows-1252 character (or a byte-order mark) that was
    read back one byte per character, as Latin-1 or Windows-1252 (``Ã¤`` for ``ä``, ``â€™`` for ``’``).

    Only sequences that decode to a character Windows-1252 can write count, so ``heiß“`` (``ß`` before a
    quotation mark, bytes that decode to an N'Ko letter) is not taken for mojibake."""
    for start, char in enumerate(line):
        length = _utf8_sequence_length(ord(char))
        if length and _decodes_to_windows_1252_text(line[start:start + length], length):
            return True
    return False


def _utf8_sequence_length(lead: int) -> int:
    """The length of the UTF-8 sequence the byte ``lead`` starts (RFC 3629), 0 if it starts none."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _decodes_to_windows_1252_text(chars: str, length: int) -> bool:
    """Whether ``chars``, each taken as the byte Windows-1252 (else Latin-1) writes it as, are the UTF-8
    of one Windows-1252 character beyond ASCII, or of U+FEFF."""
    if len(chars) != length:
        return False
    try:
        decoded = b"".join(_single_byte(char) for char in chars).decode("utf-8")
        if decoded != "\ufeff":
            decoded.encode("cp1252")  # UnicodeEncodeError: not a character Windows-1252 can write
    except (UnicodeDecodeError, UnicodeEncodeError):
        return False
    return True


def _single_byte(char: str) -> bytes:
    """The byte Windows-1252 writes ``char`` as, else Latin-1's (``UnicodeEncodeError`` beyond both)."""
    try:
        return char.encode("cp1252")
    except UnicodeEncodeError:
        return char.encode("latin-1")
