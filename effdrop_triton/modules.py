"""``nn.Module`` wrappers of the four levels: identity in ``eval()`` and at ``p == 0``."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor, nn

from ._checks import check_mode, check_p
from .functional import drop_channel, drop_layer, drop_neuron, drop_path


class _Drop(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_p(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropNeuron(_Drop):
    """Drop single elements (``nn.Dropout``)."""

    def forward(self, x: Tensor) -> Tensor:
        return drop_neuron(x, self.p, self.training)


class DropChannel(_Drop):
    """Drop whole (sample, channel) feature maps (``nn.Dropout2d`` / ``nn.Dropout3d``)."""

    def forward(self, x: Tensor) -> Tensor:
        return drop_channel(x, self.p, self.training)


class DropPath(_Drop):
    """Drop paths: ``forward`` takes a list of branches, or one tensor when ``groups`` is set."""

    def __init__(self, p: float = 0.5, mode: str = "sample", groups: Optional[int] = None):
        super().__init__(p)
        check_mode(mode)
        self.mode = mode
        self.groups = groups

    def forward(self, branches: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        return drop_path(branches, self.p, self.training, self.mode, self.groups)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}, groups={self.groups}"


class DropLayer(_Drop):
    """Drop the residual branch: ``forward(branch, shortcut)``, or ``forward((branch, shortcut))`` in ``nn.Sequential``."""

    def __init__(self, p: float = 0.5, mode: str = "sample"):
        super().__init__(p)
        check_mode(mode)
        self.mode = mode

    def forward(self, branch, shortcut: Optional[Tensor] = None) -> Tensor:
        if shortcut is None:
            if not (isinstance(branch, (tuple, list)) and len(branch) == 2):
                raise TypeError("DropLayer takes (branch, shortcut) as two arguments or as one pair")
            branch, shortcut = branch
        return drop_layer(branch, shortcut, self.p, self.training, self.mode)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"


DROP_TYPES = {0: DropNeuron, 1: DropChannel, 2: DropPath, 3: DropLayer}
DROP_NAMES = {"neuron": 0, "channel": 1, "path": 2, "layer": 3}


def drop_type_index(drop_type: Union[int, str]) -> int:
    """The original repository's numbering: 0 neuron, 1 channel, 2 path, 3 layer."""
    if isinstance(drop_type, str) and drop_type in DROP_NAMES:
        return DROP_NAMES[drop_type]
    if isinstance(drop_type, int) and not isinstance(drop_type, bool) and drop_type in DROP_TYPES:
        return drop_type
    raise ValueError(f"drop_type must be one of {sorted(DROP_TYPES)} or {sorted(DROP_NAMES)}, got {drop_type!r}")


def make_drop(drop_type: Union[int, str], p: float, **kwargs) -> nn.Module:
    """Build the dropout module of a level by number (0-3) or name."""
    return DROP_TYPES[drop_type_index(drop_type)](p, **kwargs)
