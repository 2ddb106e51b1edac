"""LSKD core: the math and data utilities shared by the fairseq plugins and the generic trainer.

Importing the package registers the classes that fairseq checkpoints need as torch's safe
globals, so every checkpoint load in the process keeps ``weights_only=True``.
"""
from lskd.checkpoint import register_fairseq_safe_globals

__version__ = "0.1.0"

register_fairseq_safe_globals()
