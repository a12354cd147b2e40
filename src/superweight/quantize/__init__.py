"""Super-outlier-aware quantization: weights (RTN, clipping, super weights kept; HQQ to compare),
W8A8 fake quantization (naive, the paper's super activations, SmoothQuant), saving and checking.

One config dataclass per method, validated on construction and written into every result:

>>> from superweight.model import wrap_model
>>> from superweight.testing import plant_super_weight, tiny_model, tiny_tokenizer
>>> lm = wrap_model(tiny_model("llama"), tiny_tokenizer())
>>> sw = plant_super_weight(lm.model, layer=2, row=7, col=11, weight=2.0)
>>> with quantized(lm, SuperWeightQuantConfig(bits=4, block=1024, z=3), [sw]) as report:
...     print(report.summary()["kept"], report.summary()["clipped"] > 0)
1 True
>>> weight_config("rtn", bits=4, z=3)
Traceback (most recent call last):
superweight.errors.SuperweightError: method 'rtn' takes no z (z applies to rtn-clip, superweight, circuit)
"""

from superweight.quantize.hqq import HQQConfig
from superweight.quantize.rtn import RTNConfig
from superweight.quantize.rtn_clip import RTNClipConfig
from superweight.quantize.superweight import CircuitQuantConfig, SuperWeightQuantConfig
from superweight.quantize.w8a8 import (W8A8_METHODS, NaiveW8A8Config, SmoothQuantW8A8Config,
                                       SuperActW8A8Config, fake_w8a8)
from superweight.quantize.weights import QuantReport, quantize_, quantized, weight_targets

WEIGHT_METHODS = {c.method: c for c in (RTNConfig, RTNClipConfig, SuperWeightQuantConfig, CircuitQuantConfig,
                                        HQQConfig)}


def weight_config(method: str, **kwargs) -> RTNConfig:
    """The config of a weight method by name ('rtn', 'rtn-clip', 'superweight', 'circuit', 'hqq')."""
    from superweight.errors import SuperweightError

    if method not in WEIGHT_METHODS:
        raise SuperweightError(f"unknown method {method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
    cls = WEIGHT_METHODS[method]
    fields = cls.__dataclass_fields__
    unknown = [k for k in kwargs if k not in fields]
    if unknown:
        takers = [m for m, c in WEIGHT_METHODS.items() if unknown[0] in c.__dataclass_fields__]
        where = f" ({unknown[0]} applies to {', '.join(takers)})" if takers else ""
        raise SuperweightError(f"method {method!r} takes no {unknown[0]}{where}")
    return cls(**kwargs)


__all__ = ["CircuitQuantConfig", "HQQConfig", "RTNConfig", "RTNClipConfig", "SuperWeightQuantConfig", "NaiveW8A8Config",
           "SuperActW8A8Config", "SmoothQuantW8A8Config", "W8A8_METHODS", "WEIGHT_METHODS",
           "QuantReport", "fake_w8a8", "quantize_", "quantized", "weight_config", "weight_targets"]
