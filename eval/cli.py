"""``lskd-eval``: score translations with sacrebleu, recording how every number was made."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.bleu import DecodeOptions, evaluate, format_table, paired_bootstrap, score_files
from lskd.corpus import read_lines
from lskd.errors import console_script
from lskd.scoring import TOKENIZERS
from lskd.too_long import TOO_LONG_POLICIES


def add_tokenize(parser: argparse.ArgumentParser, tgt_lang: bool) -> None:
    """BLEU's tokenizer: chosen by the target language as ``sacrebleu -l`` does, or named."""
    if tgt_lang:
        parser.add_argument("--tgt-lang", help="target language code (zh, ja, ko choose their BLEU tokenizer, as "
                                               "sacrebleu -l SRC-TGT does; default: 13a)")
    parser.add_argument("--tokenize", choices=TOKENIZERS,
                        help="BLEU tokenizer (default: sacrebleu's choice for the target language)")


def add_too_long(parser: argparse.ArgumentParser, what: str) -> None:
    """Sentence pairs longer than the model accepts: stop naming them (default), or leave them out."""
    parser.add_argument("--too-long", choices=TOO_LONG_POLICIES, default="error",
                        help=f"sentence pairs longer than the model accepts: error (default: stop, naming their ids) "
                             f"or skip (leave them out of {what}; the record lists them)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bleu = commands.add_parser("bleu", help="decode a split with a checkpoint and score BLEU/chrF/TER")
    bleu.add_argument("--checkpoint", required=True, type=Path, help="fairseq checkpoint (.pt)")
    bleu.add_argument("--data", required=True, type=Path, help="directory made by lskd-prepare (holds prep.json)")
    bleu.add_argument("--split", default="test", help="split to translate (default test)")
    bleu.add_argument("--out", required=True, type=Path, help="directory for the hypotheses and bleu-SPLIT.json")
    bleu.add_argument("--beam", type=int, default=5)
    bleu.add_argument("--lenpen", type=float, default=1.0)
    bleu.add_argument("--batch-size", type=int, default=64)
    bleu.add_argument("--gpu", action="store_true", help="decode on the GPU (default: --cpu)")
    add_too_long(bleu, "decoding and scoring")
    add_tokenize(bleu, tgt_lang=False)  # the target language is prep.json's

    stability = commands.add_parser("stability", help="stability 1 - S, ECE and entropy of a checkpoint on a split")
    stability.add_argument("--checkpoint", required=True, type=Path)
    stability.add_argument("--data", required=True, type=Path, help="directory made by lskd-prepare")
    stability.add_argument("--split", default="test")
    stability.add_argument("--out", required=True, type=Path, help="directory for stability-SPLIT.json")
    stability.add_argument("--max-classes", type=int, default=1000,
                           help="the most frequent gold tokens used as classes (memory: N x V x 8 bytes; default 1000)")
    stability.add_argument("--max-tokens", type=int, default=4096)
    add_too_long(stability, "the statistics")

    project = commands.add_parser("project", help="penultimate-layer picture of three target tokens, one panel per checkpoint")
    project.add_argument("--checkpoints", required=True, nargs="+", type=Path, help="e.g. the LS and the non-LS teacher")
    project.add_argument("--data", required=True, type=Path)
    project.add_argument("--split", default="test")
    project.add_argument("--tokens", nargs=3, default=["▁God", "▁Lord", "▁water"],
                         help="three target pieces: two related, one not (default: ▁God ▁Lord ▁water)")
    project.add_argument("--out", required=True, type=Path, help="PNG file")
    add_too_long(project, "the picture")

    compare = commands.add_parser("compare", help="paired bootstrap significance of two systems (sacrebleu --paired-bs)")
    compare.add_argument("--baseline", required=True, type=Path, help="baseline hypotheses")
    compare.add_argument("--system", required=True, type=Path, help="system hypotheses")
    compare.add_argument("--ref", required=True, type=Path)
    compare.add_argument("--samples", type=int, default=1000)
    add_tokenize(compare, tgt_lang=True)

    table = commands.add_parser("table", help="print the scores of bleu-SPLIT.json records side by side")
    table.add_argument("records", nargs="+", type=Path, help="bleu-SPLIT.json files written by 'lskd-eval bleu'")

    files = commands.add_parser("score", help="score a hypothesis file against a reference file")
    files.add_argument("--hyp", required=True, type=Path)
    files.add_argument("--ref", required=True, type=Path)
    add_tokenize(files, tgt_lang=True)
    return parser


def _stability(args: argparse.Namespace) -> None:
    from eval.analysis import stability_report

    record = stability_report(args.checkpoint, args.data, args.split, args.out, args.max_classes, args.max_tokens,
                              too_long=args.too_long)
    print(f"1 - S = {record['one_minus_s']:.4f} over {record['classes']} classes, ECE = {record['ece_15_bins']:.4f}, "
          f"entropy = {record['mean_entropy_bits']:.3f} bits, accuracy = {record['accuracy']:.4f} "
          f"({record['positions']} positions, {record['sentences']} sentences)")
    _print_warnings(record)


def _project(args: argparse.Namespace) -> None:
    from eval.analysis import projection_figure

    print(projection_figure(args.checkpoints, args.data, args.split, args.tokens, args.out, args.too_long))


def _compare(args: argparse.Namespace) -> None:
    result = paired_bootstrap(read_lines(args.baseline), read_lines(args.system), read_lines(args.ref), args.samples,
                              args.tgt_lang, args.tokenize)
    for metric in ("BLEU", "chrF2"):
        r = result[metric]
        print(f"{metric}: baseline {r['baseline']:.2f}, system {r['system']:.2f} "
              f"({r['system_mean']:.2f} +- {r['system_ci95']:.2f}), p = {r['p_value']:.4f}  ({r['signature']})")


def _table(args: argparse.Namespace) -> None:
    print(format_table(args.records))


def _print_scores(scores: dict) -> None:
    for result in scores.values():
        print(f"{result['text']}  ({result['signature']})")


def _print_warnings(record: dict) -> None:
    for warning in record.get("warnings", []):
        print(f"warning: {warning}")


def _bleu(args: argparse.Namespace) -> None:
    options = DecodeOptions(beam=args.beam, lenpen=args.lenpen, batch_size=args.batch_size, cpu=not args.gpu)
    record = evaluate(args.checkpoint, args.data, args.split, args.out, options, args.tokenize, args.too_long)
    _print_scores(record["scores"])
    _print_warnings(record)


def _score(args: argparse.Namespace) -> None:
    scores = score_files(args.hyp, args.ref, args.tgt_lang, args.tokenize)
    _print_scores(scores)
    print(json.dumps({k: v["score"] for k, v in scores.items()}))


COMMANDS = {"bleu": _bleu, "stability": _stability, "project": _project, "compare": _compare, "table": _table,
            "score": _score}


@console_script("lskd-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
