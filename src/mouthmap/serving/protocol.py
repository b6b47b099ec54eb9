"""Names and limits shared by the Triton models, the gRPC client and the proxy."""

from __future__ import annotations

ENCODER_MODEL = "mouthmap_encoder"  # whole clips, dynamic batching: video, lengths -> log_probs
STREAM_MODEL = "mouthmap_stream"  # decoupled, one sequence per stream: ROIs in, transcripts out

# mouthmap_stream tensors, each with a batch dimension of 1 first (the sequence batcher
# batches requests of different streams)
ROIS = "ROIS"  # UINT8 [1, n, 96, 96]: the next n mouth crops of the stream (n may be 0)
TEXT = "TEXT"  # BYTES [1, 1]: the transcript so far (partial) or of the whole stream (final)
FRAMES = "FRAMES"  # INT32 [1, 1]: frames the transcript covers
IS_FINAL = "IS_FINAL"  # BOOL [1, 1]: True once, for the final transcript after the END request
SERVER_MS = "SERVER_MS"  # FP32 [1, 1]: server time from the request's arrival to this response
OUTPUTS = (TEXT, FRAMES, IS_FINAL, SERVER_MS)

# mouthmap_encoder tensors: the ONNX model's own names, so the ONNX Runtime backend can
# serve the same file without a Python wrapper
VIDEO = "video"  # FP32 [b, 1, T, 88, 88] normalised crops
LENGTHS = "lengths"  # INT64 [b]
LOG_PROBS = "log_probs"  # FP32 [b, T, C]

ROI_SIZE = 96
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
