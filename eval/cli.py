"""``lskd-eval``: score translations with sacrebleu, recording how every number was made."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.bleu import DecodeOptions, evaluate, format_table, score_files
from lskd.corpus import CorpusError


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

    table = commands.add_parser("table", help="print the scores of bleu-SPLIT.json records side by side")
    table.add_argument("records", nargs="+", type=Path, help="bleu-SPLIT.json files written by 'lskd-eval bleu'")

    files = commands.add_parser("score", help="score a hypothesis file against a reference file")
    files.add_argument("--hyp", required=True, type=Path)
    files.add_argument("--ref", required=True, type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "table":
        print(format_table(args.records))
        return 0
    try:
        if args.command == "bleu":
            options = DecodeOptions(beam=args.beam, lenpen=args.lenpen, batch_size=args.batch_size, cpu=not args.gpu)
            scores = evaluate(args.checkpoint, args.data, args.split, args.out, options)["scores"]
        else:
            scores = score_files(args.hyp, args.ref)
    except CorpusError as err:
        print(f"lskd-eval: error: {err}", file=sys.stderr)
        return 2
    for result in scores.values():
        print(f"{result['text']}  ({result['signature']})")
    if args.command == "score":
        print(json.dumps({k: v["score"] for k, v in scores.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
