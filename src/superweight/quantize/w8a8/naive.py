"""Naive W8A8 (the paper's Table 3 baseline): one min-max range per input tensor, nothing protected.

A single super activation (thousands, against a median of ~0.1) sets the range of its whole tensor,
so at 8 bits every other entry of that tensor rounds to zero or one step.
"""

from superweight.quantize.w8a8.core import W8A8Config as NaiveW8A8Config

__all__ = ["NaiveW8A8Config"]
