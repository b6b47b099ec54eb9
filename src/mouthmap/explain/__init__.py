"""Looking inside a transcript: CTC alignment of the words to frames, the per-frame character
probabilities, Grad-CAM saliency of a word over the mouth ROI, and overlays to show them.

The ONNX package reads the lips; explanations need gradients, so they run the PyTorch
checkpoint the package was exported from (:mod:`mouthmap.explain.checkpoints`).
"""

from mouthmap.explain.alignment import AlignmentError, WordSpan, ctc_align, word_spans
from mouthmap.explain.gradcam import GradCAM, Saliency, explain_word, word_score

__all__ = [
    "AlignmentError",
    "GradCAM",
    "Saliency",
    "WordSpan",
    "ctc_align",
    "explain_word",
    "word_score",
    "word_spans",
]
