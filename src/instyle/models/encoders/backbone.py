"""ResNet-IR / IR-SE backbones (ArcFace "InsightFace" family).

The same building blocks serve the pSp encoders and the ArcFace identity network
of the training loss, so official ``model_ir_se50.pth`` weights load into both by
name. Parameter names follow the original (``input_layer.N``, ``body.N.res_layer.N``,
``body.N.shortcut_layer.N``, ``output_layer.N``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "UNITS",
    "Bottleneck",
    "BottleneckIR",
    "BottleneckIRSE",
    "SEModule",
    "Backbone",
    "BasicBlock",
    "make_body",
    "make_resnet_body",
    "stage_specs",
    "l2_norm",
]

# Number of residual units per stage for each depth.
UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
DEFAULT_WIDTHS = (64, 128, 256, 512)


class Bottleneck(NamedTuple):
    in_channel: int
    depth: int
    stride: int


def stage_specs(
    num_layers: int = 50,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    units: Sequence[int] | None = None,
) -> list[list[Bottleneck]]:
    """Unit specs per stage. The first unit of every stage has stride 2."""
    if units is None:
        if num_layers not in UNITS:
            raise ValueError(f"num_layers={num_layers!r} is not supported; choose one of {sorted(UNITS)}")
        units = UNITS[num_layers]
    if len(units) != 4 or len(widths) != 4:
        raise ValueError(f"widths and units need 4 stages each, got widths={widths!r} units={units!r}")
    stages = []
    in_ch = widths[0]
    for depth, n in zip(widths, units):
        stages.append([Bottleneck(in_ch, depth, 2)] + [Bottleneck(depth, depth, 1) for _ in range(n - 1)])
        in_ch = depth
    return stages


class SEModule(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(mean(x)))))``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, max(channels // reduction, 1), kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(max(channels // reduction, 1), channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * s


class BottleneckIR(nn.Module):
    """IR unit: ``BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN`` plus shortcut."""

    se = False

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if self.se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class BottleneckIRSE(BottleneckIR):
    """IR unit with a squeeze-and-excitation block at the end of the residual branch."""

    se = True


def make_input_layer(input_nc: int, width: int = 64) -> nn.Sequential:
    """``conv3x3(input_nc -> width, no bias) -> BN -> PReLU`` (``input_layer.{0,1,2}``)."""
    return nn.Sequential(nn.Conv2d(input_nc, width, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))


def make_body(
    num_layers: int = 50,
    mode: str = "ir_se",
    widths: Sequence[int] = DEFAULT_WIDTHS,
    units: Sequence[int] | None = None,
) -> tuple[nn.Sequential, list[int]]:
    """The residual body and the 0-based indices of the last unit of each stage."""
    if mode not in ("ir", "ir_se"):
        raise ValueError(f"mode={mode!r} is not supported; choose 'ir' or 'ir_se'")
    unit = BottleneckIRSE if mode == "ir_se" else BottleneckIR
    modules, ends = [], []
    for stage in stage_specs(num_layers, widths, units):
        for b in stage:
            modules.append(unit(b.in_channel, b.depth, b.stride))
        ends.append(len(modules) - 1)
    return nn.Sequential(*modules), ends


def l2_norm(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """``x / ||x||_2`` along ``axis`` (no epsilon, as ArcFace)."""
    return x / torch.norm(x, 2, axis, True)


class Backbone(nn.Module):
    """ArcFace recognition network (IR / IR-SE, 112x112 input, 512-D embedding).

    Args:
        input_size: 112 or 224.
        num_layers: 50, 100 or 152.
        mode: ``"ir"`` or ``"ir_se"``.
        drop_ratio: dropout before the embedding layer.
        affine: BatchNorm1d affine flag of the embedding layer.

    ``forward(x [B, 3, 112, 112] in [-1, 1]) -> [B, 512]`` l2-normalised embeddings.
    """

    def __init__(self, input_size: int = 112, num_layers: int = 50, mode: str = "ir_se", drop_ratio: float = 0.4, affine: bool = True):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"input_size={input_size!r}; choose 112 or 224")
        self.input_size = input_size
        self.input_layer = make_input_layer(3, 64)
        side = 7 if input_size == 112 else 14
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * side * side, 512),
            nn.BatchNorm1d(512, affine=affine),
        )
        self.body, _ = make_body(num_layers, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(
                f"ArcFace backbone expects [B, 3, {self.input_size}, {self.input_size}], got {tuple(x.shape)}"
            )
        x = self.input_layer(x)
        x = self.body(x)
        x = self.output_layer(x)
        return l2_norm(x)


# --------------------------------------------------------------------------- ResNet (torchvision)

#: BasicBlocks per stage of torchvision's ResNet-34 (HyperStyle's hypernetwork trunk).
RESNET34_UNITS = (3, 4, 6, 3)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``,
    with a ``downsample`` (1x1 conv + BN) shortcut when the shape changes. Names as
    torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample.{0,1}``)."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channel, depth, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(depth)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(depth, depth, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(depth)
        self.downsample = None
        if stride != 1 or in_channel != depth:
            self.downsample = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def make_resnet_body(
    widths: Sequence[int] = DEFAULT_WIDTHS, units: Sequence[int] = RESNET34_UNITS
) -> nn.Sequential:
    """torchvision ResNet ``layer1..layer4`` flattened into one Sequential of BasicBlocks
    (the first stage keeps the resolution, each later one halves it)."""
    if len(units) != 4 or len(widths) != 4:
        raise ValueError(f"widths and units need 4 stages each, got widths={widths!r} units={units!r}")
    modules, in_ch = [], widths[0]
    for stage, (depth, n) in enumerate(zip(widths, units)):
        for u in range(n):
            modules.append(BasicBlock(in_ch, depth, 2 if u == 0 and stage > 0 else 1))
            in_ch = depth
    return nn.Sequential(*modules)
