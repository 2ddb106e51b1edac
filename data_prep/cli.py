"""``lskd-prepare``: build fairseq-binarized data from the Bible, IWSLT'14 or your own corpus."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.pipeline import PrepOptions, prepare_parallel
from lskd.errors import console_script


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary size (default 8000)")
    parser.add_argument("--spm-model-type", default="unigram", choices=["unigram", "bpe"], help="SentencePiece model type")
    parser.add_argument("--no-normalize", action="store_true", help="skip sacremoses punctuation normalisation")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess worker processes")
    parser.add_argument("--overwrite", action="store_true", help="replace data prepared from other inputs in --out")


def _options(args: argparse.Namespace, src: str, tgt: str) -> PrepOptions:
    return PrepOptions(
        src=src, tgt=tgt, vocab_size=args.vocab_size,
        spm_model_type=args.spm_model_type, normalize_punctuation=not args.no_normalize,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-prepare", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bible = commands.add_parser("bible", help="the embedded Bible corpus (test = John, valid = Ruth + Philemon)")
    bible.add_argument("--src", default="de", help="source language code (default de)")
    bible.add_argument("--tgt", default="en", help="target language code (default en)")
    bible.add_argument("--src-bible", help="translation code for the source (default: Elberfelder for de, KJV for en, ...)")
    bible.add_argument("--tgt-bible", help="translation code for the target")
    bible.add_argument("--limit-train", type=int, help="keep only the first N training pairs (smoke runs, tests)")
    _add_common(bible)

    text = commands.add_parser("text", help="your own parallel corpus: PREFIX.SRC / PREFIX.TGT per split")
    text.add_argument("--src", required=True, help="source language suffix, e.g. de")
    text.add_argument("--tgt", required=True, help="target language suffix, e.g. en")
    for split in ("train", "valid", "test"):
        text.add_argument(f"--{split}", required=True, help=f"{split} file prefix (reads PREFIX.SRC and PREFIX.TGT)")
    _add_common(text)

    iwslt = commands.add_parser("iwslt14", help="IWSLT'14 De-En from the official de-en.tgz you downloaded")
    iwslt.add_argument("--archive", required=True, type=Path, help="path of the official de-en.tgz")
    iwslt.add_argument("--src", default="de", choices=["de", "en"], help="source side (de-en or en-de)")
    _add_common(iwslt)
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.command == "bible":
        from data_prep.bible import resolve_bible, write_bible_corpus

        src_code = resolve_bible(args.src, args.src_bible)
        tgt_code = resolve_bible(args.tgt, args.tgt_bible)
        args.out.mkdir(parents=True, exist_ok=True)
        inputs, summary = write_bible_corpus(args.out, args.src, args.tgt, src_code, tgt_code, args.limit_train)
        counts = summary["bible"]["extracted_pairs"]
        print(f"[lskd-prepare] Bible {src_code}->{tgt_code}: train {counts['train']}, valid {counts['valid']}, "
              f"test {counts['test']} verse pairs", flush=True)
        return prepare_parallel(inputs, args.out, _options(args, args.src, args.tgt),
                                overwrite=args.overwrite, workers=args.workers, extra=summary)
    if args.command == "text":
        inputs = {split: (f"{getattr(args, split)}.{args.src}", f"{getattr(args, split)}.{args.tgt}")
                  for split in ("train", "valid", "test")}
        return prepare_parallel(inputs, args.out, _options(args, args.src, args.tgt),
                                overwrite=args.overwrite, workers=args.workers)
    from data_prep.iwslt14 import extract_iwslt14

    tgt = "en" if args.src == "de" else "de"
    args.out.mkdir(parents=True, exist_ok=True)
    inputs, summary = extract_iwslt14(args.archive, args.out / "corpus", args.src, tgt)
    return prepare_parallel(inputs, args.out, _options(args, args.src, tgt),
                            overwrite=args.overwrite, workers=args.workers, extra=summary)


@console_script("lskd-prepare")
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
