"""Spatio-temporal front ends: (B, 1, T, H, W) -> (B, T, D). Plain torch, no torchvision.

Every front end takes an optional ``mask`` (B, T), True on valid frames. Front ends that mix
frames more than once (LipNet3D, R(2+1)D) zero padded frames before each temporal convolution
when given it, so padded frames cannot reach valid ones; the per-frame ones only need it for
the Conv3d stem. No front end ever strides or pools in time: T comes out as it went in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mouthmap.models.layers import TransformerLayer

Act = type[nn.Module] | None


def _bn_relu3d(c: int) -> list[nn.Module]:
    return [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]


def _frames_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """(B, T) bool -> (B, 1, T, 1, 1) in ``like``'s dtype, to multiply (B, C, T, H, W) maps."""
    return None if mask is None else mask[:, None, :, None, None].to(like.dtype)


def _pool_frames(y: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """Per-frame maps (B*T, D, h, w) -> global average pool -> (B, T, D)."""
    return y.mean(dim=(2, 3)).reshape(batch, frames, -1)


def _divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, never losing over 10%."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _conv_bn(
    cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: Act = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class LipNet3D(nn.Module):
    """LipNet: three Conv3d blocks with spatial max-pooling, flattened per frame."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 96), dropout: float = 0.2):
        super().__init__()
        c1, c2, c3 = channels
        specs = [(1, c1, (3, 5, 5), (1, 2, 2), (1, 2, 2)), (c1, c2, (3, 5, 5), 1, (1, 2, 2)),
                 (c2, c3, (3, 3, 3), 1, (1, 1, 1))]  # fmt: skip
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(cin, cout, k, s, p),
                *_bn_relu3d(cout),
                nn.MaxPool3d((1, 2, 2), (1, 2, 2)),
                nn.Dropout3d(dropout),
            )
            for cin, cout, k, s, p in specs
        )
        self.out_dim = c3 * 5 * 5  # 88 -> 44 -> 22 -> 11 -> 5

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = _frames_mask(mask, x)
        y = x if m is None else x * m
        for block in self.blocks:
            y = block(y)  # (B, C, T, h, w)
            if m is not None:  # bias and BN make padding non-zero; the next conv would see it
                y = y * m
        b, c, t, h, w = y.shape
        return y.permute(0, 2, 1, 3, 4).reshape(b, t, c * h * w)


class Conv3dStem(nn.Module):
    """5x7x7 Conv3d, then 3x3 spatial max-pool: (B, 1, T, 88, 88) -> (B*T, C, 22, 22).

    A Conv3d over one input channel is exactly a Conv2d whose input channels are the 5
    neighbouring frames (zero-padded at the clip's ends, as the Conv3d pads). Training uses the
    Conv3d; :meth:`as_frame_stack` switches to the 2-D form for export, because 2-D
    convolutions have fast (INT8) kernels in ONNX Runtime and mobile NPUs (NNAPI runs only 2-D
    Conv), while the 3-D one was most of the exported model's time (STACK.md).
    """

    def __init__(self, channels: int = 24):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(1, channels, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
            *_bn_relu3d(channels),
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.channels = channels
        self.frame_stack: nn.Sequential | None = None  # the 2-D form, once made

    def as_frame_stack(self) -> None:
        """Run as Conv2d over stacked frames from now on (same weights, same outputs)."""
        conv3d, bn3d, _ = self.conv
        conv2d = nn.Conv2d(conv3d.kernel_size[0], self.channels, conv3d.kernel_size[1:],
                           conv3d.stride[1:], conv3d.padding[1:], bias=False)  # fmt: skip
        conv2d.weight.data.copy_(conv3d.weight.data[:, 0])
        bn2d = nn.BatchNorm2d(self.channels, eps=bn3d.eps, momentum=bn3d.momentum)
        bn2d.load_state_dict(bn3d.state_dict())
        self.frame_stack = nn.Sequential(conv2d, bn2d, nn.ReLU(inplace=True)).eval()

    def _stacked(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        k = self.frame_stack[0].in_channels
        padded = F.pad(x[:, 0], (0, 0, 0, 0, k // 2, k // 2))  # (B, T + k - 1, H, W)
        frames = torch.stack([padded[:, i : i + t] for i in range(k)], 2)  # (B, T, k, H, W)
        return self.frame_stack(frames.reshape(b * t, k, h, w))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            x = x * _frames_mask(mask, x)
        if self.frame_stack is not None:
            return self.pool(self._stacked(x))
        y = self.conv(x)  # (B, C, T, 44, 44)
        b, c, t, h, w = y.shape
        y = y.transpose(1, 2).reshape(b * t, c, h, w)
        return self.pool(y)


def use_frame_stacks(model: nn.Module) -> int:
    """Switch every Conv3d stem of ``model`` to its 2-D form (export); returns how many."""
    stems = [m for m in model.modules() if isinstance(m, Conv3dStem)]
    for stem in stems:
        stem.as_frame_stack()
    return len(stems)


class FrameTrunk(nn.Module):
    """Conv3d stem, then a 2D trunk on every frame, a 1x1 conv head and global average pooling.

    Subclasses build the trunk's layers (from ``stem`` input channels to ``trunk_out``) and
    hand them over; the stem is the only place frames mix.
    """

    def __init__(
        self, stem: int, layers: Iterable[nn.Module], trunk_out: int, out_dim: int, act: Act
    ):
        super().__init__()
        self.stem = Conv3dStem(stem)
        self.stages = nn.Sequential(*layers)
        self.head = _conv_bn(trunk_out, out_dim, 1, act=act)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.head(self.stages(self.stem(x, mask)))  # (B*T, D, h, w)
        return _pool_frames(y, x.shape[0], x.shape[2])


# --- ShuffleNetV2 -----------------------------------------------------------------------------


def _channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two strided branches (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.left = nn.Sequential(
                _conv_bn(cin, cin, 3, 2, groups=cin, act=None), _conv_bn(cin, half, 1)
            )
            right_in = cin
        else:
            self.left = None
            right_in = half
        self.right = nn.Sequential(
            _conv_bn(right_in, half, 1),
            _conv_bn(half, half, 3, stride, groups=half, act=None),
            _conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return _channel_shuffle(out)


class ShuffleNetV2(FrameTrunk):
    """ShuffleNetV2 (0.5x widths by default) per frame after a Conv3d stem; global pooling."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (48, 96, 192),
        repeats: tuple[int, int, int] = (4, 8, 4),
        stem: int = 24,
        out_dim: int = 512,
    ):
        layers: list[nn.Module] = []
        cin = stem
        for width, n in zip(widths, repeats, strict=True):
            for i in range(n):
                layers.append(ShuffleUnit(cin, width, 2 if i == 0 else 1))
                cin = width
        super().__init__(stem, layers, cin, out_dim, act=nn.ReLU)


# --- MobileNetV2 ------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, depthwise 3x3, linear 1x1 bottleneck, residual."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, act: Act = nn.ReLU6):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else [_conv_bn(cin, hidden, 1, act=act)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act),
            _conv_bn(hidden, cout, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(FrameTrunk):
    """MobileNetV2 (width 0.5 by default) per frame after the Conv3d stem; global pooling.

    The stem already brings frames to stride 4 (22x22), where MobileNetV2 has its 24-channel
    stage, so the trunk starts at the 32-channel stage. ``settings`` rows are the paper's
    (expansion t, channels c, repeats n, first stride s); three stride-2 stages end at 3x3.
    """

    SETTINGS = ((6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(
        self,
        width: float = 0.5,
        settings: Sequence[Sequence[int]] = SETTINGS,
        stem: int = 24,
        out_dim: int = 512,
    ):
        layers: list[nn.Module] = []
        cin = stem
        for t, c, n, s in settings:
            cout = _divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, nn.ReLU6))
                cin = cout
        super().__init__(stem, layers, cin, out_dim, act=nn.ReLU6)


# --- GhostNet ---------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features (GhostNet: ReLU then hard sigmoid)."""

    def __init__(self, channels: int, ratio: float = 0.25):
        super().__init__()
        reduced = _divisible(channels * ratio, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(reduced, channels, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class GhostModule(nn.Module):
    """A 1x1 conv makes ceil(cout/ratio) maps; cheap depthwise 3x3 convs make the rest."""

    def __init__(self, cin: int, cout: int, relu: bool = True, ratio: int = 2):
        super().__init__()
        primary = math.ceil(cout / ratio)
        act = nn.ReLU if relu else None
        self.primary = _conv_bn(cin, primary, 1, act=act)
        self.cheap = _conv_bn(primary, primary * (ratio - 1), 3, groups=primary, act=act)
        self.cout = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, : self.cout]


class GhostBottleneck(nn.Module):
    """Ghost module (expand) -> [strided depthwise] -> [SE] -> ghost module (project) + shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, se: float):
        super().__init__()
        self.expand = GhostModule(cin, mid, relu=True)
        self.dw = (
            _conv_bn(mid, mid, k, stride, groups=mid, act=None) if stride > 1 else nn.Identity()
        )
        self.se = SqueezeExcite(mid, se) if se else nn.Identity()
        self.project = GhostModule(mid, cout, relu=False)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                _conv_bn(cin, cin, k, stride, groups=cin, act=None),
                _conv_bn(cin, cout, 1, act=None),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.dw(self.expand(x)))) + self.shortcut(x)


class GhostNet(FrameTrunk):
    """GhostNet bottlenecks (width 0.5 by default) per frame after the Conv3d stem.

    ``settings`` rows are the paper's (kernel, expansion, channels, SE ratio, stride) from
    its second 24-channel block on (the stem already brings frames to stride 4, 22x22);
    three stride-2 rows end at 3x3.
    """

    SETTINGS = (
        (3, 72, 24, 0, 1),
        (5, 72, 40, 0.25, 2), (5, 120, 40, 0.25, 1),
        (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1),
        (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1),
        (5, 672, 160, 0.25, 2), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1),
        (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1),
    )  # fmt: skip

    def __init__(
        self,
        width: float = 0.5,
        settings: Sequence[Sequence[float]] = SETTINGS,
        stem: int = 24,
        out_dim: int = 512,
    ):
        layers: list[nn.Module] = []
        cin = stem
        for k, exp, c, se, s in settings:
            mid, cout = _divisible(exp * width, 4), _divisible(c * width, 4)
            layers.append(GhostBottleneck(cin, mid, cout, int(k), int(s), se))
            cin = cout
        super().__init__(stem, layers, cin, out_dim, act=nn.ReLU)


# --- MobileViT --------------------------------------------------------------------------------


class MobileViTBlock(nn.Module):
    """Local 3x3 conv + 1x1 to ``dim``, unfold into p x p patches, a transformer across
    patches (for each position inside a patch), fold back, 1x1 to channels, fuse with the input
    by a 3x3 conv. Sides that are not a multiple of p are zero-padded, then cropped back."""

    def __init__(
        self, channels: int, dim: int, depth: int, heads: int = 4, patch: int = 2,
        ffn_mult: int = 2, dropout: float = 0.0,
    ):  # fmt: skip
        super().__init__()
        self.local = nn.Sequential(
            _conv_bn(channels, channels, 3, act=nn.SiLU), nn.Conv2d(channels, dim, 1, bias=False)
        )
        self.transformer = nn.ModuleList(
            TransformerLayer(dim, heads, ffn_mult * dim, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.proj = _conv_bn(dim, channels, 1, act=nn.SiLU)
        self.fuse = _conv_bn(2 * channels, channels, 3, act=nn.SiLU)
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        n, d, h, w = y.shape
        p = self.patch
        pad_h, pad_w = -h % p, -w % p  # spatial sizes are static: no data-dependent flow
        if pad_h or pad_w:
            y = F.pad(y, (0, pad_w, 0, pad_h))
        gh, gw = (h + pad_h) // p, (w + pad_w) // p
        tokens = y.reshape(n, d, gh, p, gw, p).permute(0, 3, 5, 2, 4, 1).reshape(-1, gh * gw, d)
        for layer in self.transformer:
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        y = tokens.reshape(n, p, p, gh, gw, d).permute(0, 5, 3, 1, 4, 2)
        y = y.reshape(n, d, gh * p, gw * p)[:, :, :h, :w]
        return self.fuse(torch.cat([x, self.proj(y)], 1))


class MobileViT(FrameTrunk):
    """MobileViT-XXS per frame after the Conv3d stem: MobileNetV2 blocks (expansion 2, SiLU)
    down to 11x11, then [stride-2 MobileNetV2 block, MobileViT block] stages at 11, 6 and 3.

    ``channels`` are the conv widths (the first after the stem), ``dims``/``depths`` the
    transformer width and layer count of each MobileViT block.
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int] = (24, 48, 64, 80),
        dims: tuple[int, int, int] = (64, 80, 96),
        depths: tuple[int, int, int] = (2, 4, 3),
        heads: int = 4,
        patch: int = 2,
        expansion: int = 2,
        dropout: float = 0.0,
        stem: int = 24,
        out_dim: int = 512,
    ):
        c0, *rest = channels
        layers: list[nn.Module] = [InvertedResidual(stem, c0, 1, expansion, nn.SiLU)]
        cin = c0
        for c, dim, depth in zip(rest, dims, depths, strict=True):
            layers.append(InvertedResidual(cin, c, 2, expansion, nn.SiLU))
            layers.append(MobileViTBlock(c, dim, depth, heads, patch, 2, dropout))
            cin = c
        super().__init__(stem, layers, cin, out_dim, act=nn.SiLU)


# --- R(2+1)D ----------------------------------------------------------------------------------


class Conv2Plus1d(nn.Module):
    """A kt x k x k conv factorised as spatial 1 x k x k -> BN -> ReLU -> temporal kt x 1 x 1.

    The intermediate width is the paper's M = floor(kt k^2 cin cout / (k^2 cin + kt cout)),
    which keeps the parameter count of the full 3D conv. Strides are spatial only.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3, kt: int = 3):
        super().__init__()
        mid = (kt * k * k * cin * cout) // (k * k * cin + kt * cout)
        self.spatial = nn.Sequential(
            nn.Conv3d(cin, mid, (1, k, k), (1, stride, stride), (0, k // 2, k // 2), bias=False),
            *_bn_relu3d(mid),
        )
        self.temporal = nn.Conv3d(mid, cout, (kt, 1, 1), 1, (kt // 2, 0, 0), bias=False)

    def forward(self, x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        y = self.spatial(x)
        return self.temporal(y if m is None else y * m)


class R2Plus1dBlock(nn.Module):
    """Residual basic block of two (2+1)D convs; 1x1x1 projection shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = Conv2Plus1d(cin, cout, stride)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = Conv2Plus1d(cout, cout)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv3d(cin, cout, 1, (1, stride, stride), bias=False), nn.BatchNorm3d(cout)
            )

    def forward(self, x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x, m)))
        return F.relu(self.bn2(self.conv2(y, m)) + self.shortcut(x))


class R2Plus1D(nn.Module):
    """R(2+1)D: a (2+1)D 5x7x7 stem with spatial max-pool (88 -> 22), residual (2+1)D blocks
    that stride only in space, a 1x1 head and global spatial pooling per frame."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128),
        strides: tuple[int, ...] = (2, 2, 2),
        stem: int = 24,
        out_dim: int = 512,
    ):
        super().__init__()
        self.stem = Conv2Plus1d(1, stem, stride=2, k=7, kt=5)
        self.stem_out = nn.Sequential(
            *_bn_relu3d(stem), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        )
        blocks, cin = [], stem
        for width, stride in zip(widths, strides, strict=True):
            blocks.append(R2Plus1dBlock(cin, width, stride))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv_bn(cin, out_dim, 1)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = _frames_mask(mask, x)
        y = self.stem_out(self.stem(x, m))
        for block in self.blocks:
            y = block(y, m)
        b, c, t, h, w = y.shape  # (B, C, T, 3, 3)
        y = self.head(y.transpose(1, 2).reshape(b * t, c, h, w))
        return _pool_frames(y, b, t)


FRONTENDS: dict[str, type[nn.Module]] = {
    "lipnet3d": LipNet3D,
    "shufflenetv2": ShuffleNetV2,
    "mobilenetv2": MobileNetV2,
    "ghostnet": GhostNet,
    "mobilevit": MobileViT,
    "r2plus1d": R2Plus1D,
}
