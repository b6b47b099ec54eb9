"""Export, model packages, `mouthmap transcribe` on raw video and `mouthmap evaluate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SAMPLE, sample_clip, write_params
from media_factory import noise_video, reencode
from mouthmap import alphabet
from mouthmap.cli import app
from mouthmap.package import DEFAULT_PACKAGE, ModelPackage, PackageError
from mouthmap.train import checkpoint

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_package_holds_checked_onnx_lm_and_metadata(tiny_package):
    pkg = ModelPackage.load(tiny_package)
    assert pkg.meta["metrics"]["onnx_max_abs_diff"] <= 1e-4  # ONNX Runtime agrees with PyTorch
    assert pkg.meta["alphabet"]["symbols"] == list(alphabet.SYMBOLS)
    assert pkg.meta["input"]["height"] == 88 and 0 < pkg.std < 1
    assert (pkg.lm_dir / "lm.arpa").is_file() and (pkg.lm_dir / "unigrams.txt").is_file()
    assert pkg.meta["lineage"]["training_run_id"] and pkg.meta["lineage"]["git_commit"]


def test_onnx_model_takes_any_clip_length_and_batch(tiny_package):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(ModelPackage.load(tiny_package).model_path))
    for batch, frames in ((1, 20), (3, 75), (2, 140)):
        video = np.zeros((batch, 1, frames, 88, 88), np.float32)
        out = sess.run(None, {"video": video, "lengths": np.full(batch, frames, np.int64)})[0]
        assert out.shape == (batch, frames, alphabet.NUM_CLASSES)


def test_transcribe_json_gives_one_object_per_video(tiny_package):
    videos = [sample_clip("bbaf2n")[0], sample_clip("lgaz8p")[0]]
    result = _cli("transcribe", *videos, "--model", tiny_package, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["path"] for r in rows] == [str(v) for v in videos]
    for r in rows:
        assert {"path", "text", "frames", "seconds"} <= r.keys()
        assert r["frames"] == 75 and r["seconds"] == 3.0 and r["mouth_found"] > 0.9
        assert set(r["text"]) <= set(alphabet.SYMBOLS)


def test_greedy_and_beam_decoders_both_work(tiny_package):
    video = sample_clip("bbaf2n")[0]
    for decoder in ("greedy", "beam"):
        result = _cli("transcribe", video, "--model", tiny_package, "--decoder", decoder)
        assert result.exit_code == 0 and result.output.startswith(f"{video}: ")
    bad = _cli("transcribe", video, "--model", tiny_package, "--decoder", "oracle")
    assert bad.exit_code == 2 and "unknown decoder 'oracle'" in bad.output


def test_bad_videos_are_named_and_the_good_ones_still_transcribed(tiny_package, tmp_path):
    good = sample_clip("bbaf2n")[0]
    text_file = tmp_path / "notes.mp4"
    text_file.write_text("this is not a video")
    faceless = noise_video(tmp_path / "faceless.mp4")
    short = noise_video(tmp_path / "short.mp4", n_frames=4)
    missing = tmp_path / "missing.mp4"
    result = _cli(
        "transcribe", text_file, good, faceless, short, missing, "--model", tiny_package, "--json"
    )
    assert result.exit_code == 1
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.output.strip().splitlines())}
    assert "text" in rows["bbaf2n.mp4"]
    assert "notes.mp4" in rows["notes.mp4"]["error"]
    assert "no mouth found" in rows["faceless.mp4"]["error"]
    assert "only 4 frames" in rows["short.mp4"]["error"]
    assert "no such file" in rows["missing.mp4"]["error"]


def test_transcribe_reads_other_frame_rates_and_silent_video(tiny_package, tmp_path):
    silent = reencode(sample_clip("bbaf2n")[0], tmp_path / "silent.mp4", keep_audio=False)
    result = _cli("transcribe", silent, "--model", tiny_package, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["frames"] == 75


def test_a_directory_that_is_not_a_package_is_refused(tmp_path):
    with pytest.raises(PackageError, match="not a MouthMap model package"):
        ModelPackage.load(tmp_path)
    result = _cli("transcribe", sample_clip()[0], "--model", tmp_path)
    assert result.exit_code == 2 and "not a MouthMap model package" in result.output


def test_a_package_for_another_alphabet_is_refused(tiny_package, tmp_path):
    other = shutil.copytree(tiny_package, tmp_path / "other")
    meta = json.loads((other / "mouthmap.json").read_text())
    meta["alphabet"]["symbols"] = meta["alphabet"]["symbols"][:-1]
    (other / "mouthmap.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="alphabet differs"):
        ModelPackage.load(other)


def test_evaluate_reports_wer_cer_and_slots_per_split_and_decoder(
    tiny_package, prepared_sample, tmp_path
):
    params = write_params(tmp_path, data={"prepared_dir": str(prepared_sample / "prepared")})
    result = _cli("evaluate", "--model", tiny_package, "-p", params)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reports" / "eval" / "evaluation.json").read_text())
    for split in ("val", "test"):
        for decoder in ("greedy", "beam"):
            r = report[split][decoder]
            assert r["clips"] == 3 and r["wer"] >= 0 and r["cer"] >= 0
            assert set(r["slots"]) == {"command", "colour", "preposition", "letter", "digit",
                                       "adverb"}  # fmt: skip
            # which words it mixes up: only in slots with errors, most frequent first
            counts = [n for *_, n in r["confusions"]]
            assert counts == sorted(counts, reverse=True)
            assert all(r["slots"][slot] > 0 for slot, *_ in r["confusions"])
            assert bool(r["confusions"]) == (sum(r["slots"].values()) > 0)
    assert "| test beam |" in result.output
    if report["test"]["beam"]["confusions"]:
        slot, said, read, n = report["test"]["beam"]["confusions"][0]
        assert f"- test beam: {slot} {said} -> {read or '(dropped)'} x{n}" in result.output

    # the checkpoint behind the package, scored in PyTorch, reads the same greedy transcripts
    ckpt = tiny_package.parent / "runs" / "train" / "best.pt"
    result = _cli("evaluate", "--checkpoint", ckpt, "-p", params, "--out", tmp_path / "ck")
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "ck" / "evaluation.json").read_text())
    for split in ("val", "test"):
        assert scored[split]["greedy"]["examples"] == report[split]["greedy"]["examples"]
    missing = _cli("evaluate", "--checkpoint", tmp_path / "none.pt", "-p", params)
    assert missing.exit_code == 2 and "none.pt not found" in missing.output


@pytest.mark.skipif(not DEFAULT_PACKAGE.is_dir(), reason="no released package under models/")
def test_the_released_model_reads_the_sample_clips():
    """The committed student, by default, from raw video: the sample clips (mostly training
    sentences) come out no worse than the test WER its package records, so a broken
    preparation, normalisation or decoder shows up here."""
    from mouthmap.data.corpus import read_align, transcript
    from mouthmap.evaluation.metrics import wer

    recorded = ModelPackage.load(DEFAULT_PACKAGE).meta["evaluation"]["test"]["beam"]["wer"]
    videos = sorted((SAMPLE / "s1" / "video").glob("*.mp4"))
    result = _cli("transcribe", *videos, "--json")
    assert result.exit_code == 0, result.output
    hyps = [json.loads(line)["text"] for line in result.output.strip().splitlines()]
    refs = [transcript(read_align(SAMPLE / "s1" / "align" / f"{v.stem}.align")) for v in videos]
    assert wer(refs, hyps) <= recorded + 0.05
    assert (DEFAULT_PACKAGE / "README.md").read_text().count("CC BY 4.0") >= 1


def test_release_writes_a_scored_package_with_a_model_card(tiny_package, tmp_path):
    params = tiny_package.parent / "params.yaml"
    ckpt = tiny_package.parent / "runs" / "train" / "best.pt"
    out = tmp_path / "released"
    result = _cli("release", "--checkpoint", ckpt, "--out", out, "-p", params,
                  "--notes", "one epoch on the sample")  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = ModelPackage.load(out).meta
    assert meta["decoder_tuning"]["split"] == "val"
    assert meta["evaluation"]["test"]["beam"]["clips"] == 3
    assert meta["evaluation"]["test"]["greedy"]["wer"] >= 0
    assert meta["size"]["parameters"] > 0 and meta["size"]["fp32_onnx_mb"] > 0
    assert meta["training"]["epochs"] == 1 and "cores" in meta["training"]["hardware"]
    card = (out / "README.md").read_text()
    assert "| test | beam | 3 |" in card and "one epoch on the sample" in card
    if meta["evaluation"]["test"]["beam"]["confusions"]:
        assert "Most frequent word errors on test" in card and "- test beam: " in card
    val_wer = meta["training"]["best_val_wer"]
    assert f"greedy, of the chosen epoch: {val_wer:.1%}\n" in card  # a percentage, not 0.xxx
    assert "CC BY 4.0" in card and "Cooke" in card
    kept = ModelPackage.load(out).checkpoint_path  # so the release can be trained further
    assert kept == out / "checkpoint.pt" and "checkpoint.pt" in card
    state = checkpoint.load(kept)
    assert state["slim"] and "optimizer" not in state
    assert state["model"].keys() == checkpoint.load(ckpt)["model"].keys()
    missing = _cli("release", "--checkpoint", tmp_path / "nope.pt", "--out", out, "-p", params)
    assert missing.exit_code == 2 and "nope.pt not found" in missing.output


def test_decoder_tuning_on_val_is_stored_in_the_package(tiny_package, prepared_sample, tmp_path):
    from mouthmap.evaluation.evaluate import tune_decoder

    pkg = shutil.copytree(tiny_package, tmp_path / "pkg")
    prepared = prepared_sample / "prepared"
    best = tune_decoder(pkg, prepared, alphas=(0.0, 1.0), betas=(0.5, 2.0))
    meta = ModelPackage.load(pkg).meta
    assert (meta["decoder"]["alpha"], meta["decoder"]["beta"]) == (best["alpha"], best["beta"])
    # 2 alphas x 2 betas, each without and with the slot grammar the sample's LM carries
    assert meta["decoder_tuning"]["clips"] == 3 and len(meta["decoder_tuning"]["grid"]) == 8
    assert meta["decoder"]["grammar"] == bool(min(meta["decoder_tuning"]["grid"])[4])
    with pytest.raises(ValueError, match="test split"):
        tune_decoder(pkg, prepared, split="test")


def test_decoder_tuning_can_choose_the_lm_order_and_puts_that_lm_in_the_package(
    tiny_package, prepared_sample, tmp_path
):
    from mouthmap import stages
    from mouthmap.config import LMParams, load_params
    from mouthmap.decode.lm import LMFiles

    pkg = shutil.copytree(tiny_package, tmp_path / "pkg")
    params = load_params(prepared_sample / "params.yaml")
    params.lm.tune_orders = [2, 4]
    best = stages.tune_package_decoder(params, pkg)
    tuning = ModelPackage.load(pkg).meta["decoder_tuning"]
    assert best["lm_order"] in (2, 4) and tuning["lm_order"] == best["lm_order"]
    assert {row[1] for row in tuning["grid"]} == {2, 4}  # [wer, order, alpha, beta, grammar]
    assert {row[4] for row in tuning["grid"]} == {0, 1}
    assert min(tuning["grid"])[0] == best["wer"]
    arpa = LMFiles.in_dir(pkg / "lm").arpa.read_text()
    assert f"\\{best['lm_order']}-grams:" in arpa and f"\\{best['lm_order'] + 1}-grams:" not in arpa
    assert not (pkg / "lm.new").exists()
    params.lm.tune_orders = []  # the package's own LM only
    assert stages.tune_package_decoder(params, pkg)["lm_order"] is None
    result = _cli("lm", "tune", "--model", pkg, "-p", prepared_sample / "params.yaml")
    assert result.exit_code == 0, result.output
    assert "LM order " in result.output
    assert ModelPackage.load(pkg).meta["decoder_tuning"]["lm_order"] in (3, 4, 5)
    with pytest.raises(ValueError, match="LM orders must be 2..6"):
        LMParams(tune_orders=[4, 1])


def test_held_out_clips_are_read_from_raw_video_next_to_their_truth(tiny_package, prepared_sample):
    from mouthmap import stages
    from mouthmap.config import load_params
    from mouthmap.data.corpus import in_grammar

    readings = stages.read_held_out(load_params(prepared_sample / "params.yaml"), tiny_package)
    assert len(readings) == 3  # the sample's test-split sentences
    assert all(in_grammar(r.truth) and r.elapsed_ms > 0 for r in readings)


def test_a_run_with_a_word_head_exports_it_and_the_decoder_tunes_its_weight(
    tiny_package, prepared_sample, tmp_path
):
    """A run trained with the alignment aid exports its word head as a second ONNX output;
    the release tunes the head's weight in the grammar rescoring on val and scores the slot
    decoder (``words``) beside greedy and beam; INT8 and transcribe keep reading it. A
    package without a head works as before and refuses the words decoder."""
    from mouthmap import stages
    from mouthmap.compress.qat import QATSettings
    from mouthmap.compress.quantize import quantize_package
    from mouthmap.config import load_params
    from mouthmap.data.corpus import WORDS, in_grammar
    from mouthmap.evaluation.evaluate import evaluate_package, tune_decoder
    from mouthmap.package import update_meta
    from mouthmap.runtime.runner import OnnxRunner
    from mouthmap.runtime.transcriber import Transcriber
    from mouthmap.train.trainer import train

    prepared = prepared_sample / "prepared"
    params = load_params(
        write_params(tmp_path, data={"prepared_dir": str(prepared)}, train={"align_weight": 1.0})
    )
    params.lm.tune_orders = [4]
    ckpt = train(params, progress=False).best_checkpoint
    pkg, _ = stages.release_model(params, ckpt, tmp_path / "pkg")
    meta = ModelPackage.load(pkg).meta
    assert meta["metrics"]["onnx_max_abs_diff"] < 1e-3  # both outputs match PyTorch
    onnx_runner = OnnxRunner(pkg / "model_fp32.onnx")
    assert onnx_runner.has_word_head and not OnnxRunner(tiny_package / "model.onnx").has_word_head
    log_probs, words = onnx_runner.clip_all(np.zeros((40, 88, 88), np.float32))
    assert log_probs.shape == (40, alphabet.NUM_CLASSES) and words.shape == (40, 1 + len(WORDS))
    assert np.allclose(np.exp(words).sum(-1), 1.0, atol=1e-4)

    # [wer, order, alpha, beta, grammar, word_weight]: the head's weights were tried on val
    tuning = meta["decoder_tuning"]
    assert {(row[4], row[5]) for row in tuning["grid"]} == {
        (0, 0.0), (1, 0.0), (1, 0.5), (1, 1.0), (1, 2.0), (1, 4.0), (1, 8.0)
    }  # fmt: skip
    assert meta["decoder"]["word_weight"] == min(tuning["grid"])[5]
    # tuning again from a package that already reads the head: its "0" rows are really 0,
    # so what the tuning reports is what evaluation then measures
    update_meta(ModelPackage.load(pkg), decoder={**meta["decoder"], "word_weight": 2.0})
    best = tune_decoder(pkg, prepared, alphas=(0.5,), betas=(0.0,), word_weights=())
    assert best["word_weight"] == 0.0
    val = evaluate_package(pkg, prepared, ("val",), ("beam",))["val"]["beam"]["wer"]
    assert val == best["wer"]
    assert "| test | words | 3 |" in (pkg / "README.md").read_text()
    assert all(in_grammar(h) for _, h in evaluate_package(pkg, prepared, ("test",), ("words",))
               ["test"]["words"]["examples"])  # fmt: skip
    with pytest.raises(ValueError, match="word head"):
        evaluate_package(tiny_package, prepared, ("test",), ("words",))

    # both INT8 kinds keep the second output (QAT fine-tunes CTC and quantizes the head as
    # it is), and the choice between them decodes with it; transcribe reads the head too
    report = quantize_package(pkg, prepared, ckpt, methods=("ptq", "qat"), calibration_clips=4,
                              qat_settings=QATSettings(limit_train=8), progress=False)  # fmt: skip
    for method in ("ptq", "qat"):
        assert OnnxRunner(pkg / report["methods"][method]["file"]).has_word_head, method
    assert OnnxRunner(pkg / "model.onnx").has_word_head
    settings = {**ModelPackage.load(pkg).meta["decoder"], "grammar": True, "word_weight": 1.0}
    update_meta(ModelPackage.load(pkg), decoder=settings)
    video, _ = sample_clip()
    out = Transcriber(pkg, decoder="beam").transcribe(video)
    assert in_grammar(out.text), out.text
