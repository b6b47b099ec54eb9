"""Streaming inference: Triton model repository, gRPC streaming client, WebSocket proxy.

Where the mouth ROI is made: on the client side, next to the camera. ``mouthmap stream``
runs the same localiser and ROI code as training and ``mouthmap transcribe`` on the
user's machine, and the WebSocket proxy does it for browsers; Triton receives 96x96
grayscale mouth crops only. Reasons (see README, "Serving"):

* the face tracker is sequential per stream (each frame's crop follows the previous
  frame's landmarks), so it cannot be batched on the server, while the encoder can;
* a crop is 9 KB a frame against 311 KB for a raw 360x288 RGB frame;
* only the mouth region leaves the capture device (privacy);
* MediaPipe's models are made to run on phones, where the app would do this anyway.
"""
