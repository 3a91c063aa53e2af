"""Pyro generative programs of GRAM: p(y | x) and, with a blank input, p(x)."""
