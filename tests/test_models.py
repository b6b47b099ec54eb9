"""Models: every front end x back end, the named models, and their size/compute summary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mouthmap import alphabet
from mouthmap.models import build_model, summary
from mouthmap.models.backends import BACKENDS
from mouthmap.models.base import VSRModel, time_mask
from mouthmap.models.frontends import FRONTENDS
from mouthmap.models.layers import MultiHeadSelfAttention

COMBINATIONS = [(fe, be) for fe in FRONTENDS for be in BACKENDS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(frontend: str, backend: str) -> VSRModel:
    torch.manual_seed(0)
    return build_model({"frontend": frontend, "backend": backend})


def _as_if_trained(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affines: a fresh model maps zero padding to zero in
    places where a trained one does not, which would hide padding leaks."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
    return model.eval()


def _clips(lengths: list[int], frames: int) -> torch.Tensor:
    """Random clips, with random (not zero) frames as padding beyond each length."""
    return torch.randn(len(lengths), 1, frames, 88, 88)


@pytest.mark.parametrize(("frontend", "backend"), COMBINATIONS)
def test_every_combination_gives_per_frame_log_probs_and_trains_with_ctc(frontend, backend):
    model = _model(frontend, backend).train()
    lengths = torch.tensor([7, 4])
    log_probs = model(_clips([7, 4], 7), lengths)
    assert log_probs.shape == (2, 7, alphabet.NUM_CLASSES)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 7))

    words = [alphabet.encode("blue"), alphabet.encode("at")]
    targets = torch.tensor([i for w in words for i in w])
    loss = F.ctc_loss(
        log_probs.transpose(0, 1), targets, lengths, torch.tensor([len(w) for w in words]),
        blank=alphabet.BLANK_INDEX,
    )  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss)
    unreached = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unreached, f"no gradient reaches {unreached}"
    broken = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradients in {broken}"


@pytest.mark.parametrize(("frontend", "backend"), COMBINATIONS)
def test_a_clip_reads_the_same_alone_or_padded_in_a_batch(frontend, backend):
    model = _as_if_trained(_model(frontend, backend))
    batch = _clips([9, 4], 9)  # the short clip's frames 4..8 are padding, random on purpose
    with torch.no_grad():
        together = model(batch, torch.tensor([9, 4]))
        alone = model(batch[1:, :, :4], torch.tensor([4]))
    assert together.shape[1] == 9 and alone.shape[1] == 4  # time is never strided or pooled
    torch.testing.assert_close(together[1, :4], alone[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_frontends_given_the_mask_keep_padding_out_of_valid_frames(frontend):
    torch.manual_seed(0)
    fe = _as_if_trained(FRONTENDS[frontend]())
    batch = _clips([9, 4], 9)
    with torch.no_grad():
        together = fe(batch, time_mask(torch.tensor([9, 4]), 9))
        alone = fe(batch[1:, :, :4], time_mask(torch.tensor([4]), 4))
    assert together.shape == (2, 9, fe.out_dim)
    torch.testing.assert_close(together[1, :4], alone[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_named_models_build(name):
    model = build_model(name)
    assert isinstance(model, VSRModel)
    assert model.classifier.out_features == alphabet.NUM_CLASSES


def test_unknown_names_are_rejected_with_the_known_ones_listed():
    with pytest.raises(ValueError, match="known models: teacher, student"):
        build_model("oracle")
    with pytest.raises(ValueError, match="known frontends: " + ", ".join(FRONTENDS)):
        build_model({"frontend": "resnet18", "backend": "mstcn"})
    with pytest.raises(ValueError, match="known backends: " + ", ".join(BACKENDS)):
        build_model({"frontend": "shufflenetv2", "backend": "transformer"})


def test_student_fits_the_six_megabyte_fp32_budget():
    s = summary.summarise("student")
    assert (s.name, s.frontend, s.backend) == ("student", "shufflenetv2", "mstcn")
    assert s.size_mb == pytest.approx(4 * s.parameters / 1e6)
    assert s.size_mb <= 6.0


def test_teacher_costs_at_least_five_times_the_student_compute():
    teacher, student = summary.summarise("teacher"), summary.summarise("student")
    ratio = teacher.macs_per_second / student.macs_per_second
    assert ratio >= 5, f"teacher/student MACs = {ratio:.2f}"


def test_compute_grows_linearly_with_clip_length():
    one, two = summary.summarise("student", 1.0), summary.summarise("student", 2.0)
    assert (one.seconds, two.seconds) == (1.0, 2.0)
    assert two.macs == pytest.approx(2 * one.macs, rel=1e-6)
    assert two.macs_per_second == pytest.approx(one.macs_per_second, rel=1e-6)


def test_lstm_compute_is_counted():
    d, h, t = 40, 16, 25
    per_step = 4 * h * (d + h) + 4 * h * (2 * h + h)  # two layers, per direction
    x, lengths = torch.randn(1, t, d), torch.tensor([t])
    backend = BACKENDS["bilstm"](d, hidden=h, layers=2).eval()
    assert summary.count_macs(backend, x, lengths, time_mask(lengths, t)) == 2 * t * per_step
    lstm = nn.LSTM(d, h, 2, batch_first=True, bidirectional=True)
    assert summary.count_macs(lstm, x) == 2 * t * per_step


def test_attention_compute_is_counted():
    d, t = 16, 10
    attn = MultiHeadSelfAttention(d, heads=4).eval()
    projections = t * d * 3 * d + t * d * d
    scores_and_mixing = 2 * t * t * d
    assert summary.count_macs(attn, torch.randn(1, t, d)) == projections + scores_and_mixing


def test_summary_lists_every_combination_and_prints_tables():
    models = summary.all_combinations()
    assert models[:2] == ["teacher", "student"]
    assert len(models) == 2 + len(FRONTENDS) * len(BACKENDS)
    rows = [
        summary.ModelSummary("b", "lipnet3d", "bilstm", 2_000_000, 8.0, 3e9),
        summary.ModelSummary("a", "shufflenetv2", "mstcn", 1_000_000, 4.0, 4e8),
    ]
    md = summary.markdown_table(rows, sort_by="macs_per_second").splitlines()
    assert md[0].startswith("| model |") and len(md) == 4
    assert md[2].startswith("| a |") and "1,000,000" in md[2] and "0.400" in md[2]
    text = summary.format_table(rows).splitlines()
    assert text[2].startswith("b ") and text[2].endswith("3.000") and len(text) == 4


def test_models_summary_command_lists_every_model_with_size_and_macs():
    from typer.testing import CliRunner

    from mouthmap.cli import app

    result = CliRunner().invoke(app, ["models", "summary", "--markdown"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 + len(COMBINATIONS)  # header, teacher, student, combinations
    assert any(r.startswith("| student ") for r in rows)


@pytest.mark.parametrize("frontend", ["shufflenetv2", "mobilenetv2", "ghostnet", "mobilevit"])
def test_the_exported_form_of_the_conv3d_stem_reads_the_same(frontend):
    """Export runs the 5x7x7 Conv3d stem as a Conv2d over 5 stacked frames (fast 2-D and INT8
    kernels); a trained model must give the same log-probs either way, padding included."""
    from mouthmap.compress.export import deployable

    torch.manual_seed(0)
    model = build_model({"frontend": frontend, "backend": "mstcn"}).eval()
    for m in model.modules():  # trained-looking BatchNorm statistics, not the identity
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    video, lengths = torch.randn(2, 1, 30, 88, 88), torch.tensor([30, 21])
    exported = deployable(model)
    assert not any(isinstance(m, nn.Conv3d) for m in _used_convs(exported, video, lengths))
    with torch.no_grad():
        a, b = model(video, lengths), exported(video, lengths)
    assert torch.allclose(a, b, atol=1e-4)
    assert any(isinstance(m, nn.Conv3d) for m in model.modules())  # the original is untouched


def _used_convs(model: nn.Module, *inputs) -> list[nn.Module]:
    used: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: used.append(m)) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Conv3d))]  # fmt: skip
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return used


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_back_end_exports_to_onnx_that_reads_any_clip_length(backend, tmp_path):
    """The teacher's Bi-LSTM included: an export traced at 20 frames reads 33-frame clips in a
    mixed batch as PyTorch does (torch.export alone would fix an LSTM's time axis at 20)."""
    from mouthmap.compress.export import export_onnx, max_abs_difference

    model = _model("shufflenetv2", backend).eval()
    path = export_onnx(model, tmp_path / "m.onnx", frames=20)
    assert max_abs_difference(model, path, frames=33) < 1e-4
