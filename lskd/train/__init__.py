"""The generic trainer: teachers and students for image classification and binary networks.

One loop (:mod:`lskd.train.trainer`) trains a teacher with (label-smoothed) cross-entropy, or a
student distilled from a frozen teacher with :func:`lskd.losses.word_kd_loss`, the same loss as
the fairseq criterion. Experiments are YAML files (:mod:`lskd.train.config`) run by ``lskd-train``.
"""
