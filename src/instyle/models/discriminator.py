"""The StyleGAN2 image discriminator (residual, minibatch standard deviation), in
rosinality's layout and parameter names (``convs.*``, ``final_conv.*``, ``final_linear.*``):
what a rosinality checkpoint's ``d`` entry holds. StyleFeatureEditor's training judges its
renders with it (:mod:`instyle.training.sfe`).

Images ``[B, 3, S, S]`` in [-1, 1] -> logits ``[B, 1]``.

Two options of NVIDIA's StyleGAN2-ADA discriminator, for its ``.pkl`` files
(:mod:`instyle.interop.nvidia_discriminator`): ``stddev_group=None`` pools the minibatch
standard deviation over the whole batch (NVIDIA's ``mbstd_group_size=None``), and
``conv_clamp`` clamps the output of every activated convolution to ``[-conv_clamp, conv_clamp]``
(NVIDIA's ``conv_clamp``; never the 1x1 skip, nor the fully connected layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from instyle.models.stylegan2 import MAX_SIZE, Blur, EqualConv2d, EqualLinear, rosinality_channels
from instyle.ops.fused_act import FusedLeakyReLU
from instyle.utils.config import check_int_range, check_positive_finite, check_power_of_two

__all__ = ["ConvLayer", "ResBlock", "Discriminator"]


class Clamp(nn.Module):
    """``x`` clamped to ``[-value, value]`` (NVIDIA's ``conv_clamp``, after the activation gain)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.value, self.value)

    def extra_repr(self) -> str:
        return f"value={self.value}"


class ConvLayer(nn.Sequential):
    """[blur] -> equalised conv (stride 2 when ``downsample``) -> [bias + leaky ReLU] -> [clamp].
    The clamp is parameter-free: the state-dict names are rosinality's with or without it."""

    def __init__(self, cin: int, cout: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[int] = (1, 3, 3, 1), bias: bool = True, activate: bool = True,
                 clamp: float | None = None):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(cout))  # activated layers always carry a bias
        if clamp is not None:
            layers.append(Clamp(clamp))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second halves the resolution) plus a 1x1 downsampling skip, / sqrt(2).
    ``clamp`` clamps the convs' outputs before the sum (NVIDIA clamps ``conv1 / sqrt(2)`` at
    ``conv_clamp / sqrt(2)``: the same values); the skip is never clamped."""

    def __init__(self, cin: int, cout: int, clamp: float | None = None):
        super().__init__()
        self.conv1 = ConvLayer(cin, cin, 3, clamp=clamp)
        self.conv2 = ConvLayer(cin, cout, 3, downsample=True, clamp=clamp)
        self.skip = ConvLayer(cin, cout, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2's discriminator for ``size`` px images (channels as the generator's,
    ``channel_multiplier`` 2 = config-f; or an explicit ``channels`` table). ``stddev_group``:
    images per minibatch-stddev group (``None``: the whole batch); ``conv_clamp``: see above."""

    def __init__(self, size: int, channel_multiplier: int = 2, channels: dict[int, int] | None = None,
                 stddev_group: int | None = 4, conv_clamp: float | None = None):
        super().__init__()
        check_power_of_two("discriminator size", size, minimum=8, maximum=MAX_SIZE)
        if stddev_group is not None:
            check_int_range("stddev_group", stddev_group, 1, 64)
        check_positive_finite("conv_clamp", conv_clamp, optional=True)
        ch = {int(k): int(v) for k, v in (channels or rosinality_channels(channel_multiplier)).items()}
        self.size, self.stddev_group, self.stddev_feat, self.conv_clamp = size, stddev_group, 1, conv_clamp
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1, clamp=conv_clamp)]
        res = size
        while res > 4:
            convs.append(ResBlock(ch[res], ch[res // 2], clamp=conv_clamp))
            res //= 2
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(ch[4] + 1, ch[4], 3, clamp=conv_clamp)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 16, ch[4], activation="fused_lrelu"), EqualLinear(ch[4], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.size or x.shape[3] != self.size:
            raise ValueError(f"the discriminator takes images [B, 3, {self.size}, {self.size}], got {tuple(x.shape)}")
        out = self.convs(x)
        b, c, h, w = out.shape
        group = b if self.stddev_group is None else min(b, self.stddev_group)
        if b % group:
            raise ValueError(f"batch {b} is not a multiple of the minibatch-stddev group {group}")
        s = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        s = torch.sqrt(s.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        s = s.repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, s], 1))
        return self.final_linear(out.view(b, -1))
