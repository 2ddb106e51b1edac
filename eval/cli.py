"""``lskd-eval``: score translations with sacrebleu, recording how every number was made."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.bleu import compare_files, evaluate, file_warnings, format_table, score_files
from eval.speed import DEFAULT_ENGINES
from lskd.decoding import QUANTIZATIONS, DecodingOptions, add_engine_arguments, engine_settings, set_decoder_threads
from lskd.errors import console_script, count_at_least, finite_float, output_directory
from lskd.hf_teacher import default_engine
from lskd.projection import figure_path
from lskd.scoring import TOKENIZERS
from lskd.teacher_spec import read_teacher_spec
from lskd.too_long import TOO_LONG_POLICIES
from lskd.unicode_form import DEFAULT_UNICODE_FORM, UNICODE_FORMS


def add_tokenize(parser: argparse.ArgumentParser, tgt_lang: bool) -> None:
    """BLEU's tokenizer: chosen by the target language as ``sacrebleu -l`` does, or named."""
    if tgt_lang:
        parser.add_argument("--tgt-lang", help="target language code (zh, ja, ko choose their BLEU tokenizer, as "
                                               "sacrebleu -l SRC-TGT does; default: 13a)")
    parser.add_argument("--tokenize", choices=TOKENIZERS,
                        help="BLEU tokenizer (default: sacrebleu's choice for the target language)")


def add_unicode_form(parser: argparse.ArgumentParser) -> None:
    """The Unicode normalisation form (UAX #15) both sides are scored in."""
    parser.add_argument("--unicode-form", choices=UNICODE_FORMS, default=DEFAULT_UNICODE_FORM,
                        help="score hypotheses and references in this Unicode normalisation form: nfc (default: "
                             "composed and decomposed files of the same text score alike; NFC text is scored as it "
                             "is), nfkc (also folds compatibility characters such as ligatures and fullwidth forms, as "
                             "SentencePiece's normalisation does) or none (sacrebleu's numbers on the text as it is)")


def add_too_long(parser: argparse.ArgumentParser, what: str, listed: str = "the record lists them") -> None:
    """Sentence pairs longer than the model accepts: stop naming them (default), or leave them out."""
    parser.add_argument("--too-long", choices=TOO_LONG_POLICIES, default="error",
                        help=f"sentence pairs longer than the model accepts: error (default: stop, naming their ids) "
                             f"or skip (leave them out of {what}; {listed})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bleu = commands.add_parser("bleu", help="decode a split with a checkpoint and score BLEU/chrF/TER")
    bleu.add_argument("--checkpoint", required=True, type=Path,
                      help="fairseq checkpoint (.pt), or a Hugging Face or CTranslate2 teacher directory (scored on "
                           "the split's raw sources with its own tokenizer)")
    bleu.add_argument("--data", required=True, type=Path, help="directory made by lskd-prepare (holds prep.json)")
    bleu.add_argument("--split", default="test", help="split to translate (default test)")
    bleu.add_argument("--out", required=True, type=output_directory, help="directory for the hypotheses and bleu-SPLIT.json")
    bleu.add_argument("--beam", type=int, default=5)
    bleu.add_argument("--lenpen", type=finite_float, default=1.0)
    bleu.add_argument("--max-len-a", type=finite_float, default=1.2)
    bleu.add_argument("--max-len-b", type=int, default=10)
    bleu.add_argument("--batch-size", type=int, default=64)
    add_engine_arguments(bleu)
    add_too_long(bleu, "decoding and scoring")
    add_tokenize(bleu, tgt_lang=False)  # the target language is prep.json's
    add_unicode_form(bleu)

    speed = commands.add_parser("speed", help="words/s, latency, memory and size of a checkpoint with each engine")
    speed.add_argument("--checkpoint", required=True, type=Path, help="fairseq checkpoint (.pt)")
    speed.add_argument("--data", required=True, type=Path, help="directory made by lskd-prepare")
    speed.add_argument("--split", default="test")
    speed.add_argument("--out", required=True, type=output_directory, help="directory for speed-SPLIT.json")
    speed.add_argument("--engines", nargs="+", default=list(DEFAULT_ENGINES),
                       help="fairseq and/or ct2-QUANT, QUANT one of " + ", ".join(QUANTIZATIONS)
                            + " (default: " + " ".join(DEFAULT_ENGINES) + ")")
    speed.add_argument("--threads", nargs="+", type=int, default=[1, 0],
                       help="thread counts to measure at, 0 = all cores (default: 1 0)")
    speed.add_argument("--beam", type=int, default=5)
    speed.add_argument("--lenpen", type=finite_float, default=1.0)
    speed.add_argument("--batch-size", type=int, default=64)
    speed.add_argument("--max-batch-tokens", type=int, help="also cap a batch at this many source tokens (padded)")
    speed.add_argument("--latency-sentences", type=int, default=100,
                       help="sentences translated one at a time for the latency percentiles (default 100)")
    speed.add_argument("--gpu", action="store_true")

    stability = commands.add_parser("stability", help="stability 1 - S, ECE and entropy of a checkpoint on a split")
    stability.add_argument("--checkpoint", required=True, type=Path)
    stability.add_argument("--data", required=True, type=Path, help="directory made by lskd-prepare")
    stability.add_argument("--split", default="test")
    stability.add_argument("--out", required=True, type=output_directory, help="directory for stability-SPLIT.json")
    stability.add_argument("--max-classes", type=count_at_least(1), default=1000,
                           help="the most frequent gold tokens used as classes (memory: N x V x 8 bytes; default 1000)")
    stability.add_argument("--max-tokens", type=count_at_least(1), default=4096)
    add_too_long(stability, "the statistics")

    project = commands.add_parser("project", help="penultimate-layer picture of three target tokens, one panel per checkpoint")
    project.add_argument("--checkpoints", required=True, nargs="+", type=Path, help="e.g. the LS and the non-LS teacher")
    project.add_argument("--data", required=True, type=Path)
    project.add_argument("--split", default="test")
    project.add_argument("--tokens", nargs=3, default=["▁God", "▁Lord", "▁water"],
                         help="three target pieces: two related, one not (default: ▁God ▁Lord ▁water)")
    project.add_argument("--out", required=True, type=figure_path, help="picture file (.png, .pdf, .svg, ...)")
    add_too_long(project, "the picture", "a warning names them")

    compare = commands.add_parser("compare", help="paired bootstrap significance of two systems (sacrebleu --paired-bs)")
    compare.add_argument("--baseline", required=True, type=Path, help="baseline hypotheses")
    compare.add_argument("--system", required=True, type=Path, help="system hypotheses")
    compare.add_argument("--ref", required=True, type=Path)
    compare.add_argument("--samples", type=count_at_least(1), default=1000)
    add_tokenize(compare, tgt_lang=True)
    add_unicode_form(compare)

    table = commands.add_parser("table", help="print the scores of bleu-SPLIT.json records side by side")
    table.add_argument("records", nargs="+", type=Path, help="bleu-SPLIT.json files written by 'lskd-eval bleu'")

    files = commands.add_parser("score", help="score a hypothesis file against a reference file")
    files.add_argument("--hyp", required=True, type=Path)
    files.add_argument("--ref", required=True, type=Path)
    add_tokenize(files, tgt_lang=True)
    add_unicode_form(files)
    return parser


def _stability(args: argparse.Namespace) -> None:
    from eval.analysis import stability_report

    record = stability_report(args.checkpoint, args.data, args.split, args.out, args.max_classes, args.max_tokens,
                              too_long=args.too_long)
    print(f"1 - S = {record['one_minus_s']:.4f} over {record['classes']} classes, ECE = {record['ece_15_bins']:.4f}, "
          f"entropy = {record['mean_entropy_bits']:.3f} bits, accuracy = {record['accuracy']:.4f} "
          f"({record['positions']} positions, {record['sentences']} sentences)")
    _print_warnings(record["warnings"])


def _project(args: argparse.Namespace) -> None:
    from eval.analysis import projection_figure

    print(projection_figure(args.checkpoints, args.data, args.split, args.tokens, args.out, args.too_long))


def _compare(args: argparse.Namespace) -> None:
    result = compare_files(args.baseline, args.system, args.ref, args.samples, args.tgt_lang, args.tokenize,
                           args.unicode_form)
    for metric in ("BLEU", "chrF2"):
        r = result[metric]
        # sacrebleu reports p = 1 / (samples + 1) for equal scores, which reads as a resolved difference
        verdict = "the same score, no difference to test" if r["system"] == r["baseline"] else f"p = {r['p_value']:.4f}"
        print(f"{metric}: baseline {r['baseline']:.2f}, system {r['system']:.2f} "
              f"({r['system_mean']:.2f} +- {r['system_ci95']:.2f}), {verdict}  ({r['signature']}; "
              f"unicode form: {result['unicode_form']})")
    _print_warnings(result["warnings"])


def _table(args: argparse.Namespace) -> None:
    print(format_table(args.records))


def _print_scores(scores: dict) -> None:
    for result in scores.values():
        print(f"{result['text']}  ({result['signature']}; unicode form: {result['unicode_form']})")


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}")


def _bleu(args: argparse.Namespace) -> None:
    options = DecodingOptions(beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                              batch_size=args.batch_size)
    settings = engine_settings(args, default_engine(read_teacher_spec(args.checkpoint)) if args.checkpoint.is_dir()
                               else "fairseq")
    set_decoder_threads(settings)
    record = evaluate(args.checkpoint, args.data, args.split, args.out, options, settings, args.tokenize, args.too_long,
                      args.unicode_form)
    _print_scores(record["scores"])
    _print_warnings(record["warnings"])


def _speed(args: argparse.Namespace) -> None:
    from eval.speed import measure_speed

    options = DecodingOptions(beam=args.beam, lenpen=args.lenpen, batch_size=args.batch_size,
                              max_batch_tokens=args.max_batch_tokens)
    record = measure_speed(args.checkpoint, args.data, args.split, args.out, options, args.engines, args.threads,
                           args.latency_sentences, args.gpu)
    print(f"{'engine':12s} {'threads':>7s} {'words/s':>9s} {'sent/s':>8s} {'p50 ms':>8s} {'p90 ms':>8s} "
          f"{'peak MB':>8s} {'MB disk':>8s} {'BLEU':>6s}")
    for run in record["runs"]:
        summary = record["engines"][run["engine"]]
        print(f"{run['engine']:12s} {run['threads']:7d} {run['words_per_second']:9.1f} {run['sentences_per_second']:8.2f} "
              f"{run['latency_ms']['p50']:8.1f} {run['latency_ms']['p90']:8.1f} {run['peak_resident_mb']:8.1f} "
              f"{summary['size_bytes'] / 1e6:8.1f} {summary['bleu']['score']:6.2f}")
    print(f"record: {args.out / f'speed-{args.split}.json'}")


def _score(args: argparse.Namespace) -> None:
    scores = score_files(args.hyp, args.ref, args.tgt_lang, args.tokenize, args.unicode_form)
    _print_scores(scores)
    _print_warnings(file_warnings([args.hyp, args.ref], args.unicode_form))
    print(json.dumps({k: v["score"] for k, v in scores.items()}))


COMMANDS = {"bleu": _bleu, "speed": _speed, "stability": _stability, "project": _project, "compare": _compare, "table": _table,
            "score": _score}


@console_script("lskd-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
