"""An op as a ``torch.library`` custom op for tracing and a plain ``torch.autograd.Function`` for eager calls.

``torch.compile``, fake tensors and functorch see one custom op with a fake implementation and an
autograd formula. Where the call runs the compiled Triton kernels, functionalization (the step of
``torch.compile`` that turns the graph into pure ops, before inductor) decomposes the op into its
implementation, whose launches then go through ``torch.library.wrap_triton`` (``kernels/common.py``'s
``launcher``): the graph holds the Triton kernels themselves, inductor launches them from its own
code, and cudagraph trees record them, as for a ``torch.library.triton_op``. On the fallback (and for
the interpreter's kernels, which run on host memory) the op stays opaque: the fallback reads the seed
on the host, which a graph cannot trace. Unlike ``triton_op``, registering this needs no Triton import;
like it, the op lists its kernels for the key of AOTAutograd's cache (``_PackageKernels``), so a
cached compiled graph is not reused after a kernel's source changed.

An eager call skips the dispatcher's Python layers for custom ops (autograd
wrapper, backend wrapper, alias checks: more host time than the kernels take at CIFAR shapes):
it runs the same implementation inside an ``autograd.Function`` made from the same formulas
(``setup_context(ctx, inputs, output)``, ``backward(ctx, *grads)``), as Liger-Kernel's ops are
written, or the implementation alone when no gradient is needed.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch._subclasses.functional_tensor import FunctionalTensorMode

from .. import backend
from ..backend import traced_launches

_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active
_PLAIN = (torch.Tensor, nn.Parameter)


def traced(x) -> bool:
    """Something other than plain eager autograd sees this call: dynamo, a dispatch mode
    (FakeTensorMode, make_fx, ...), a functorch transform, or a tensor subclass as the op's
    first input."""
    return _is_compiling() or bool(_dispatch_modes()) or _functorch_active() or (
        isinstance(x, torch.Tensor) and type(x) not in _PLAIN)


KERNEL_MODULES = ("drop_neuron", "unit_gate", "drop_layer", "norm_stats", "norm_act_drop")


class _PackageKernels(list):
    """Every compiled-mode Triton kernel of the package, listed when first iterated (the kernel modules
    import Triton): what ``torch.library.triton_op`` registers per op in ``triton_ops_to_kernels``,
    whose sources AOTAutograd's cache key includes. All of them for every op: a change to any kernel
    invalidates the cached graphs of every op, which is safe and simple."""

    def __iter__(self):
        from triton.runtime.jit import JITFunction  # not the interpreter's kernels: nothing compiles them

        kernels = {id(kernel): kernel for name in KERNEL_MODULES
                   for kernel in vars(backend.triton_kernels(name)).values() if isinstance(kernel, JITFunction)}
        return iter(list(kernels.values()))


_PACKAGE_KERNELS = _PackageKernels()
_KERNEL_REGISTRY = getattr(torch._library.triton, "triton_ops_to_kernels", None)


class Op:
    """``qualname`` (schema from ``impl``'s annotations; an op that can run Triton kernels takes
    ``use_triton`` last) with its fake implementation and autograd formula. Calling it runs ``impl``: through the op when traced, else
    directly (inside the eager ``autograd.Function`` when an input in ``grad_inputs`` requires grad).
    ``function`` is that Function when the op writes its own (else it is made from ``impl`` and the
    formula)."""

    __slots__ = ("name", "op", "impl", "function", "grad_inputs")

    def __init__(self, qualname: str, impl: Callable, fake: Callable, backward: Optional[Callable] = None,
                 setup_context: Optional[Callable] = None, grad_inputs: Sequence[int] = (0,),
                 mutates_args=(), function=None):
        self.name = qualname
        self.impl = impl
        self.op = torch.library.custom_op(qualname, impl, mutates_args=mutates_args)
        self.op.register_fake(fake)
        if list(inspect.signature(impl).parameters)[-1] == "use_triton":
            self.op.register_torch_dispatch(FunctionalTensorMode, _decompose_on_triton(impl))
        if _KERNEL_REGISTRY is not None:  # where this torch release has it
            _KERNEL_REGISTRY[qualname] = _PACKAGE_KERNELS
        self.function = function
        self.grad_inputs = tuple(grad_inputs)
        if backward is not None:
            self.op.register_autograd(backward, setup_context=setup_context)
            if function is None:
                self.function = _eager_function(qualname, impl, setup_context, backward)

    def __call__(self, *args):
        x = args[0]  # traced() inlined: this runs on every call
        if _is_compiling() or _dispatch_modes() or _functorch_active() or (
                type(x) not in _PLAIN and isinstance(x, torch.Tensor)):
            return self.op(*args)
        if self.grad_inputs and torch.is_grad_enabled():
            for i in self.grad_inputs:
                arg = args[i]
                if arg is not None and arg.requires_grad:
                    if self.function is None:
                        raise RuntimeError(f"{self.name} has no autograd formula; its inputs must not require grad")
                    return self.function.apply(*args)
        return self.impl(*args)


def _decompose_on_triton(impl: Callable):
    """Functionalization's rule for an op: its implementation, traced (``impl``'s last argument is
    ``use_triton``), where that launches compiled Triton kernels; else the op itself, opaque."""

    def functionalize(mode, op, types, args, kwargs):
        if args[-1] and backend.kernels_traceable():
            with mode, traced_launches():
                return impl(*args, **kwargs)
        return mode.__torch_dispatch__(op, types, args, kwargs)

    return functionalize


def _eager_function(qualname: str, impl, setup_context, backward, forward=None):
    """An ``autograd.Function`` named after the op: ``forward`` (default: ``impl`` then ``setup_context``)
    and ``backward``."""
    if forward is None:
        def forward(ctx, *args):
            out = impl(*args)
            setup_context(ctx, args, out)
            return out

    name = "".join(part.title() for part in qualname.split("::")[1].split("_"))
    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                   "backward": staticmethod(backward)})


def self_adjoint(qualname: str, impl, fake) -> Op:
    """For ``impl(x, mask, *args)`` that multiplies ``x`` by a mask its second input determines (the 0-d
    seed, or drop-neuron's packed CPU mask): its gradient is the same op applied to the incoming
    gradient (so double backward works too). Saves only that second input (8 bytes for a seed)."""
    nones = (None,) * (len(inspect.signature(impl).parameters) - 1)  # no gradient for seed and settings

    def setup_context(ctx, inputs, output):
        ctx.args = inputs[2:]
        ctx.save_for_backward(inputs[1])

    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (op(grad, mask, *ctx.args), *nones)

    # the eager Function's own forward and backward: the same formula with its calls inlined (host time)
    def eager_forward(ctx, x, mask, *args):
        ctx.args = args
        ctx.save_for_backward(mask)
        return impl(x, mask, *args)

    def eager_backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        if torch.is_grad_enabled() or traced(grad):  # double backward, or compiled autograd
            return (op(grad, mask, *ctx.args), *nones)
        return (impl(grad, mask, *ctx.args), *nones)

    op = Op(qualname, impl, fake, backward, setup_context,
            function=_eager_function(qualname, impl, None, eager_backward, eager_forward))
    return op
