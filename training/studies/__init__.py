"""The studies: the paper's tables in miniature, the prototype segmenter's zero-fine-tuning scores and the
learning probes, each a command over ordinary runs."""
