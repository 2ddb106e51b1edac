"""``lskd-prepare``: build fairseq-binarized data from the Bible, IWSLT'14 or your own corpus."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.pipeline import PrepOptions, prepare_parallel
from lskd.corpus import CorpusError
from lskd.errors import console_script, count_at_least, output_directory
from lskd.output_files import check_writable

DEFAULT_VOCAB_SIZE = 8000
DEFAULT_SPM_MODEL_TYPE = "unigram"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=output_directory, help="output directory")
    parser.add_argument("--vocab-size", type=count_at_least(16),  # before the corpus is fetched
                        help=f"joint SentencePiece vocabulary size (default {DEFAULT_VOCAB_SIZE}; not with --teacher)")
    parser.add_argument("--spm-model-type", choices=["unigram", "bpe"],
                        help=f"SentencePiece model type (default {DEFAULT_SPM_MODEL_TYPE}; not with --teacher)")
    parser.add_argument("--teacher", type=Path,
                        help="use this teacher's vocabulary: a checkpoint, or a model directory as fairseq publishes "
                             "them (model.pt, dict.SRC.txt, dict.TGT.txt, sentencepiece.bpe.model)")
    parser.add_argument("--spm-model", type=Path, help="the teacher's SentencePiece model (default: found with --teacher)")
    parser.add_argument("--src-dict", type=Path, help="the teacher's source dictionary (default: found with --teacher)")
    parser.add_argument("--tgt-dict", type=Path, help="the teacher's target dictionary (default: found with --teacher)")
    parser.add_argument("--no-normalize", action="store_true", help="skip sacremoses punctuation normalisation")
    parser.add_argument("--workers", type=count_at_least(1), default=2, help="fairseq-preprocess worker processes")
    parser.add_argument("--overwrite", action="store_true", help="replace data prepared from other inputs in --out")


def _options(args: argparse.Namespace, src: str, tgt: str) -> PrepOptions:
    """The options; with a teacher's vocabulary, no SentencePiece size or type (refused if given)."""
    teacher_files = [flag for flag in ("teacher", "spm_model", "src_dict", "tgt_dict") if getattr(args, flag)]
    if teacher_files:
        chosen = [f"--{flag.replace('_', '-')}" for flag in ("vocab_size", "spm_model_type")
                  if getattr(args, flag) is not None]
        if chosen:
            raise CorpusError(f"{' and '.join(chosen)} cannot be combined with "
                              f"{' / '.join('--' + f.replace('_', '-') for f in teacher_files)}: the vocabulary is "
                              f"the teacher's own SentencePiece model and dictionaries")
        return PrepOptions(src=src, tgt=tgt, vocab_size=None, spm_model_type=None,
                           normalize_punctuation=not args.no_normalize)
    return PrepOptions(
        src=src, tgt=tgt, vocab_size=DEFAULT_VOCAB_SIZE if args.vocab_size is None else args.vocab_size,
        spm_model_type=args.spm_model_type or DEFAULT_SPM_MODEL_TYPE, normalize_punctuation=not args.no_normalize,
    )


def _vocabulary(args: argparse.Namespace, src: str, tgt: str):
    """The teacher's vocabulary (--teacher, or its three files given explicitly), or None."""
    if not (args.teacher or args.spm_model or args.src_dict or args.tgt_dict):
        return None
    from fairseq_plugins.teacher_vocabulary import find_teacher_vocabulary

    return find_teacher_vocabulary(args.teacher, src, tgt, spm_model=args.spm_model, src_dict=args.src_dict,
                                   tgt_dict=args.tgt_dict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-prepare", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bible = commands.add_parser("bible", help="the embedded Bible corpus (test = John, valid = Ruth + Philemon)")
    bible.add_argument("--src", default="de", help="source language code (default de)")
    bible.add_argument("--tgt", default="en", help="target language code (default en)")
    bible.add_argument("--src-bible", help="translation code for the source (default: Elberfelder for de, KJV for en, ...)")
    bible.add_argument("--tgt-bible", help="translation code for the target")
    bible.add_argument("--limit-train", type=count_at_least(1), help="keep only the first N training pairs (smoke runs, tests)")
    bible.add_argument("--limit-test", type=count_at_least(1),
                       help="keep only the first N test pairs of John (smoke runs, tests; default all 879)")
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
    src = args.src
    tgt = args.tgt if args.command != "iwslt14" else ("en" if args.src == "de" else "de")
    options, vocabulary = _options(args, src, tgt), _vocabulary(args, src, tgt)  # bad flags fail before any work
    extra = None
    if args.command == "bible":
        from data_prep.bible import resolve_bible, write_bible_corpus

        src_code = resolve_bible(src, args.src_bible)
        tgt_code = resolve_bible(tgt, args.tgt_bible)
        check_writable(args.out)  # before the Bible is fetched
        inputs, extra = write_bible_corpus(args.out, src, tgt, src_code, tgt_code, args.limit_train,
                                           args.limit_test)
        counts = extra["bible"]["extracted_pairs"]
        print(f"[lskd-prepare] Bible {src_code}->{tgt_code}: train {counts['train']}, valid {counts['valid']}, "
              f"test {counts['test']} verse pairs", flush=True)
    elif args.command == "text":
        inputs = {split: (f"{getattr(args, split)}.{src}", f"{getattr(args, split)}.{tgt}")
                  for split in ("train", "valid", "test")}
    else:
        from data_prep.iwslt14 import extract_iwslt14

        check_writable(args.out)  # before the archive is extracted
        inputs, extra = extract_iwslt14(args.archive, args.out / "corpus", src, tgt)
    return prepare_parallel(inputs, args.out, options, vocabulary=vocabulary, overwrite=args.overwrite,
                            workers=args.workers, extra=extra)


@console_script("lskd-prepare")
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
