"""INTL pretraining and evaluation scripts; they use only the public `intl_kernels` API."""
