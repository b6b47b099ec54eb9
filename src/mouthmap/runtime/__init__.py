"""Inference with ONNX Runtime: sessions, the transcriber, benchmarks."""
