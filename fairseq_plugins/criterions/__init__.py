"""LSKD's fairseq criteria (registered on import)."""
from fairseq_plugins.criterions import label_smoothed_cross_entropy_with_kd  # noqa: F401
