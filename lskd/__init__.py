"""LSKD core: the math and data utilities shared by the fairseq plugins and the generic trainer.

It imports nothing of fairseq; the fairseq adapter is the ``fairseq_plugins`` package.
"""
__version__ = "0.1.0"
