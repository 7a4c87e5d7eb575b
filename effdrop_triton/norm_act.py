"""Norm + ReLU + dropout as one module: ``BatchNormActDrop2d`` and ``GroupNormActDrop``.

Both subclass the PyTorch norm they extend, so their state dicts are those of
``nn.BatchNorm2d`` / ``nn.GroupNorm`` and load both ways. ``fused=True`` runs the
fused ``norm_act_drop`` op (one statistics pass and one apply pass; backward keeps only
the input and the statistics); ``fused=False`` runs the eager composition with the
same mask. ``track_stats=True`` records the input statistics of train-mode and
eval-mode passes separately (variance shift, see ``effdrop_triton.variance_shift``).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_p
from .functional import drop_channel, drop_neuron
from .levels import INNER_LEVELS, DropLevel
from .ops.norm_act_drop import NormSettings, fused_norm_act_drop, input_channel_stats
from .ops.norm_act_drop_conv2d import conv_args


def check_inner_drop_type(drop_type: Union[int, str]) -> DropLevel:
    """The dropout levels that act inside a norm or conv block: neuron (0) or channel (1)."""
    try:
        level = DropLevel.parse(drop_type)
    except ValueError:
        level = None
    if level not in INNER_LEVELS:
        raise ValueError(
            f"drop_type inside a norm/conv block must be 'neuron' (0) or 'channel' (1), got {drop_type!r}; "
            "drop-path and drop-layer act on whole paths and residual branches (models, Residual)"
        )
    return level


class InputStats:
    """Mixin: cumulative per-channel mean/var of a norm's input, kept apart for train and eval passes.

    Buffers are not persistent, so the state dict stays that of the PyTorch norm.
    """

    track_stats: bool

    def _init_input_stats(self, num_channels: int, track_stats: bool) -> None:
        self.track_stats = bool(track_stats)
        for phase in ("train", "eval"):
            self.register_buffer(f"input_mean_{phase}", torch.zeros(num_channels), persistent=False)
            self.register_buffer(f"input_var_{phase}", torch.zeros(num_channels), persistent=False)
            self.register_buffer(f"input_count_{phase}", torch.zeros((), dtype=torch.int64), persistent=False)

    def reset_input_stats(self) -> None:
        for phase in ("train", "eval"):
            getattr(self, f"input_mean_{phase}").zero_()
            getattr(self, f"input_var_{phase}").zero_()
            getattr(self, f"input_count_{phase}").zero_()

    @torch.no_grad()
    def record_input_stats(self, mean: Tensor, var: Tensor) -> None:
        """Fold one pass's per-channel mean and (biased) variance into the running average of its phase."""
        phase = "train" if self.training else "eval"
        count = getattr(self, f"input_count_{phase}")
        count += 1
        weight = 1.0 / count.to(torch.float32)
        getattr(self, f"input_mean_{phase}").lerp_(mean.float(), weight)
        getattr(self, f"input_var_{phase}").lerp_(var.float(), weight)


class ActDrop(InputStats):
    """Mixin: the settings every norm-act-drop module shares, their repr, and the unfused ReLU +
    standalone dropout that follows the norm."""

    def _init_act_drop(self, num_channels: int, act: bool, drop_type, drop_rate: float, track_stats: bool) -> None:
        self.act = bool(act)
        self.drop_type = check_inner_drop_type(drop_type)
        self.drop_rate = check_p(drop_rate, "drop_rate")
        self._init_input_stats(num_channels, track_stats)

    def act_drop(self, y: Tensor) -> Tensor:
        """ReLU (``act``) then the standalone drop-neuron / drop-channel op: the eager tail of the norm."""
        if self.act:
            y = F.relu(y)
        return (drop_neuron if self.drop_type == DropLevel.NEURON else drop_channel)(y, self.drop_rate, self.training)

    def _active_level(self) -> Optional[DropLevel]:
        """The level the fused op drops at in this call; None when no dropout runs (eval, or rate 0)."""
        return self.drop_type if self.training and self.drop_rate > 0.0 else None

    def _fused_or_eager(self, x: Tensor, settings: NormSettings, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], conv: Optional[nn.Conv2d]) -> Tensor:
        """The forward of every norm-act-drop module: ``x`` through the norm, ReLU and dropout (then ``conv``
        if given), fused or eager, recording the input statistics when the module tracks them. Only a plain
        zero-padded ``nn.Conv2d`` fuses; another conv (padding modes, subclasses) runs on the fused output."""
        if not self.fused:
            if self.track_stats:
                self.record_input_stats(*input_channel_stats(x))
            out = self.act_drop(self._eager_norm(x, settings, running_mean, running_var))
            return out if conv is None else conv(out)
        fuse_conv = conv is not None and type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
        conv_settings = (conv_args(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
                         if fuse_conv else None)
        out = fused_norm_act_drop(x, self.weight, self.bias, running_mean, running_var, settings,
                                  input_stats=self.track_stats, conv=conv_settings)
        if self.track_stats:
            out, (mean, var) = out
            self.record_input_stats(mean, var)
        return out if conv is None or fuse_conv else conv(out)

    def _act_drop_repr(self) -> str:
        return (f"act={self.act}, drop_type={self.drop_type.label!r}, drop_rate={self.drop_rate}, fused={self.fused}, "
                f"track_stats={self.track_stats}")


class BatchNormActDrop2d(nn.BatchNorm2d, ActDrop):
    """``BatchNorm2d`` -> ReLU (``act``) -> drop-neuron / drop-channel with rate ``drop_rate``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, act: bool = True, drop_type: Union[int, str] = "channel",
                 drop_rate: float = 0.0, fused: bool = True, track_stats: bool = False, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.fused = bool(fused)
        self._init_act_drop(num_features, act, drop_type, drop_rate, track_stats)


    def _eager_norm(self, x: Tensor, settings: NormSettings, running_mean, running_var) -> Tensor:
        momentum = settings.momentum
        if settings.num_batches_tracked is not None:  # the cumulative average (nn.BatchNorm2d reads the count too)
            momentum = 1.0 / float(settings.num_batches_tracked)
        return F.batch_norm(x, running_mean, running_var, self.weight, self.bias, settings.batch_stats, momentum,
                            self.eps)

    def forward(self, x: Tensor, conv: Optional[nn.Conv2d] = None) -> Tensor:
        """Norm, ReLU and dropout; with ``conv``, ``conv`` of that in one autograd node whose backward rebuilds
        the convolution's input (``ConvBlock`` of block type 0)."""
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (dim 1 of the input), got input of shape {tuple(x.shape)}")
        # the batch is counted and the statistics chosen as nn.BatchNorm2d.forward does (the cumulative
        # average, momentum=None, reads the count on the device)
        counter = None
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                counter = self.num_batches_tracked
        use_running = not self.training or self.track_running_stats
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        settings = NormSettings(0, batch_stats, 0.0 if self.momentum is None else self.momentum, counter, self.eps,
                                self.act, self._active_level(), self.drop_rate)
        return self._fused_or_eager(x, settings, self.running_mean if use_running else None,
                                   self.running_var if use_running else None, conv)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._act_drop_repr()}"


class GroupNormActDrop(nn.GroupNorm, ActDrop):
    """``GroupNorm`` -> ReLU (``act``) -> drop-neuron / drop-channel with rate ``drop_rate``."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, act: bool = True,
                 drop_type: Union[int, str] = "channel", drop_rate: float = 0.0, fused: bool = True,
                 track_stats: bool = False, device=None, dtype=None):
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"num_groups={num_groups!r} must be a positive int dividing num_channels={num_channels}")
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
        self.fused = bool(fused)
        self._init_act_drop(num_channels, act, drop_type, drop_rate, track_stats)

    def _eager_norm(self, x: Tensor, settings: NormSettings, running_mean, running_var) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def forward(self, x: Tensor, conv: Optional[nn.Conv2d] = None) -> Tensor:
        """Norm, ReLU and dropout (then ``conv``, fused, as ``BatchNormActDrop2d.forward``)."""
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected {self.num_channels} channels (dim 1 of the input), got input of shape {tuple(x.shape)}")
        settings = NormSettings(self.num_groups, True, 0.0, None, self.eps, self.act, self._active_level(),
                                self.drop_rate)
        return self._fused_or_eager(x, settings, None, None, conv)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._act_drop_repr()}"


class SyncBatchNormActDrop2d(nn.SyncBatchNorm, ActDrop):
    """``BatchNormActDrop2d`` for DDP: batch statistics reduced over the process group by
    ``nn.SyncBatchNorm``, then ReLU and the standalone dropout op (not fused). Build it with
    :func:`convert_sync_batchnorm`; the state dict is that of ``nn.BatchNorm2d``."""

    fused = False  # the statistics come from nn.SyncBatchNorm's cross-process reduction

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, act: bool = True,
                 drop_type: Union[int, str] = "channel", drop_rate: float = 0.0, track_stats: bool = False,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, process_group, device=device,
                         dtype=dtype)
        self._init_act_drop(num_features, act, drop_type, drop_rate, track_stats)

    def forward(self, x: Tensor) -> Tensor:
        if self.track_stats:
            self.record_input_stats(*input_channel_stats(x))
        return self.act_drop(super().forward(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._act_drop_repr()}"


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """DDP's ``nn.SyncBatchNorm.convert_sync_batchnorm`` for models of this package: every
    ``BatchNormActDrop2d`` becomes a ``SyncBatchNormActDrop2d`` (ReLU and dropout kept; PyTorch's
    own conversion would turn it into a bare ``SyncBatchNorm``), other batch norms become
    ``nn.SyncBatchNorm``; parameters, buffers and training mode carry over."""
    if isinstance(module, BatchNormActDrop2d):
        sync = SyncBatchNormActDrop2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, process_group, act=module.act,
                                      drop_type=module.drop_type, drop_rate=module.drop_rate,
                                      track_stats=module.track_stats, device=module.input_mean_train.device)
        sync.load_state_dict(module.state_dict())
        for name, buffer in module.named_buffers(recurse=False):  # the non-persistent input statistics too
            getattr(sync, name).copy_(buffer)
        return sync.train(module.training)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


NormActDrop = (BatchNormActDrop2d, GroupNormActDrop)  # the modules that can run the fused op
