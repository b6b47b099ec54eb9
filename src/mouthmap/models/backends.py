"""Temporal back ends: (B, T, D) features + lengths -> (B, T, H). Padded frames never
reach valid ones: the TCN zeroes them before every convolution, the LSTM packs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


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


class BiLSTM(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 2, dropout: float = 0.3):
        super().__init__()
        self.rnn = nn.LSTM(
            in_dim, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout
        )
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if (
            torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export()
        ):
            return self.rnn(x)[0]  # export: one clip per batch row, lengths equal T
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


BACKENDS: dict[str, type[nn.Module]] = {"mstcn": MSTCN, "bilstm": BiLSTM}
