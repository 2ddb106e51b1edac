"""``lskd-clean``: clean a parallel corpus (or monolingual text) before a teacher translates it.

    lskd-clean --src de --tgt en --out clean/train corpus/train.de corpus/train.en
    lskd-clean --src de --out clean/news news.2020.txt          (monolingual source text)

Writes the kept lines, in order, to PREFIX.SRC (and PREFIX.TGT), ready for ``lskd-prepare text
--train PREFIX``, and PREFIX.clean.json last: every input line kept or dropped under the first rule
it breaks (empty, duplicate, non_letters, length_ratio, language; see lskd.cleaning), counted per
rule, with the first dropped line numbers. Do not clean test sets.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lskd.cleaning import RULES, CleaningOptions, clean_corpus
from lskd.errors import console_script, count_at_least, finite_float

DEFAULTS = CleaningOptions()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-clean", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE",
                        help="the source file, then the target file (one line per sentence, aligned)")
    parser.add_argument("--src", required=True, help="the source language (ISO 639-1 code, e.g. de)")
    parser.add_argument("--tgt", help="the target language (parallel data)")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.SRC, PREFIX.TGT, PREFIX.clean.json")
    parser.add_argument("--max-length-ratio", type=finite_float, default=DEFAULTS.max_length_ratio,
                        help="drop a pair whose target/source length ratio in characters is more than this many "
                             "times the corpus's median ratio, either way (default %(default)s)")
    parser.add_argument("--min-letter-ratio", type=finite_float, default=DEFAULTS.min_letter_ratio,
                        help="drop a line with a side of fewer letters among its non-space characters (default %(default)s)")
    parser.add_argument("--language-min-chars", type=count_at_least(0), default=DEFAULTS.language_min_chars,
                        help="judge the language of sides at least this long in characters (default %(default)s)")
    parser.add_argument("--skip", nargs="+", choices=RULES, default=[], metavar="RULE",
                        help=f"rules to leave out: {', '.join(RULES)}")
    return parser


@console_script("lskd-clean")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    languages = [args.src] + ([args.tgt] if args.tgt else [])
    options = CleaningOptions(max_length_ratio=args.max_length_ratio, min_letter_ratio=args.min_letter_ratio,
                              language_min_chars=args.language_min_chars, skip=args.skip)
    record = clean_corpus(args.inputs, languages, args.out, options)
    dropped = ", ".join(f"{rule} {count:,}" for rule, count in record["dropped"].items())
    print(f"[lskd-clean] {record['lines']:,} lines: kept {record['kept']:,}; dropped: {dropped} "
          f"-> {', '.join(record['files'])} ({args.out}.clean.json)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
