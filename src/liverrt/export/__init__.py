"""Export trained models (ONNX today) and verify every export before it is kept."""
