"""Amortized guides (variational posteriors) for the programs in ``models``."""
