"""The functional API: the four structural dropout levels and the fused norm-act-drop(-conv) ops.

Each function is defined beside its custom op, autograd formula and PyTorch fallback in
``effdrop_triton/ops/<op>.py``; its kernels are in ``kernels/<op>.py`` (or ``kernels/unit_gate.py``,
the gate drop-channel, drop-path and drop-layer's gradient share). A call validates its arguments,
draws a seed from PyTorch's default generator when none is given, and calls the op on the selected
backend; without dropout (``training`` False or ``p == 0``) the dropout functions launch nothing
(drop-neuron and drop-channel return their input, drop-path the concatenation, drop-layer the sum).
"""

from .ops.drop_channel import drop_channel
from .ops.drop_layer import drop_layer
from .ops.drop_neuron import drop_neuron
from .ops.drop_path import drop_path
from .ops.norm_act_drop import norm_act_drop
from .ops.norm_act_drop_conv2d import norm_act_drop_conv2d

__all__ = ["drop_neuron", "drop_channel", "drop_path", "drop_layer", "norm_act_drop", "norm_act_drop_conv2d"]
