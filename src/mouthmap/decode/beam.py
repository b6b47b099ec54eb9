"""CTC prefix beam search with shallow fusion of a KenLM word model (pyctcdecode).

The defaults are tuned for speed on peaked model outputs (a trained CTC model puts
almost all mass on one or two symbols per frame): a narrow beam, tight pruning of
beams and of unlikely symbols. pyctcdecode is pure Python and expands every symbol
above ``token_min_logp`` in every surviving beam, so these two settings set the cost.
``scripts/bench_decode.py`` measured, on one core, a 3 s clip (75x28) in about 3 ms
(median) on model-like outputs, and a flat random matrix in about 40 ms, against about
270 ms with pyctcdecode's own defaults (beam 100), at the same accuracy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mouthmap import alphabet
from mouthmap.decode.arrays import clips, frames
from mouthmap.decode.lm import LMError, LMFiles

# pyctcdecode's convention: "" is the CTC blank, " " the word separator.
LABELS: tuple[str, ...] = tuple("" if s == alphabet.BLANK else s for s in alphabet.SYMBOLS)

DEFAULT_ALPHA = 0.5  # LM weight (natural-log LM score scale, as in pyctcdecode)
DEFAULT_BETA = 1.0  # bonus per word, offsets the LM's per-word cost
DEFAULT_BEAM_WIDTH = 16
DEFAULT_BEAM_PRUNE_LOGP = -8.0  # drop beams this far (natural log) below the best
DEFAULT_TOKEN_MIN_LOGP = -5.0  # ignore symbols below this log-prob unless a frame's argmax
DEFAULT_UNK_SCORE_OFFSET = -10.0  # penalty for a word (or word prefix) outside the LM


def _resolve(lm: str | Path | LMFiles | None) -> LMFiles | None:
    if lm is None:
        return None
    files = lm if isinstance(lm, LMFiles) else LMFiles.in_dir(lm)
    return files.check()


def _language_model_class() -> type:
    """pyctcdecode's LanguageModel, fixed for a clip whose last frames hold a space.

    At the end of a clip pyctcdecode scores the pending word; after a trailing space
    that word is ``""``, which it treats as unknown (``unk_score_offset``, about -10),
    so the correct transcript drops below wrong ones (seen on synthetic GRID outputs:
    "bin blue a f two now" won over the true "bin blue at f two now"). Scoring ``""``
    as just the end of the sentence removes that.
    """
    from pyctcdecode import LanguageModel
    from pyctcdecode.constants import LOG_BASE_CHANGE_FACTOR

    class TrailingSpaceSafeLM(LanguageModel):
        def score(self, prev_state: Any, word: str, is_last_word: bool = False) -> Any:
            if word:
                return super().score(prev_state, word, is_last_word)
            end = self._get_raw_end_score(prev_state) if is_last_word else 0.0
            return self.alpha * end * LOG_BASE_CHANGE_FACTOR, prev_state

    return TrailingSpaceSafeLM


def _build(
    labels: Sequence[str],
    lm_files: LMFiles | None,
    alpha: float,
    beta: float,
    unk_score_offset: float,
) -> Any:
    """pyctcdecode's ``build_ctcdecoder``, but loading KenLM without its progress bar or advice.

    Imported lazily: pyctcdecode and kenlm are needed only once someone beam-decodes.
    """
    from pyctcdecode import Alphabet, BeamSearchDecoderCTC, build_ctcdecoder

    if lm_files is None:
        return build_ctcdecoder(list(labels))
    import kenlm

    config = kenlm.Config()
    config.show_progress = False
    # the wheel has no build_binary to act on its "faster if you build a binary file" advice
    config.arpa_complain = kenlm.ARPALoadComplain.NONE
    try:
        model = kenlm.Model(str(lm_files.arpa), config)
    except OSError as err:
        raise LMError(f"cannot load language model {lm_files.arpa}: {err}") from err
    quiet = logging.getLogger("pyctcdecode.language_model")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that 51 words look "artificial": GRID is
    try:
        language_model = _language_model_class()(
            model, lm_files.words(), alpha=alpha, beta=beta, unk_score_offset=unk_score_offset
        )
    finally:
        quiet.setLevel(level)
    return BeamSearchDecoderCTC(Alphabet.build_alphabet(list(labels)), language_model)


def _grammar(lm_files: LMFiles | None) -> Any:
    from mouthmap.decode.grammar import SlotGrammar

    if lm_files is None or not lm_files.grammar.is_file():
        where = "no LM" if lm_files is None else f"no {lm_files.grammar}"
        raise LMError(
            f"grammar rescoring needs the LM's slot grammar but there is {where}: rebuild the "
            "LM from fixed-length transcripts (`mouthmap lm build`) or set decoder.grammar false"
        )
    return SlotGrammar.load(lm_files.grammar)


class BeamDecoder:
    """Beam search over one alphabet, with a word LM when ``lm`` (a directory holding
    ``lm.arpa`` + ``unigrams.txt``, or :class:`LMFiles`) is given, plain otherwise."""

    def __init__(
        self,
        lm: str | Path | LMFiles | None = None,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        beam_width: int = DEFAULT_BEAM_WIDTH,
        beam_prune_logp: float = DEFAULT_BEAM_PRUNE_LOGP,
        token_min_logp: float = DEFAULT_TOKEN_MIN_LOGP,
        unk_score_offset: float = DEFAULT_UNK_SCORE_OFFSET,
        labels: Sequence[str] = LABELS,
        grammar: bool = False,
        word_weight: float = 0.0,
    ) -> None:
        """``grammar``: rescore each transcript within the slot grammar of the LM's
        ``grammar.json`` (:mod:`mouthmap.decode.grammar`); needs an LM that has one.
        ``word_weight``: for a model with a word head, whose per-frame word log-probs come
        with the clip (:meth:`decode`), that rescoring also weighs the head's best path for
        each sentence by this much and climbs from the head's own sentence, with no beam
        search (:mod:`mouthmap.decode.slots`); 0, or a clip without word log-probs: CTC and
        LM only."""
        if word_weight < 0:
            raise ValueError(f"word_weight must be >= 0, got {word_weight}")
        if beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {beam_width}")
        self.lm_files = _resolve(lm)
        self.labels = tuple(labels)
        self.beam_width = beam_width
        self.beam_prune_logp = beam_prune_logp
        self.token_min_logp = token_min_logp
        self._decoder = _build(self.labels, self.lm_files, alpha, beta, unk_score_offset)
        self.alpha = alpha
        self.word_weight = word_weight
        self.grammar = None
        if grammar:
            self.grammar = _grammar(self.lm_files)
            self._kenlm = self._decoder._language_model._kenlm_model  # loaded once, shared

    def decode(self, log_probs: Any, length: int | None = None, word_log_probs: Any = None) -> str:
        """Best transcript of one clip's ``(T, C)`` log-probs (array or tensor); with the
        model's ``(T, K)`` word log-probs too when it has a word head (see ``word_weight``)."""
        arr = frames(log_probs, length)
        words = None if word_log_probs is None else frames(word_log_probs, length)
        if self._head_leads(words, self.word_weight):
            return self.rescore(arr, "", words)  # the climb starts from the head's sentence
        return self.rescore(arr, self.beam_search(arr), words)

    def beam_search(self, log_probs: Any) -> str:
        """The beam search's transcript alone, before any grammar rescoring."""
        arr = frames(log_probs)
        if arr.shape[1] != len(self.labels):
            raise ValueError(
                f"log-probs have {arr.shape[1]} classes but the decoder has "
                f"{len(self.labels)} labels ({alphabet.NUM_CLASSES}-symbol MouthMap alphabet)"
            )
        if arr.shape[0] == 0:
            return ""
        return self._decoder.decode(
            arr,
            beam_width=self.beam_width,
            beam_prune_logp=self.beam_prune_logp,
            token_min_logp=self.token_min_logp,
        )

    def rescore(
        self,
        log_probs: Any,
        text: str,
        word_log_probs: Any = None,
        word_weight: float | None = None,
    ) -> str:
        """``text`` (this decoder's beam result for ``log_probs``) moved to the best sentence of
        the slot grammar near it; unchanged without a grammar. ``word_weight``: another weight
        for the word head than the decoder's own (the tuning tries several on one decoder).

        With the word head in use the climb starts from the head's own sentence instead, and
        ``text`` is not read: on the 30-epoch release's val and test clips, climbing from the
        beam's transcript as well ended on the same sentences give or take one word in 500
        either way, at twice the time (so :meth:`decode` skips the beam search then)."""
        if self.grammar is None:
            return text
        from mouthmap.decode.grammar import rescore

        weight = self.word_weight if word_weight is None else word_weight
        extra = None
        if self._head_leads(word_log_probs, weight):
            words = frames(word_log_probs)
            extra = self._word_slots.scorer(words, weight)
            text = self._word_slots.decode(words)
        return rescore(frames(log_probs), text, self.grammar, self._kenlm, self.alpha, extra)

    def _head_leads(self, word_log_probs: Any, weight: float) -> bool:
        """Whether the word head takes part: a grammar, the clip's word log-probs, a weight."""
        return self.grammar is not None and word_log_probs is not None and weight > 0

    @functools.cached_property
    def _word_slots(self):
        """The grammar in the word head's classes (built on first use: only a grammar of
        GRID's words has them)."""
        from mouthmap.decode.slots import WordSlots

        return WordSlots(self.grammar.slots)

    def decode_batch(self, log_probs: Any, lengths: Sequence[int] | None = None) -> list[str]:
        """Transcripts of a ``(B, T, C)`` batch or list of ``(T, C)``; one process, in order."""
        return [self.decode(clip) for clip in clips(log_probs, lengths)]

    def __repr__(self) -> str:
        lm = "no LM" if self.lm_files is None else str(self.lm_files.arpa)
        grammar = ", grammar" if self.grammar is not None else ""
        if self.grammar is not None and self.word_weight > 0:
            grammar += f", word_weight={self.word_weight}"
        return f"BeamDecoder({lm}, beam_width={self.beam_width}{grammar})"
