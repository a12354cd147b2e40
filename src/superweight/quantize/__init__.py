"""Super-outlier-aware quantization: weights (RTN, clipping, super weights kept; HQQ to compare),
W8A8 fake quantization (naive, the paper's super activations, SmoothQuant), saving and checking.

One config dataclass per method, validated on construction and written into every result:

>>> from superweight.quantize import SuperWeightQuantConfig, quantized
>>> with quantized(lm, SuperWeightQuantConfig(bits=4, block=16384, z=3)) as report:
...     print(report.summary())
"""

from superweight.quantize.hqq import HQQConfig
from superweight.quantize.rtn import RTNConfig
from superweight.quantize.rtn_clip import RTNClipConfig
from superweight.quantize.superweight import SuperWeightQuantConfig
from superweight.quantize.w8a8 import (W8A8_METHODS, NaiveW8A8Config, SmoothQuantW8A8Config,
                                       SuperActW8A8Config, fake_w8a8)
from superweight.quantize.weights import QuantReport, quantize_, quantized, weight_targets

WEIGHT_METHODS = {c.method: c for c in (RTNConfig, RTNClipConfig, SuperWeightQuantConfig, HQQConfig)}


def weight_config(method: str, **kwargs) -> RTNConfig:
    """The config of a weight method by name ('rtn', 'rtn-clip', 'superweight', 'hqq')."""
    from superweight.errors import SuperweightError

    if method not in WEIGHT_METHODS:
        raise SuperweightError(f"unknown method {method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
    cls = WEIGHT_METHODS[method]
    if "z" in kwargs and not hasattr(cls, "z"):
        kwargs.pop("z")
    return cls(**kwargs)


__all__ = ["HQQConfig", "RTNConfig", "RTNClipConfig", "SuperWeightQuantConfig", "NaiveW8A8Config",
           "SuperActW8A8Config", "SmoothQuantW8A8Config", "W8A8_METHODS", "WEIGHT_METHODS",
           "QuantReport", "fake_w8a8", "quantize_", "quantized", "weight_config", "weight_targets"]
