"""fairseq ``--user-dir`` package for LSKD: registers LSKD's fairseq components.

Importing it (fairseq does so for ``--user-dir fairseq_plugins``) also allows fairseq's checkpoint
contents under ``torch.load``'s safe ``weights_only=True`` default, for fairseq's own loaders
(:mod:`fairseq_plugins.checkpoint`).
"""
from fairseq_plugins.checkpoint import register_fairseq_safe_globals

register_fairseq_safe_globals()

from fairseq_plugins import criterions  # noqa: E402,F401  (registers label_smoothed_cross_entropy_with_kd)
