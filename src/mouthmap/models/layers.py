"""Building blocks shared by front ends and back ends: pre-norm self-attention and feed-forward.

Attention goes through ``F.scaled_dot_product_attention`` with an optional boolean key mask
(True = may be attended to), so padded frames are never looked at and nothing depends on
data in Python (the model stays exportable with ``torch.onnx.export(dynamo=True)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.heads = heads
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, D); key_mask (N, L) bool, True on tokens that may be attended to."""
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (N, heads, L, D / heads)
        return self.out(y.transpose(1, 2).reshape(n, length, dim))


class PreNormAttention(nn.Module):
    """Residual branch LayerNorm -> multi-head self-attention -> dropout (add it to x)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.drop(self.attn(self.norm(x), key_mask))


class FeedForward(nn.Module):
    """Residual branch LayerNorm -> Linear -> Swish -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + attention(x), then + feed-forward."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.attn = PreNormAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, hidden, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(x, key_mask)
        return x + self.ffn(x)
