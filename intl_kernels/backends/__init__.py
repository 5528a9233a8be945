"""Backends of the whitening function: each implements the same stages (see `dispatch.Backend`)."""
