"""W8A8 fake quantization: naive, the paper's super-activation method, and SmoothQuant."""

from superweight.quantize.w8a8.core import LinearPlan, Plan, W8A8Config, fake_w8a8, quantize_input
from superweight.quantize.w8a8.naive import NaiveW8A8Config
from superweight.quantize.w8a8.smoothquant import SmoothQuantW8A8Config
from superweight.quantize.w8a8.superact import SuperActW8A8Config, protect_plan

W8A8_METHODS = {c.method: c for c in (NaiveW8A8Config, SuperActW8A8Config, SmoothQuantW8A8Config)}

__all__ = ["LinearPlan", "Plan", "W8A8Config", "NaiveW8A8Config", "SuperActW8A8Config",
           "SmoothQuantW8A8Config", "W8A8_METHODS", "fake_w8a8", "protect_plan", "quantize_input"]
