"""Non-diffusive generator G_nd: the CycleGAN / Johnson et al. ResNet generator (docs/method.md §2.5).

    reflect-pad 3, conv7x7 (C_in -> ngf), IN, ReLU
    2 x [conv3x3 stride 2, IN, ReLU]                      ngf -> 2ngf -> 4ngf, S -> S/4
    n_blocks x ResidualBlock(4ngf)                         SynDiff: 6 (resnet_6blocks)
    2 x [ConvTranspose3x3 stride 2 (output_padding 1), IN, ReLU]   4ngf -> 2ngf -> ngf
    reflect-pad 3, conv7x7 (ngf -> C_out), tanh

InstanceNorm without affine (so every conv keeps its bias), no dropout, init N(0, 0.02) with zero bias.
Input and output channels are free: MM2CT's CT -> MR generator has 2 output channels (§8.4).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ResidualBlock(nn.Module):
    """x + [reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN](x); (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """G_nd (§2.5): (B, in_ch, S, S) in [-1, 1] -> (B, out_ch, S, S) in [-1, 1]; S divisible by 4."""

    def __init__(self, in_ch: int = 1, out_ch: int = 1, ngf: int = 64, n_blocks: int = 6):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU()]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                       nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU()]
        layers += [ResidualBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
