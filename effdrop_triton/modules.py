"""``nn.Module`` wrappers of the four levels: identity in ``eval()`` and at ``p == 0``."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import masks
from ._checks import check_groups, check_mode, check_p, resolve_seed
from .functional import drop_channel, drop_layer, drop_neuron, drop_path
from .levels import DropLevel


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
        check_groups(groups)
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


class Residual(nn.Module):
    """``shortcut(x) + gate * branch(x) / (1 - drop_rate)`` (identity shortcut when None) that saves
    the branch's compute where it is dropped.

    ``mode="batch"`` decides the gate on the host and never calls ``branch`` on a dropped
    step. ``mode="sample"`` with ``skip_dropped=True`` runs ``branch`` on the kept samples only
    and adds them back scaled; plain ``mode="sample"`` runs the whole batch through the fused
    ``drop_layer``. The gates are those ``drop_layer`` draws for the same seed. The host-side
    decisions make the batch and skip modes data-dependent (a graph break under ``torch.compile``).
    """

    def __init__(self, branch: nn.Module, shortcut: Optional[nn.Module] = None, drop_rate: float = 0.0,
                 mode: str = "sample", skip_dropped: bool = False):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.drop_rate = check_p(drop_rate, "drop_rate")
        check_mode(mode)
        self.mode = mode
        self.skip_dropped = bool(skip_dropped)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        p = self.drop_rate
        if not self.training or p == 0.0:
            return shortcut + self.branch(x)
        if self.mode == "batch":
            seed = resolve_seed(None, torch.device("cpu"))  # host generator: no device sync for the decision
            if not bool(masks.unit_keep(torch.zeros(1, dtype=torch.int64), seed, DropLevel.LAYER, p)):
                return shortcut
            return drop_layer(self.branch(x), shortcut, p, mode="batch", seed=seed)
        seed = resolve_seed(None, x.device)
        if not self.skip_dropped:
            return drop_layer(self.branch(x), shortcut, p, mode="sample", seed=seed)
        samples = torch.arange(x.shape[0], dtype=torch.int64, device=x.device)
        kept = masks.unit_keep(samples, seed, DropLevel.LAYER, p).nonzero().squeeze(1)
        if kept.numel() == 0:
            return shortcut
        return shortcut.index_add(0, kept, self.branch(x.index_select(0, kept)), alpha=masks.keep_scale(p))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, mode={self.mode!r}, skip_dropped={self.skip_dropped}"


DROP_MODULES = {DropLevel.NEURON: DropNeuron, DropLevel.CHANNEL: DropChannel, DropLevel.PATH: DropPath,
                DropLevel.LAYER: DropLayer}


def make_drop(drop_type: Union[int, str], p: float, **kwargs) -> nn.Module:
    """Build the dropout module of a level by number (0-3) or name (``DropLevel``)."""
    return DROP_MODULES[DropLevel.parse(drop_type)](p, **kwargs)
