"""Spatio-temporal front ends: (B, 1, T, H, W) -> (B, T, D). Plain torch, no torchvision."""

from __future__ import annotations

import torch
from torch import nn


def _bn_relu3d(c: int) -> list[nn.Module]:
    return [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]


class LipNet3D(nn.Module):
    """LipNet: three Conv3d blocks with spatial max-pooling, flattened per frame."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 96), dropout: float = 0.2):
        super().__init__()
        c1, c2, c3 = channels
        blocks: list[nn.Module] = []
        specs = [(1, c1, (3, 5, 5), (1, 2, 2), (1, 2, 2)), (c1, c2, (3, 5, 5), 1, (1, 2, 2)),
                 (c2, c3, (3, 3, 3), 1, (1, 1, 1))]  # fmt: skip
        for cin, cout, k, s, p in specs:
            blocks += [nn.Conv3d(cin, cout, k, s, p), *_bn_relu3d(cout)]
            blocks += [nn.MaxPool3d((1, 2, 2), (1, 2, 2)), nn.Dropout3d(dropout)]
        self.net = nn.Sequential(*blocks)
        self.out_dim = c3 * 5 * 5  # 88 -> 44 -> 22 -> 11 -> 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)  # (B, C, T, 5, 5)
        b, c, t, h, w = y.shape
        return y.permute(0, 2, 1, 3, 4).reshape(b, t, c * h * w)


def _channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1, relu: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two strided branches (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.left = nn.Sequential(
                _conv_bn(cin, cin, 3, 2, groups=cin, relu=False), _conv_bn(cin, half, 1)
            )
            right_in = cin
        else:
            self.left = None
            right_in = half
        self.right = nn.Sequential(
            _conv_bn(right_in, half, 1),
            _conv_bn(half, half, 3, stride, groups=half, relu=False),
            _conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return _channel_shuffle(out)


class Conv3dStem(nn.Module):
    """5x7x7 Conv3d, then 3x3 spatial max-pool: (B, 1, T, 88, 88) -> (B*T, C, 22, 22)."""

    def __init__(self, channels: int = 24):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(1, channels, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
            *_bn_relu3d(channels),
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, C, T, 44, 44)
        b, c, t, h, w = y.shape
        y = y.transpose(1, 2).reshape(b * t, c, h, w)
        return self.pool(y)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 (0.5x widths by default) per frame after a Conv3d stem; global pooling."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (48, 96, 192),
        repeats: tuple[int, int, int] = (4, 8, 4),
        stem: int = 24,
        out_dim: int = 512,
    ):
        super().__init__()
        self.stem = Conv3dStem(stem)
        layers: list[nn.Module] = []
        cin = stem
        for width, n in zip(widths, repeats, strict=True):
            for i in range(n):
                layers.append(ShuffleUnit(cin, width, 2 if i == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.head = _conv_bn(cin, out_dim, 1)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        y = self.head(self.stages(self.stem(x)))  # (B*T, D, h, w)
        return y.mean(dim=(2, 3)).view(b, t, -1)


FRONTENDS: dict[str, type[nn.Module]] = {"lipnet3d": LipNet3D, "shufflenetv2": ShuffleNetV2}
