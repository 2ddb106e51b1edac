"""fairseq ``--user-dir`` package for LSKD: registers LSKD's fairseq components.

Importing it (fairseq does so for ``--user-dir fairseq_plugins``) also imports :mod:`lskd`, which
makes fairseq checkpoints load under ``torch.load``'s safe ``weights_only=True`` default.
"""
import lskd  # noqa: F401  (registers safe globals for checkpoint loading)
from fairseq_plugins import criterions  # noqa: F401  (registers label_smoothed_cross_entropy_with_kd)
