"""Temporal back ends: (B, T, D) features + lengths -> (B, T, H). Padded frames never
reach valid ones: the TCN zeroes them before every convolution, the LSTM
reverses each clip within its length, the Conformer masks padding out of attention and
zeroes it before its depthwise convolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mouthmap.models.layers import FeedForward, PreNormAttention


class MSTCNBlock(nn.Module):
    """Parallel dilated temporal convolutions with several kernel sizes, two layers, residual."""

    def __init__(self, width: int, kernels: tuple[int, ...], dilation: int, dropout: float):
        super().__init__()
        branch = width // len(kernels)
        self.layers = nn.ModuleList()
        for cin in (width, branch * len(kernels)):
            self.layers.append(
                nn.ModuleList(
                    nn.Conv1d(cin, branch, k, padding=dilation * (k - 1) // 2, dilation=dilation)
                    for k in kernels
                )
            )
        self.norms = nn.ModuleList(nn.BatchNorm1d(branch * len(kernels)) for _ in range(2))
        self.act = nn.PReLU()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Conv1d(branch * len(kernels), width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for convs, norm in zip(self.layers, self.norms, strict=True):
            y = y * mask
            y = self.drop(self.act(norm(torch.cat([c(y) for c in convs], 1))))
        return (x + self.proj(y)) * mask


class MSTCN(nn.Module):
    def __init__(
        self,
        in_dim: int,
        width: int = 192,
        blocks: int = 2,
        kernels: tuple[int, ...] = (3, 5, 7),
        dropout: float = 0.2,
    ):
        super().__init__()
        self.inp = nn.Conv1d(in_dim, width, 1)
        self.blocks = nn.ModuleList(
            MSTCNBlock(width, kernels, 2**i, dropout) for i in range(blocks)
        )
        self.out_dim = width

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None, :].to(x.dtype)
        y = self.inp(x.transpose(1, 2)) * m
        for block in self.blocks:
            y = block(y, m)
        return y.transpose(1, 2)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each clip's valid frames in place; the padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx[..., None].expand_as(x))


class BiLSTM(nn.Module):
    """Bidirectional LSTM built from one-way layers. The backward pass runs over each
    clip reversed within its own length, so padding never reaches valid frames, without
    packed sequences: the same graph trains, exports to ONNX and serves mixed batches."""

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 2, dropout: float = 0.3):
        super().__init__()
        dims = [in_dim] + [2 * hidden] * (layers - 1)
        self.fwd = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.bwd = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.drop = nn.Dropout(dropout)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for i, (fwd, bwd) in enumerate(zip(self.fwd, self.bwd, strict=True)):
            if i:
                y = self.drop(y)
            back = reverse_padded(bwd(reverse_padded(y, lengths))[0], lengths)
            y = torch.cat([fwd(y)[0], back], -1)
        return y * mask[..., None].to(y.dtype)


def sinusoid_positions(frames: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """(T, dim) sine/cosine absolute position codes (Vaswani et al.), built from T at run time."""
    pos = torch.arange(frames, device=like.device, dtype=like.dtype)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=like.device, dtype=like.dtype) * (-math.log(10000.0) / dim)
    )
    angles = pos * freq  # (T, dim / 2)
    return torch.stack([angles.sin(), angles.cos()], -1).reshape(frames, dim)


class ConformerConv(nn.Module):
    """Conformer convolution module: LayerNorm, pointwise + GLU, depthwise conv in time,
    LayerNorm, Swish, pointwise, dropout. Padded frames are zeroed before the depthwise conv;
    LayerNorm (not BatchNorm) keeps even training-time statistics free of padding."""

    def __init__(self, dim: int, kernel: int, dropout: float):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"conformer kernel must be odd to keep T, got {kernel}")
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 2 * dim)
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.dw_norm = nn.LayerNorm(dim)
        self.pw2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pw1(self.norm(x)), dim=-1) * m  # (B, T, D), padded frames zero
        y = self.dw(y.transpose(1, 2)).transpose(1, 2)
        return self.drop(self.pw2(F.silu(self.dw_norm(y))))


class ConformerBlock(nn.Module):
    """Half-step FFN, self-attention, convolution module, half-step FFN, LayerNorm."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, kernel: int, dropout: float):
        super().__init__()
        self.ffn1 = FeedForward(dim, ffn_mult * dim, dropout)
        self.attn = PreNormAttention(dim, heads, dropout)
        self.conv = ConformerConv(dim, kernel, dropout)
        self.ffn2 = FeedForward(dim, ffn_mult * dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attn(x, mask)
        x = x + self.conv(x, m)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


class Conformer(nn.Module):
    """A lite Conformer (Gulati et al. 2020): linear projection to ``d_model`` plus sinusoidal
    positions, then ``blocks`` Conformer blocks. No subsampling: one output per frame."""

    def __init__(
        self,
        in_dim: int,
        d_model: int = 144,
        blocks: int = 3,
        heads: int = 4,
        ffn_mult: int = 2,
        kernel: int = 15,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.inp = nn.Linear(in_dim, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, heads, ffn_mult, kernel, dropout) for _ in range(blocks)
        )
        self.out_dim = d_model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.inp(x)
        y = self.drop(y + sinusoid_positions(x.shape[1], self.out_dim, y))
        m = mask[..., None].to(y.dtype)
        for block in self.blocks:
            y = block(y, mask, m)
        return y * m


BACKENDS: dict[str, type[nn.Module]] = {"mstcn": MSTCN, "bilstm": BiLSTM, "conformer": Conformer}
