"""Residual networks from one basic block and one bottleneck: Wide-ResNet, pre-activation
bottleneck ResNet and ResNeXt (CIFAR geometry: 3x3 stem, three stages, strides 1, 2, 2).

Both blocks are :class:`~effdrop_triton.Residual` containers, so drop-layer gates the whole
branch (fused ``drop_layer``; ``drop_mode="batch"`` skips a dropped branch, ``skip_dropped=True``
runs it on the kept samples only), with the depth-linear rate of :func:`layer_drop_rates`.

Where neuron/channel dropout sits follows the paper's repository (github.com/ooibc88/dropout):

* WRN: the first 3x3 ConvBlock of each basic block;
* pre-activation ResNet: the middle 3x3 ConvBlock of each bottleneck;
* ResNeXt: the 1x1 reducing ConvBlock and the grouped 3x3 ConvBlock of each bottleneck.

With block type 0 a ConvBlock drops its (normalised, rectified) input, with type 1 its conv
output, with type 2 its raw input, with type 3 its conv output before the norm.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from effdrop_triton.modules import DropPath, Residual

from ._base import BlockConfig, ConvNet, block_configs, check_drop_support, check_positive_int
from effdrop_triton.levels import DropLevel


class _ResidualUnit(Residual):
    """A branch of conv layers plus a shortcut; dropout in the convs listed in ``drop_convs``."""

    def __init__(self, layers: Sequence[nn.Module], in_channels: int, out_channels: int, stride: int,
                 cfg: BlockConfig):
        shortcut = None if stride == 1 and in_channels == out_channels else cfg.projection(in_channels, out_channels, stride)
        super().__init__(nn.Sequential(*layers), shortcut, drop_rate=cfg.drop_rate if cfg.drop_type == DropLevel.LAYER else 0.0,
                         mode=cfg.drop_mode, skip_dropped=cfg.skip_dropped)
        self.act = nn.Identity() if cfg.pre_activation else nn.ReLU()

    @staticmethod
    def _check_drop_convs(drop_convs: Sequence[int], num_convs: int) -> frozenset:
        drop_convs = frozenset(drop_convs)
        if not drop_convs <= set(range(num_convs - 1)):
            raise ValueError(f"drop_convs must index the first {num_convs - 1} convs of the branch "
                             f"(the last one carries no dropout), got {sorted(drop_convs)}")
        return drop_convs

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class BasicBlock(_ResidualUnit):
    """Two 3x3 convs (Wide-ResNet), stride on the first; dropout in ``drop_convs`` (default: the first)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, cfg: BlockConfig = BlockConfig(),
                 drop_convs: Sequence[int] = (0,)):
        if cfg.drop_type == DropLevel.PATH:
            raise ValueError("BasicBlock is single-path: drop_type='path' needs a grouped or multi-branch conv")
        drop_convs = self._check_drop_convs(drop_convs, 2)
        layers = [cfg.conv_block(in_channels, out_channels, 3, stride, drop=0 in drop_convs),
                  cfg.last_conv(out_channels, out_channels, 3)]
        super().__init__(layers, in_channels, out_channels, stride, cfg)


class Bottleneck(_ResidualUnit):
    """1x1 reduce -> 3x3 with ``groups`` (stride here) -> 1x1 expand; dropout in ``drop_convs``
    (default: the 3x3). With ``drop_type="path"`` the ``groups`` paths of the grouped 3x3 block's
    output (the conv output for block types 0/1, after its norm-ReLU for 2/3) are gated, per
    sample and path or per path for the batch, before the expanding conv mixes them."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int = 1, groups: int = 1,
                 cfg: BlockConfig = BlockConfig(), drop_convs: Sequence[int] = (1,)):
        drop_convs = self._check_drop_convs(drop_convs, 3)
        layers = [cfg.conv_block(in_channels, width, 1, drop=0 in drop_convs),
                  cfg.conv_block(width, width, 3, stride, groups, drop=1 in drop_convs)]
        if cfg.drop_type == DropLevel.PATH:
            layers.append(DropPath(cfg.drop_rate, mode=cfg.drop_mode, groups=groups))
        layers.append(cfg.last_conv(width, out_channels, 1))
        super().__init__(layers, in_channels, out_channels, stride, cfg)
        self.groups = groups


def _config(model: str, **settings) -> BlockConfig:
    cfg = BlockConfig(**settings)
    check_drop_support(model, cfg)
    return cfg


def _network(cfg: BlockConfig, in_channels: int, stem_channels: int, num_classes: int, num_blocks: int,
             stage_specs, make_block) -> ConvNet:
    """Three stages of ``num_blocks`` blocks; ``stage_specs`` = (out_channels, stride, extra) per stage,
    ``make_block(in_channels, out_channels, stride, extra, cfg)`` builds one block."""
    check_positive_int(in_channels, "in_channels")
    configs = iter(block_configs(cfg, len(stage_specs) * num_blocks))
    stages, channels = [], stem_channels
    for out_channels, stride, extra in stage_specs:
        blocks = []
        for i in range(num_blocks):
            blocks.append(make_block(channels, out_channels, stride if i == 0 else 1, extra, next(configs)))
            channels = out_channels
        stages.append(nn.Sequential(*blocks))
    return ConvNet(cfg.stem(in_channels, stem_channels), nn.Sequential(*stages), channels, num_classes,
                   cfg.final_norm(channels))


def wrn(depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3, block_type: int = 0,
        norm: str = "bn", gn_groups: int = 8, drop_type="channel", drop_rate: float = 0.0, drop_mode: str = "sample",
        skip_dropped: bool = False, fused: bool = True) -> ConvNet:
    """Wide-ResNet-``depth``-``widen_factor`` (Zagoruyko & Komodakis): depth 6n+4, n basic blocks per
    stage of widths 16k, 32k, 64k. Dropout: neuron/channel in the first ConvBlock of each basic
    block; layer on every residual branch (depth-linear rates). Single-path: no drop-path."""
    cfg = _config("wrn", block_type=block_type, norm=norm, gn_groups=gn_groups, drop_type=drop_type,
                  drop_rate=drop_rate, drop_mode=drop_mode, skip_dropped=skip_dropped, fused=fused)
    check_positive_int(widen_factor, "widen_factor")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wrn depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
    k = widen_factor
    specs = [(16 * k, 1, None), (32 * k, 2, None), (64 * k, 2, None)]
    return _network(cfg, in_channels, 16, num_classes, (depth - 4) // 6, specs,
                    lambda cin, cout, stride, _, c: BasicBlock(cin, cout, stride, c))


def _bottleneck_depth(name: str, depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
        raise ValueError(f"{name} depth must be 9n+2 with n >= 1 (11, 29, 110, 164, ...), got {depth!r}")
    return (depth - 2) // 9


def preresnet(depth: int = 164, num_classes: int = 10, in_channels: int = 3, block_type: int = 0, norm: str = "bn",
              gn_groups: int = 8, drop_type="channel", drop_rate: float = 0.0, drop_mode: str = "sample",
              skip_dropped: bool = False, fused: bool = True) -> ConvNet:
    """Pre-activation bottleneck ResNet-``depth`` (He et al., identity mappings): depth 9n+2, n
    bottlenecks per stage of widths 16, 32, 64 (outputs x4). Dropout: neuron/channel in the 3x3
    ConvBlock of each bottleneck; layer on every residual branch. Single-path: no drop-path."""
    cfg = _config("preresnet", block_type=block_type, norm=norm, gn_groups=gn_groups, drop_type=drop_type,
                  drop_rate=drop_rate, drop_mode=drop_mode, skip_dropped=skip_dropped, fused=fused)
    n = _bottleneck_depth("preresnet", depth)
    specs = [(64, 1, 16), (128, 2, 32), (256, 2, 64)]
    return _network(cfg, in_channels, 16, num_classes, n, specs,
                    lambda cin, cout, stride, width, c: Bottleneck(cin, width, cout, stride, 1, c))


def resnext(depth: int = 29, cardinality: int = 8, base_width: int = 64, num_classes: int = 10, in_channels: int = 3,
            block_type: int = 0, norm: str = "bn", gn_groups: int = 8, drop_type="channel", drop_rate: float = 0.0,
            drop_mode: str = "sample", skip_dropped: bool = False, fused: bool = True) -> ConvNet:
    """ResNeXt-``depth`` ``cardinality`` x ``base_width``d (Xie et al., CIFAR): depth 9n+2, n bottlenecks
    per stage with outputs 256, 512, 1024 and grouped-conv widths ``cardinality * base_width * 2**stage``.
    Dropout: neuron/channel in the 1x1 reducing and the grouped 3x3 ConvBlocks; path on the
    ``cardinality`` groups of each grouped conv's output; layer on every residual branch."""
    cfg = _config("resnext", block_type=block_type, norm=norm, gn_groups=gn_groups, drop_type=drop_type,
                  drop_rate=drop_rate, drop_mode=drop_mode, skip_dropped=skip_dropped, fused=fused)
    n = _bottleneck_depth("resnext", depth)
    check_positive_int(cardinality, "cardinality")
    check_positive_int(base_width, "base_width")
    width = cardinality * base_width
    specs = [(256, 1, width), (512, 2, 2 * width), (1024, 2, 4 * width)]
    return _network(cfg, in_channels, 64, num_classes, n, specs,
                    lambda cin, cout, stride, w, c: Bottleneck(cin, w, cout, stride, cardinality, c, drop_convs=(0, 1)))
