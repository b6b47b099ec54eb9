"""Decoders and the word LM: what a user of `transcribe --decoder greedy|beam` would notice."""

from __future__ import annotations

import itertools
import random
import re
import statistics
import time
from pathlib import Path

import kenlm
import numpy as np
import pytest

from mouthmap import alphabet
from mouthmap.data.corpus import SLOTS
from mouthmap.decode import BeamDecoder, LMFiles, build_lm, greedy_decode, greedy_decode_batch
from mouthmap.decode.lm import LMError, kneser_ney
from mouthmap.decode.synthetic import synthetic_log_probs

SENTENCE = "bin blue at f two now"


def grid_sentences(n: int, seed: int = 0, exclude: str = SENTENCE) -> list[str]:
    """Random sentences of the GRID grammar (the test sentence itself left out)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = " ".join(rng.choice(words) for words in SLOTS.values())
        if s != exclude:
            out.append(s)
    return out


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> LMFiles:
    return build_lm(grid_sentences(400), tmp_path_factory.mktemp("lm"), order=3)


@pytest.fixture(scope="module")
def kenlm_model(lm: LMFiles) -> kenlm.Model:
    return kenlm.Model(str(lm.arpa))


def spike_log_probs(text: str, ambiguous: dict[int, dict[str, float]] | None = None) -> np.ndarray:
    """Model-like output: each character one peaked frame followed by a blank frame.

    ``ambiguous`` maps a character position to a probability split between symbols.
    """
    ambiguous = ambiguous or {}
    rows: list[dict[int, float]] = [{0: 0.97}] * 3
    for i, ch in enumerate(text):
        split = ambiguous.get(i, {ch: 0.94})
        rows.append({alphabet.SYMBOLS.index(c): p for c, p in split.items()})
        rows.append({0: 0.97})
    rows += [{0: 0.97}] * 3
    probs = np.zeros((len(rows), alphabet.NUM_CLASSES))
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (alphabet.NUM_CLASSES - len(row))
        probs[t] = rest
        for k, p in row.items():
            probs[t, k] = p
    return np.log(probs)


# --- greedy -------------------------------------------------------------------------------


def one_hot(indices: list[int]) -> np.ndarray:
    lp = np.full((len(indices), alphabet.NUM_CLASSES), -20.0)
    lp[np.arange(len(indices)), indices] = 0.0
    return lp


def test_greedy_merges_repeated_frames_and_drops_blanks():
    b, i, n, sp, g, r, e = alphabet.encode("bin gre")
    frames = [0, b, b, 0, i, n, n, n, 0, sp, sp, g, r, r, e, 0, e, n, 0]
    assert greedy_decode(one_hot(frames)) == "bin green"


def test_greedy_keeps_a_doubled_letter_only_when_a_blank_separates_it():
    e = alphabet.encode("e")[0]
    assert greedy_decode(one_hot([e, e, e])) == "e"
    assert greedy_decode(one_hot([e, 0, e])) == "ee"


def test_greedy_ignores_padding_frames_beyond_the_clip_length():
    lp = spike_log_probs("set red")
    padded = np.concatenate([lp, spike_log_probs(" xx")])
    assert greedy_decode(padded, length=len(lp)) == "set red"
    assert greedy_decode_batch(np.stack([padded, padded]), lengths=[len(lp), len(padded)]) == [
        "set red",
        "set red xx",
    ]


def test_greedy_accepts_torch_tensors_from_the_model():
    torch = pytest.importorskip("torch")
    lp = torch.tensor(spike_log_probs(SENTENCE), requires_grad=True)
    assert greedy_decode(lp) == SENTENCE


def test_greedy_strips_leading_and_doubled_spaces():
    sp, a = alphabet.encode(" a")
    assert greedy_decode(one_hot([sp, 0, a, sp, 0, sp, a, sp])) == "a a"


# --- language model -----------------------------------------------------------------------


def test_lm_is_a_valid_arpa_file_that_kenlm_loads(lm: LMFiles, kenlm_model: kenlm.Model):
    text = lm.arpa.read_text()
    assert text.lstrip().startswith("\\data\\") and text.rstrip().endswith("\\end\\")
    assert kenlm_model.order == 3
    for n in (1, 2, 3):
        declared = int(text.split(f"ngram {n}=")[1].split()[0])
        section = text.split(f"\\{n}-grams:\n")[1].split("\n\n")[0]
        assert declared == len(section.splitlines())
    unigrams = text.split("\\1-grams:\n")[1].split("\n\n")[0].splitlines()
    unigram_words = {line.split("\t")[1] for line in unigrams}
    assert {"<unk>", "<s>", "</s>"} <= unigram_words


def test_lm_unigram_list_holds_every_word_and_no_markers(lm: LMFiles):
    words = lm.words()
    assert set(words) == {w for ws in SLOTS.values() for w in ws}
    assert not {"<s>", "</s>", "<unk>"} & set(words)


def test_lm_prefers_a_grammatical_sentence_to_every_shuffle_of_its_words(kenlm_model):
    words = SENTENCE.split()
    shuffled = [" ".join(p) for p in itertools.islice(itertools.permutations(words), 1, 200)]
    best_shuffled = max(kenlm_model.score(s) for s in shuffled)
    assert kenlm_model.score(SENTENCE) > best_shuffled + 1  # over 10x more likely


def _context_mass(model: kenlm.Model, context: list[str], vocab: list[str]) -> float:
    state = kenlm.State()
    if context[:1] == ["<s>"]:
        model.BeginSentenceWrite(state)
        context = context[1:]
    else:
        model.NullContextWrite(state)
    for w in context:
        nxt = kenlm.State()
        model.BaseScore(state, w, nxt)
        state = nxt
    return sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in vocab)


@pytest.mark.parametrize(
    "context",
    [[], ["<s>"], ["<s>", "bin"], ["bin", "blue"], ["at"], ["f", "two"], ["now", "bin"], ["zzz"]],
    ids=lambda c: " ".join(c) or "unigram",
)
def test_lm_probabilities_of_every_context_sum_to_one(lm, kenlm_model, context):
    vocab = [*lm.words(), "</s>", "<unk>"]
    assert _context_mass(kenlm_model, context, vocab) == pytest.approx(1.0, abs=1e-4)


def test_lm_lists_vocabulary_words_unseen_in_training_so_beam_search_can_spell_them(
    tmp_path: Path,
):
    files = build_lm([SENTENCE] * 3, tmp_path, order=2, vocabulary=["red"])
    model = kenlm.Model(str(files.arpa))
    assert "red" in files.words() and "red" in model
    vocab = [*files.words(), "</s>", "<unk>"]
    assert _context_mass(model, ["bin"], vocab) == pytest.approx(1.0, abs=1e-4)
    lp = spike_log_probs("bin red at f two now", {5: {"a": 0.52, "e": 0.43}})  # rad|red
    assert BeamDecoder(files).decode(lp) == "bin red at f two now"
    without = build_lm([SENTENCE] * 3, tmp_path / "without", order=2)
    assert BeamDecoder(without).decode(lp) == "bin rad at f two now"


def test_lm_estimate_matches_what_kenlm_reads_back(lm, kenlm_model):
    model = kneser_ney(grid_sentences(400), order=3)
    for (w1, w2, w3), entry in list(model[2].items())[:20]:
        state, mid, out = kenlm.State(), kenlm.State(), kenlm.State()
        if w1 == "<s>":
            kenlm_model.BeginSentenceWrite(mid)
        else:
            kenlm_model.NullContextWrite(state)
            kenlm_model.BaseScore(state, w1, mid)
        after = kenlm.State()
        kenlm_model.BaseScore(mid, w2, after)
        assert kenlm_model.BaseScore(after, w3, out) == pytest.approx(entry.logp, abs=1e-5)


def test_lm_refuses_unigram_models_and_empty_corpora(tmp_path: Path):
    with pytest.raises(LMError, match="at least 2"):
        build_lm([SENTENCE], tmp_path, order=1)
    with pytest.raises(LMError, match="no non-empty transcripts"):
        build_lm(["", "  "], tmp_path)


# --- beam search --------------------------------------------------------------------------


def blue_or_blua() -> np.ndarray:
    """'blue' spelled with its final letter a near coin flip, leaning to the wrong 'a'."""
    pos = SENTENCE.index("blue") + 3
    return spike_log_probs(SENTENCE, {pos: {"a": 0.52, "e": 0.43}})


def test_beam_with_lm_fixes_a_letter_that_greedy_gets_wrong(lm: LMFiles, capfd):
    lp = blue_or_blua()
    assert greedy_decode(lp) == "bin blua at f two now"
    assert BeamDecoder(lm).decode(lp) == SENTENCE
    # KenLM's loading chatter (progress bar, "build a binary file") stays off the terminal
    assert capfd.readouterr().err == ""


def test_beam_without_lm_still_decodes_but_cannot_fix_spelling():
    decoder = BeamDecoder(None)
    assert decoder.decode(spike_log_probs(SENTENCE)) == SENTENCE
    assert decoder.decode(blue_or_blua()) == "bin blua at f two now"


def test_beam_accepts_an_lm_directory_and_a_batch_with_lengths(lm: LMFiles):
    decoder = BeamDecoder(lm.arpa.parent)
    a, b = blue_or_blua(), spike_log_probs("set red by a one soon")
    batch = np.full((2, max(len(a), len(b)), alphabet.NUM_CLASSES), np.log(1e-3))
    batch[0, : len(a)], batch[1, : len(b)] = a, b
    assert decoder.decode_batch(batch, lengths=[len(a), len(b)]) == [
        SENTENCE,
        "set red by a one soon",
    ]


def test_beam_keeps_the_last_word_when_the_clip_ends_in_a_space(lm: LMFiles):
    lp = spike_log_probs(SENTENCE + " ")
    assert BeamDecoder(lm).decode(lp) == SENTENCE


def test_missing_lm_files_are_named_in_the_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere" / "lm.arpa"))):
        BeamDecoder(tmp_path / "nowhere")
    (tmp_path / "lm.arpa").write_text("\\data\\\n")
    with pytest.raises(FileNotFoundError, match="unigrams.txt"):
        BeamDecoder(tmp_path)


def test_log_probs_with_the_wrong_number_of_classes_are_refused(lm: LMFiles):
    with pytest.raises(ValueError, match="29 classes but the decoder has 28 labels"):
        BeamDecoder(lm).decode(np.zeros((10, 29)))
    with pytest.raises(ValueError, match="shape"):
        BeamDecoder(lm).decode(np.zeros((2, 10, 28)))


def test_beam_with_lm_decodes_a_3s_clip_in_a_few_milliseconds(lm: LMFiles):
    rng = np.random.default_rng(0)
    clips = [synthetic_log_probs(s, rng) for s in grid_sentences(20, seed=1)]
    decoder = BeamDecoder(lm)
    decoder.decode(clips[0])
    times = []
    for x in clips:
        t0 = time.perf_counter()
        decoder.decode(x)
        times.append(time.perf_counter() - t0)
    # ~2-5 ms on one core here; the bound only catches order-of-magnitude regressions.
    assert statistics.median(times) < 0.05


# --- slot grammar rescoring ------------------------------------------------------------------


def test_ctc_likelihood_sums_every_alignment_like_torch_ctc_loss():
    import torch

    from mouthmap.decode.grammar import ctc_log_likelihood

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (40, alphabet.NUM_CLASSES))
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    texts = [SENTENCE, "see", "a", "x" * 30]  # a doubled letter needs a blank; 30 x's cannot fit
    mine = ctc_log_likelihood(lp, texts)
    targets = [torch.tensor(alphabet.encode(t)) for t in texts]
    ref = -torch.nn.functional.ctc_loss(
        torch.from_numpy(lp).unsqueeze(1).expand(-1, len(texts), -1), torch.cat(targets),
        torch.full((len(texts),), 40), torch.tensor([len(t) for t in targets]), reduction="none",
    ).numpy()  # fmt: skip
    assert np.allclose(mine[:3], ref[:3], atol=1e-6)
    assert mine[3] == -np.inf and ref[3] == -np.inf


def test_slot_grammar_is_learnt_from_fixed_length_transcripts_and_travels_with_the_lm(tmp_path):
    from mouthmap.decode.grammar import SlotGrammar

    sentences = grid_sentences(400)
    grammar = SlotGrammar.from_transcripts(sentences)
    assert [set(s) for s in grammar.slots] == [set(w) for w in SLOTS.values()]
    assert SlotGrammar.from_transcripts(["bin blue at f two now", "hello world"]) is None
    files = build_lm(sentences, tmp_path / "lm")
    assert SlotGrammar.load(files.grammar) == grammar
    # words kept where they fit, in order; a missing slot gets its most frequent word
    start = grammar.start("blue a two now")
    assert start == [grammar.slots[0][0], "blue", grammar.slots[2][0], "a", "two", "now"]
    build_lm([*sentences, "hello world"], tmp_path / "lm")  # no grammar any more: the file goes
    assert not files.grammar.exists()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        SlotGrammar.load(tmp_path / "bad.json")


def test_grammar_rescoring_restores_a_letter_the_beam_search_drops(lm: LMFiles):
    # the letter's frame leans to blank, as the real model's weakest slot does
    pos = SENTENCE.index(" f ") + 1
    lp = spike_log_probs(SENTENCE, {pos: {"<blank>": 0.6, "f": 0.3, "s": 0.05}})
    assert BeamDecoder(lm).decode(lp) == "bin blue at two now"
    decoder = BeamDecoder(lm, grammar=True)
    assert decoder.decode(lp) == SENTENCE
    assert decoder.decode(spike_log_probs("set red by a one soon")) == "set red by a one soon"
    assert "grammar" in repr(decoder)


def test_grammar_rescoring_needs_an_lm_that_has_a_grammar(lm: LMFiles, tmp_path: Path):
    from mouthmap.decode.lm import LMError

    with pytest.raises(LMError, match="no LM"):
        BeamDecoder(None, grammar=True)
    plain = build_lm(["hello world", "bin blue at f two now"], tmp_path / "free")
    with pytest.raises(LMError, match=re.escape(str(plain.grammar))):
        BeamDecoder(plain, grammar=True)


# --- word-slot decoding (a model's word head) ----------------------------------------------


def word_log_probs(text: str, unsure: dict[int, dict[str, float]] | None = None) -> np.ndarray:
    """A word head's output: silence, then each word for 4 frames with a silent frame
    between words; ``unsure`` maps a word position to probabilities over words."""
    from mouthmap.data.corpus import WORDS

    k = len(WORDS) + 1
    rows: list[dict[int, float]] = [{0: 0.9}] * 3
    for i, w in enumerate(text.split()):
        split = (unsure or {}).get(i, {w: 0.9})
        rows += [{WORDS.index(x) + 1: p for x, p in split.items()}] * 4 + [{0: 0.9}]
    rows += [{0: 0.9}] * 2
    probs = np.zeros((len(rows), k))
    for t, row in enumerate(rows):
        probs[t] = (1.0 - sum(row.values())) / (k - len(row))
        for c, p in row.items():
            probs[t, c] = p
    return np.log(probs)


def test_slot_viterbi_finds_the_best_sentence_of_all_and_scores_it_like_forced_alignment():
    from mouthmap.decode.slots import forced_scores, slot_viterbi

    rng = np.random.default_rng(0)
    slots = [[1, 2], [3, 4, 5], [6, 2]]  # a class may recur in another slot
    for _ in range(40):
        t = int(rng.integers(3, 12))
        lp = np.log(rng.dirichlet(np.full(7, 0.5), size=t))
        sentences = list(itertools.product(*slots))
        every = forced_scores(lp, sentences)
        best, score = slot_viterbi(lp, slots)
        assert np.isclose(score, every.max())
        assert np.isclose(every[sentences.index(tuple(best))], score)
    assert slot_viterbi(np.zeros((2, 7)), slots) == ([], float("-inf"))  # 3 words, 2 frames
    assert np.isneginf(forced_scores(np.zeros((2, 7)), [[1, 3, 6]])).all()


def test_word_slots_read_the_sentence_a_word_head_shows_and_refuse_unknown_words():
    from mouthmap.decode.slots import WordSlots

    slots = WordSlots()
    assert slots.decode(word_log_probs(SENTENCE)) == SENTENCE
    # one unsure frame-run does not move a word the other frames agree on
    assert slots.decode(word_log_probs(SENTENCE, {3: {"f": 0.5, "s": 0.4}})) == SENTENCE
    with pytest.raises(ValueError, match="classes"):
        slots.decode(np.zeros((30, 5)))
    with pytest.raises(ValueError, match="no class for"):
        WordSlots([["bin"], ["hello"]])


def test_beam_rescoring_weighs_the_word_head_when_the_model_has_one(lm: LMFiles):
    # CTC reads the letter as its look-alike; the word head, over four frames, knows it
    pos = SENTENCE.index(" f ") + 1
    lp = spike_log_probs(SENTENCE, {pos: {"s": 0.6, "f": 0.3}})
    words = word_log_probs(SENTENCE, {3: {"f": 0.6, "s": 0.3}})
    assert BeamDecoder(lm, grammar=True).decode(lp, word_log_probs=words) != SENTENCE
    hybrid = BeamDecoder(lm, grammar=True, word_weight=1.0)
    assert hybrid.decode(lp) != SENTENCE  # no word log-probs: CTC and LM only
    assert hybrid.decode(lp, word_log_probs=words) == SENTENCE
    assert "word_weight=1.0" in repr(hybrid)
    with pytest.raises(ValueError, match="word_weight"):
        BeamDecoder(lm, word_weight=-1.0)


def test_with_a_word_head_decoding_climbs_from_its_sentence_without_a_beam_search(
    lm: LMFiles, monkeypatch: pytest.MonkeyPatch
):
    from mouthmap.decode.slots import WordSlots

    # the head leans to the wrong colour; CTC spells the right one clearly
    words = word_log_probs(SENTENCE, {1: {"red": 0.5, "blue": 0.4}})
    assert WordSlots().decode(words) == SENTENCE.replace("blue", "red")
    hybrid = BeamDecoder(lm, grammar=True, word_weight=1.0)
    monkeypatch.setattr(hybrid, "beam_search", lambda *_: pytest.fail("beam search ran"))
    assert hybrid.decode(spike_log_probs(SENTENCE), word_log_probs=words) == SENTENCE
