"""Turning per-frame CTC log-probabilities into text: greedy, and beam search with a word LM.

Greedy is the reference (no files, microseconds); beam+LM is what ships in a model
package's ``lm/`` directory and fixes spellings the grammar rules out.
"""

from mouthmap.decode.beam import BeamDecoder
from mouthmap.decode.greedy import greedy_decode, greedy_decode_batch
from mouthmap.decode.lm import LMFiles, build_lm

__all__ = ["BeamDecoder", "LMFiles", "build_lm", "greedy_decode", "greedy_decode_batch"]
