"""Compression and export: ONNX export now; QAT/PTQ INT8 later."""
