"""The paper's convolution block: norm, ReLU, dropout and convolution in one of four orders."""

from __future__ import annotations

from typing import Union

from torch import Tensor, nn

from ._checks import check_p
from .levels import DropLevel
from .modules import DropChannel, DropNeuron
from .norm_act import BatchNormActDrop2d, GroupNormActDrop, NormActDrop, check_inner_drop_type

BLOCK_TYPES = {
    0: "norm-ReLU-drop-conv",
    1: "norm-ReLU-conv-drop",
    2: "drop-conv-norm-ReLU",
    3: "conv-drop-norm-ReLU",
}
NORMS = ("bn", "gn")


def make_norm_act(norm: str, num_channels: int, gn_groups: int = 8, **kwargs) -> nn.Module:
    """``BatchNormActDrop2d`` (``"bn"``) or ``GroupNormActDrop`` (``"gn"``) over ``num_channels``."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "bn":
        return BatchNormActDrop2d(num_channels, **kwargs)
    if isinstance(gn_groups, bool) or not isinstance(gn_groups, int) or gn_groups < 1 or num_channels % gn_groups:
        raise ValueError(f"gn_groups={gn_groups!r} must be a positive int dividing the {num_channels} channels of the norm")
    return GroupNormActDrop(gn_groups, num_channels, **kwargs)


class ConvBlock(nn.Module):
    """Norm, ReLU, dropout (neuron or channel) and a convolution, in the order ``block_type`` names.

    0: norm-ReLU-drop-conv (recommended), 1: norm-ReLU-conv-drop, 2: drop-conv-norm-ReLU
    (recommended), 3: conv-drop-norm-ReLU. The norm covers ``in_channels`` for types 0/1 and
    ``out_channels`` for types 2/3. Submodules are registered in block order.

    ``fused=True`` runs norm+ReLU(+dropout for type 0) as one fused op; for type 0 in training
    the convolution's input is recomputed in backward from the block input instead of kept.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, block_type: int = 0, norm: str = "bn",
                 gn_groups: int = 8, drop_type: Union[int, str] = "channel", drop_rate: float = 0.0, stride=1,
                 padding=0, groups: int = 1, bias: bool = False, track_stats: bool = False, fused: bool = True):
        super().__init__()
        if block_type not in BLOCK_TYPES or isinstance(block_type, bool):
            raise ValueError(f"block_type must be one of {sorted(BLOCK_TYPES)} ({BLOCK_TYPES}), got {block_type!r}")
        self.block_type = block_type
        drop_type = check_inner_drop_type(drop_type)
        drop_rate = check_p(drop_rate, "drop_rate")
        norm_channels = in_channels if block_type < 2 else out_channels
        norm_kwargs = dict(act=True, drop_type=drop_type, fused=fused, track_stats=track_stats)
        # block type 0 folds its dropout into the norm module (one fused op); the others keep it apart
        inner_rate = drop_rate if block_type == 0 else 0.0

        def make_conv():
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                             bias=bias)

        def make_drop():
            return (DropNeuron if drop_type == DropLevel.NEURON else DropChannel)(drop_rate)

        # attribute assignment order is the block order (module registration follows it)
        if block_type in (0, 1):
            self.norm = make_norm_act(norm, norm_channels, gn_groups, drop_rate=inner_rate, **norm_kwargs)
            self.conv = make_conv()
            if block_type == 1:
                self.drop = make_drop()
        elif block_type == 2:
            self.drop = make_drop()
            self.conv = make_conv()
            self.norm = make_norm_act(norm, norm_channels, gn_groups, drop_rate=0.0, **norm_kwargs)
        else:
            self.conv = make_conv()
            self.drop = make_drop()
            self.norm = make_norm_act(norm, norm_channels, gn_groups, drop_rate=0.0, **norm_kwargs)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    @property
    def drop_rate(self) -> float:
        return self.norm.drop_rate if self.block_type == 0 else self.drop.p

    @property
    def fused(self) -> bool:
        return self.norm.fused

    def forward(self, x: Tensor) -> Tensor:
        if self.block_type == 0 and isinstance(self.norm, NormActDrop):
            # norm-ReLU-drop and the conv in one autograd node: backward recomputes the conv input
            return self.norm(x, conv=self.conv)
        for module in self.children():
            x = module(x)
        return x

    def extra_repr(self) -> str:
        return f"block_type={self.block_type} ({BLOCK_TYPES[self.block_type]})"


def set_fused(model: nn.Module, fused: bool = True) -> nn.Module:
    """Switch every norm-act-drop module of ``model`` between the fused op and the eager composition."""
    for module in model.modules():
        if isinstance(module, NormActDrop):
            module.fused = bool(fused)
    return model
