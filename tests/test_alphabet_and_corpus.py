"""Alphabet, .align parsing, the GRID grammar and clip discovery."""

from pathlib import Path

import pytest

from mouthmap import alphabet
from mouthmap.data import corpus

REAL_ALIGN = "0 23750 sil\r\n23750 29500 bin\r\n29500 34000 blue\r\n34000 35500 at\r\n35500 41000 f\r\n41000 47250 two\r\n47250 53000 now\r\n53000 74500 sil\r\n"  # noqa: E501


def test_alphabet_has_blank_first_then_space_then_letters():
    assert alphabet.SYMBOLS[0] == alphabet.BLANK and alphabet.SYMBOLS[1] == " "
    assert alphabet.NUM_CLASSES == 28
    assert alphabet.decode(alphabet.encode("bin blue at f two now")) == "bin blue at f two now"


def test_ctc_collapse_merges_repeats_and_drops_blanks():
    a, b = alphabet.encode("ab")
    assert alphabet.ctc_collapse([0, a, a, 0, a, b, b, 0]) == [a, a, b]


def test_text_outside_alphabet_is_refused_with_the_character_named():
    with pytest.raises(alphabet.AlphabetError, match="'7'"):
        alphabet.encode("set 7 now")


def test_crlf_align_parses_to_the_six_spoken_words_without_silence():
    words = corpus.parse_align(REAL_ALIGN)
    assert corpus.transcript(words) == "bin blue at f two now"
    assert words[0].start_frame == 23 and words[0].end_frame == 30
    assert corpus.in_grammar(corpus.transcript(words))


def test_short_pause_markers_are_dropped():
    text = "0 1000 sil\n1000 2000 bin\n2000 2500 sp\n2500 3000 red\n"
    assert corpus.transcript(corpus.parse_align(text)) == "bin red"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("0 1000 sil\n1000 2000 sil\n", "only silence"),
        ("0 1000\n", "expected 'start end word'"),
        ("0 abc bin\n", "not integers"),
        ("2000 1000 bin\n", "bad interval"),
        ("0 2000 bin\n1000 3000 red\n", "overlaps"),
    ],
)
def test_malformed_align_is_refused_naming_file_and_cause(text, message):
    with pytest.raises(corpus.AlignError, match=message) as err:
        corpus.parse_align(text, "s1/align/x.align")
    assert "s1/align/x.align" in str(err.value)


def test_missing_align_file_is_named(tmp_path):
    with pytest.raises(corpus.AlignError, match="not found"):
        corpus.read_align(tmp_path / "nope.align")


def test_grammar_accepts_grid_sentences_and_rejects_others():
    assert corpus.in_grammar("place white with z nine please")
    assert not corpus.in_grammar("place purple with z nine please")
    assert not corpus.in_grammar("place white with w nine please")  # GRID has no "w"
    assert not corpus.in_grammar("place white with z nine")
    assert corpus.slot_words("set red by k one soon")["letter"] == "k"


def test_discover_finds_clips_and_keeps_those_without_alignment(tmp_path: Path):
    (tmp_path / "s2" / "video").mkdir(parents=True)
    (tmp_path / "s2" / "align").mkdir()
    for code in ("bbaf2n", "bbaf3s"):
        (tmp_path / "s2" / "video" / f"{code}.mpg").write_bytes(b"x")
    (tmp_path / "s2" / "video" / "notes.txt").write_text("ignored")
    (tmp_path / "s2" / "align" / "bbaf2n.align").write_text(REAL_ALIGN)
    clips = corpus.discover(tmp_path)
    assert [c.id for c in clips] == ["s2_bbaf2n", "s2_bbaf3s"]
    assert clips[0].align is not None and clips[1].align is None


def test_discover_on_missing_directory_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus.discover(tmp_path / "missing")


def test_frame_labels_mark_each_frame_with_the_word_spoken_there():
    words = corpus.parse_align(REAL_ALIGN)  # bin 23750..29500: the centres of frames 24..28
    labels = corpus.frame_labels(words, 75)
    assert len(labels) == 75 and labels[0] == 0 and labels[-1] == 0  # silence around it
    bin_class = 1 + corpus.WORDS.index("bin")
    assert labels[24:29] == [bin_class] * 5 and labels[23] == 0 and labels[29] != bin_class
    spoken = ["bin", "blue", "at", "f", "two", "now"]
    assert sorted(set(labels) - {0}) == sorted(1 + corpus.WORDS.index(w) for w in spoken)
    assert len(corpus.WORDS) == 51  # the GRID grammar's words
    odd = corpus.frame_labels([corpus.Word(0, 2000, "hello")], 4)
    assert odd == [corpus.IGNORE_LABEL] * 2 + [0, 0]
