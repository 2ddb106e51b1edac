"""Evaluation entry points (``lskd-eval``): BLEU/chrF/TER runs with sacrebleu and their records."""
