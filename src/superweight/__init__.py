"""superweight: find, check, ablate and protect the super weights of causal language models.

Yu et al., "The Super Weight in Large Language Models" (arXiv 2411.07191): a handful of scalar
weights in the MLP down projections create huge "super activations" that the whole model depends on.
"""

__version__ = "0.1.0"
