"""One file per op: its public function (argument checks; ``norm_stats`` has none), its ``torch.library``
custom op (namespace ``effdrop``) with the autograd formula, and its PyTorch fallback (the unit levels'
is the gate of ``masks.unit_gate_torch``); the op's Triton kernels sit in ``kernels/`` under the same
name, or in ``kernels/unit_gate.py``, the gate drop-channel, drop-path and drop-layer's gradient share.

Each op takes the seed as a 0-d int64 tensor and a ``use_triton`` flag fixed at call
time, so backward runs on the backend its forward ran on and regenerates the mask
from the seed; nothing per element is saved for backward. ``_autograd.Op`` runs an op's
implementation and formulas directly when nothing traces the call (the custom-op dispatch
costs more host time than the kernels at CIFAR shapes); ``torch.compile`` sees the op, and on
the Triton path its kernels (the op decomposes into ``wrap_triton`` launches).
"""

from . import drop_channel, drop_layer, drop_neuron, drop_path  # noqa: F401  (registers the ops)
from . import norm_act_drop, norm_act_drop_conv2d, norm_stats  # noqa: F401
