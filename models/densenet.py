"""DenseNet(-BC) for CIFAR (Huang et al.): three dense blocks joined by compressing transitions.

Dropout placement follows the paper's repository (github.com/ooibc88/dropout): neuron/channel
dropout in every ConvBlock of a dense layer (the 1x1 bottleneck and the 3x3) and in the
transition's 1x1 ConvBlock. Drop-path gates, per sample (``drop_mode="sample"``) or for the
batch, the ``growth_rate`` new feature maps a dense layer adds to the concatenation. DenseNet
has no residual branches, so it takes no drop-layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from effdrop_triton.modules import DropPath

from ._base import BlockConfig, ConvNet, check_drop_support, check_positive_int
from effdrop_triton.levels import DropLevel


class DenseLayer(nn.Module):
    """``cat([x, branch(x)])``: the branch is 1x1 (``bn_size * growth_rate``) -> 3x3 (``growth_rate``)
    ConvBlocks with ``bottleneck``, else one 3x3; with drop-path its output is gated as one path."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck: bool = True, cfg: BlockConfig = BlockConfig(),
                 bn_size: int = 4):
        super().__init__()
        if cfg.drop_type == DropLevel.LAYER:
            raise ValueError("DenseLayer has no residual branch: drop_type='layer' does not apply (use 'path')")
        if bottleneck:
            layers = [cfg.conv_block(in_channels, bn_size * growth_rate, 1, drop=True),
                      cfg.conv_block(bn_size * growth_rate, growth_rate, 3, drop=True)]
        else:
            layers = [cfg.conv_block(in_channels, growth_rate, 3, drop=True)]
        if cfg.drop_type == DropLevel.PATH:
            layers.append(DropPath(cfg.drop_rate, mode=cfg.drop_mode, groups=1))
        self.branch = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.branch(x)], dim=1)


class Transition(nn.Sequential):
    """1x1 ConvBlock to ``out_channels`` (with the block's neuron/channel dropout), then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int, cfg: BlockConfig = BlockConfig()):
        super().__init__(cfg.conv_block(in_channels, out_channels, 1, drop=True), nn.AvgPool2d(2))


def densenet(depth: int = 100, growth_rate: int = 12, bottleneck: bool = True, compression: float = 0.5,
             num_classes: int = 10, in_channels: int = 3, block_type: int = 0, norm: str = "bn", gn_groups: int = 8,
             drop_type="channel", drop_rate: float = 0.0, drop_mode: str = "sample", skip_dropped: bool = False,
             fused: bool = True) -> ConvNet:
    """DenseNet-``depth`` with growth ``growth_rate``; DenseNet-BC with ``bottleneck=True`` and
    ``compression < 1`` (depth 6n+4, n dense layers of two convs per block), plain DenseNet
    otherwise (depth 3n+4). The stem has ``2 * growth_rate`` channels for DenseNet-BC, 16 otherwise.
    Dropout: neuron/channel in every dense-layer and transition ConvBlock; path on each dense
    layer's new feature maps. ``skip_dropped`` has no effect (no residual branches)."""
    cfg = BlockConfig(block_type=block_type, norm=norm, gn_groups=gn_groups, drop_type=drop_type, drop_rate=drop_rate,
                      drop_mode=drop_mode, skip_dropped=skip_dropped, fused=fused)
    check_drop_support("densenet", cfg)
    check_positive_int(growth_rate, "growth_rate")
    check_positive_int(in_channels, "in_channels")
    convs_per_layer = 2 if bottleneck else 1
    if (isinstance(depth, bool) or not isinstance(depth, int) or depth < 3 * convs_per_layer + 4
            or (depth - 4) % (3 * convs_per_layer)):
        form = "6n+4 (bottleneck=True)" if bottleneck else "3n+4"
        raise ValueError(f"densenet depth must be {form} with n >= 1, got {depth!r}")
    if isinstance(compression, bool) or not isinstance(compression, (int, float)) or not 0 < compression <= 1:
        raise ValueError(f"compression must be in (0, 1], got {compression!r}")
    n = (depth - 4) // (3 * convs_per_layer)

    stem_channels = 2 * growth_rate if bottleneck and compression < 1 else 16
    channels, stages = stem_channels, []
    for stage in range(3):
        layers = []
        for _ in range(n):
            layers.append(DenseLayer(channels, growth_rate, bottleneck, cfg))
            channels += growth_rate
        stages.append(nn.Sequential(*layers))
        if stage < 2:
            out_channels = int(math.floor(channels * compression))
            stages.append(Transition(channels, out_channels, cfg))
            channels = out_channels
    return ConvNet(cfg.stem(in_channels, stem_channels), nn.Sequential(*stages), channels, num_classes,
                   cfg.final_norm(channels))
