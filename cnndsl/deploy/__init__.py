"""Using a trained network: describe it (ONNX metadata), predict, quantise, look inside."""
