"""Entry points that turn corpora into fairseq-binarized data (``lskd-prepare``)."""
