"""Pure tensor math: statistics of outliers and quantization. Knows nothing of models."""
