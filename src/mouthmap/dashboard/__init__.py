"""The library behind the Streamlit dashboard (``dashboard/`` at the repository root,
started by ``mouthmap dashboard``): clip analysis, live transcripts (Triton stream or local
ONNX Runtime), uploads, and the registry / benchmark / drift views. The Streamlit scripts
only lay these out."""
