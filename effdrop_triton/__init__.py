"""Structured dropout for CNNs: drop-neuron, drop-channel, drop-path and drop-layer as
Triton kernels with a bit-identical PyTorch fallback (Cai et al., arXiv 1904.03392)."""

from .backend import get_backend, set_backend, use_backend
from .levels import DropLevel
from .functional import drop_channel, drop_layer, drop_neuron, drop_path, norm_act_drop, norm_act_drop_conv2d
from .modules import DropChannel, DropLayer, DropNeuron, DropPath, Residual, make_drop
from .norm_act import BatchNormActDrop2d, GroupNormActDrop, SyncBatchNormActDrop2d, convert_sync_batchnorm
from .blocks import ConvBlock, set_fused
from .convert import convert
from .variance_shift import reset_variance_shift, track_variance_shift, variance_shift

__version__ = "0.1.0"

__all__ = [
    "drop_neuron", "drop_channel", "drop_path", "drop_layer", "norm_act_drop", "norm_act_drop_conv2d",
    "DropNeuron", "DropChannel", "DropPath", "DropLayer", "Residual", "make_drop",
    "BatchNormActDrop2d", "GroupNormActDrop", "SyncBatchNormActDrop2d", "convert_sync_batchnorm", "ConvBlock", "set_fused", "convert",
    "track_variance_shift", "variance_shift", "reset_variance_shift",
    "set_backend", "get_backend", "use_backend", "DropLevel",
]
