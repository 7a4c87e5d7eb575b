"""What the model zoo shares: the block settings, the layer helpers and the classifier network.

Every model is ``stem -> stages -> final norm-ReLU -> global average pool -> linear``
(:class:`ConvNet`). The block order ``block_type`` decides the activation style:

* types 0 and 1 (norm-ReLU-... first) give **pre-activation** units: the stem is a bare 3x3
  conv, every conv of a branch is a :class:`~effdrop_triton.ConvBlock`, the residual sum is
  left as it is, and the network ends with norm-ReLU before pooling;
* types 2 and 3 (conv-norm-ReLU last) give **post-activation** units: the stem is a
  conv-norm-ReLU block, a residual branch ends with conv-norm (no ReLU, as in He et al.),
  ReLU follows the residual sum, and there is no final norm (the features are already
  normalised and rectified).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import List, Optional, Union

from torch import Tensor, nn

from effdrop_triton._checks import check_mode, check_p
from effdrop_triton.blocks import BLOCK_TYPES, NORMS, ConvBlock, make_norm_act
from effdrop_triton.levels import INNER_LEVELS, DropLevel


def norm_groups(gn_groups: int, channels: int) -> int:
    """GroupNorm groups over ``channels``: ``gcd(gn_groups, channels)``, so that channel counts that
    are not multiples of ``gn_groups`` (DenseNet's growth) still get a valid grouping."""
    return math.gcd(gn_groups, channels)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def layer_drop_rates(drop_rate: float, num_blocks: int) -> List[float]:
    """The stochastic-depth schedule: residual block ``i`` (0-based, of ``num_blocks``) drops its
    branch with rate ``drop_rate * (i + 1) / num_blocks``, so the last block has ``drop_rate``."""
    return [drop_rate * (i + 1) / num_blocks for i in range(num_blocks)]


def kaiming_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> nn.Conv2d:
    """A bias-free conv with 'same' padding, initialised like ConvBlock's (Kaiming normal, fan_out)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                     groups=groups, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """The settings every block of a model shares, checked once.

    ``drop_type`` is a level's name or the original repository's number (0 neuron, 1 channel,
    2 path, 3 layer) and is stored as its ``DropLevel``. What ``drop_rate`` drives depends on it:
    the dropout inside the conv blocks (neuron/channel), the paths of a multi-path conv
    (path, ``drop_mode`` per sample or per batch) or the residual branch (layer, through
    :class:`~effdrop_triton.Residual` with ``drop_mode`` and ``skip_dropped``).
    """

    block_type: int = 0
    norm: str = "bn"
    gn_groups: int = 8
    drop_type: Union[int, str] = "channel"
    drop_rate: float = 0.0
    drop_mode: str = "sample"
    skip_dropped: bool = False
    fused: bool = True

    def __post_init__(self):
        if isinstance(self.block_type, bool) or self.block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {sorted(BLOCK_TYPES)} ({BLOCK_TYPES}), got {self.block_type!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        check_positive_int(self.gn_groups, "gn_groups")
        object.__setattr__(self, "drop_type", DropLevel.parse(self.drop_type))
        object.__setattr__(self, "drop_rate", check_p(self.drop_rate, "drop_rate"))
        check_mode(self.drop_mode, "drop_mode")
        object.__setattr__(self, "skip_dropped", bool(self.skip_dropped))
        object.__setattr__(self, "fused", bool(self.fused))

    def replace(self, **changes) -> "BlockConfig":
        return dataclasses.replace(self, **changes)

    @property
    def pre_activation(self) -> bool:
        return self.block_type < 2

    @property
    def inner_drop(self) -> bool:
        """Whether ``drop_rate`` drives the dropout inside conv blocks (neuron or channel)."""
        return self.drop_type in INNER_LEVELS

    def conv_block(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   groups: int = 1, drop: bool = False) -> ConvBlock:
        """A ConvBlock in this config's order; it carries the neuron/channel dropout when ``drop``
        is set and the drop type is an inner one, else none."""
        norm_channels = in_channels if self.pre_activation else out_channels
        return ConvBlock(in_channels, out_channels, kernel_size, block_type=self.block_type, norm=self.norm,
                         gn_groups=norm_groups(self.gn_groups, norm_channels),
                         drop_type=self.drop_type if self.inner_drop else DropLevel.CHANNEL,
                         drop_rate=self.drop_rate if drop and self.inner_drop else 0.0,
                         stride=stride, padding=kernel_size // 2, groups=groups, fused=self.fused)

    def norm_act(self, channels: int, act: bool = True) -> nn.Module:
        """The norm (BatchNorm2d / GroupNorm subclass), with ReLU when ``act``; no dropout."""
        return make_norm_act(self.norm, channels, norm_groups(self.gn_groups, channels), act=act, fused=self.fused)

    def conv_norm(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
        """conv -> norm without ReLU: the last layer of a post-activation branch, or a projection."""
        return nn.Sequential(OrderedDict(conv=kaiming_conv(in_channels, out_channels, kernel_size, stride, groups),
                                         norm=self.norm_act(out_channels, act=False)))

    def last_conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Module:
        """The last conv of a residual branch (never with dropout): a ConvBlock for pre-activation
        units, conv-norm for post-activation ones (ReLU comes after the residual sum)."""
        if self.pre_activation:
            return self.conv_block(in_channels, out_channels, kernel_size, stride, groups)
        return self.conv_norm(in_channels, out_channels, kernel_size, stride, groups)

    def projection(self, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
        """The 1x1 projection shortcut: a bare conv for pre-activation units, conv-norm for post-activation."""
        if self.pre_activation:
            return kaiming_conv(in_channels, out_channels, 1, stride)
        return self.conv_norm(in_channels, out_channels, 1, stride)

    def stem(self, in_channels: int, out_channels: int) -> nn.Module:
        """3x3 stem conv: bare for pre-activation, a dropout-free conv-norm-ReLU ConvBlock for post-activation."""
        if self.pre_activation:
            return kaiming_conv(in_channels, out_channels, 3)
        return self.conv_block(in_channels, out_channels, 3)

    def final_norm(self, channels: int) -> Optional[nn.Module]:
        """norm-ReLU before pooling for pre-activation networks; None for post-activation ones."""
        return self.norm_act(channels) if self.pre_activation else None


class ConvNet(nn.Module):
    """``stem -> stages -> final_norm -> global average pool -> fc``: the classifier network of every model.

    Adaptive pooling makes any input size work (at least 32x32 keeps the CIFAR geometry);
    ``forward_features`` returns the feature map before pooling.
    """

    def __init__(self, stem: nn.Module, stages: nn.Sequential, num_features: int, num_classes: int,
                 final_norm: Optional[nn.Module] = None):
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        self.stem = stem
        self.stages = stages
        self.final_norm = nn.Identity() if final_norm is None else final_norm
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_features, num_classes)
        nn.init.zeros_(self.fc.bias)
        self.num_features = num_features
        self.num_classes = num_classes

    def forward_features(self, x: Tensor) -> Tensor:
        return self.final_norm(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# which models take which structural level beyond neuron/channel (those sit in every model's conv blocks)
PATH_MODELS = ("resnext", "densenet")   # multi-path convolutions: ResNeXt groups, DenseNet's new feature maps
LAYER_MODELS = ("wrn", "preresnet", "resnext")   # residual branches


def check_drop_support(model: str, cfg: BlockConfig) -> None:
    """ValueError when ``model`` has no structure for ``cfg.drop_type`` to gate."""
    if cfg.drop_type == DropLevel.PATH and model not in PATH_MODELS:
        raise ValueError(f"drop_type='path' gates the paths of a multi-path convolution; {model} is single-path. "
                         f"Models that support it: {', '.join(PATH_MODELS)}")
    if cfg.drop_type == DropLevel.LAYER and model not in LAYER_MODELS:
        raise ValueError(f"drop_type='layer' gates residual branches; {model} has none. "
                         f"Models that support it: {', '.join(LAYER_MODELS)}")


def block_configs(cfg: BlockConfig, num_blocks: int) -> List[BlockConfig]:
    """One config per residual block: drop-layer rates follow ``layer_drop_rates``, other levels keep ``drop_rate``."""
    if cfg.drop_type != DropLevel.LAYER:
        return [cfg] * num_blocks
    return [cfg.replace(drop_rate=rate) for rate in layer_drop_rates(cfg.drop_rate, num_blocks)]
