"""The custom ops' definitions, autograd formulas and eager fast path.

Every op is a ``torch.library`` custom op, so ``torch.compile`` sees one opaque node with a
fake implementation and an autograd formula. Outside compilation, though, the dispatcher's
Python layers for custom ops (autograd wrapper, backend wrapper, output alias checks) cost
hundreds of µs per call on the host: more than the kernels take at CIFAR shapes. ``call``
runs the same implementation and the same formulas through a plain ``torch.autograd.Function``
when nothing traces the call, and through the op otherwise.
"""

from __future__ import annotations

import typing
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn


class Formula(NamedTuple):
    name: str
    impl: Callable
    setup_context: Optional[Callable]
    backward: Optional[Callable]  # None: the op has no autograd formula
    returns_list: bool  # List[Tensor] output (an autograd.Function returns a tuple)


_FORMULAS = {}  # op -> Formula
_PLAIN = (torch.Tensor, nn.Parameter)


def define(qualname: str, impl, fake, backward=None, setup_context=None):
    """The custom op ``qualname`` (schema from ``impl``'s annotations) with its fake implementation
    and autograd formula, registered for ``call``'s eager path too."""
    op = torch.library.custom_op(qualname, impl, mutates_args=())
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    returns = typing.get_type_hints(impl).get("return")
    _FORMULAS[op] = Formula(qualname, impl, setup_context, backward, typing.get_origin(returns) is list)
    return op


def define_self_adjoint(qualname: str, impl, fake):
    """For ``impl(x, seed, *args)`` that multiplies ``x`` by a seed-determined mask: its gradient is
    the same op applied to the incoming gradient (so double backward works too). Saves only the
    0-d seed (8 bytes)."""
    def setup_context(ctx, inputs, output):
        ctx.args = inputs[2:]
        ctx.save_for_backward(inputs[1])

    def backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        return (call(op, grad, seed, *ctx.args), None) + (None,) * len(ctx.args)

    op = define(qualname, impl, fake, backward, setup_context)
    return op


def _traced(args) -> bool:
    """Something other than plain eager autograd sees this call: dynamo, a dispatch mode
    (FakeTensorMode, make_fx, ...), a functorch transform, or a tensor subclass."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or torch._C._are_functorch_transforms_active():
        return True
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if type(arg) not in _PLAIN:
                return True
        elif isinstance(arg, list) and any(isinstance(a, torch.Tensor) and type(a) not in _PLAIN for a in arg):
            return True
    return False


def _requires_grad(args) -> bool:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if arg.requires_grad:
                return True
        elif isinstance(arg, list) and any(isinstance(a, torch.Tensor) and a.requires_grad for a in arg):
            return True
    return False


def call(op, *args):
    """``op(*args)``: through the dispatcher when traced, else straight to the implementation
    (inside a ``torch.autograd.Function`` running the op's own formulas when a gradient is needed)."""
    formula = _FORMULAS[op]
    if _traced(args):
        return op(*args)
    if torch.is_grad_enabled() and _requires_grad(args):
        if formula.backward is None:
            raise RuntimeError(f"{formula.name} has no autograd formula; its inputs must not require grad")
        layout = tuple(len(a) if isinstance(a, list) else -1 for a in args)
        flat = [t for a, n in zip(args, layout) for t in (a if n >= 0 else (a,))]
        out = _EagerOp.apply(formula, layout, *flat)
        return list(out) if formula.returns_list else out
    return formula.impl(*args)


class _OpContext:
    """The ``ctx`` that the ops' ``setup_context``/``backward`` formulas expect (attributes,
    ``save_for_backward``, ``saved_tensors``, ``needs_input_grad`` per op input), kept apart
    from the autograd.Function's own ctx (bound only while a formula runs: no reference cycle)."""

    def __init__(self, layout):
        self._layout = layout
        self._ctx = None

    def save_for_backward(self, *tensors):
        self._ctx.save_for_backward(*tensors)

    @property
    def saved_tensors(self):
        return self._ctx.saved_tensors

    @property
    def needs_input_grad(self):
        flat = iter(self._ctx.needs_input_grad[2:])
        return tuple(any(next(flat) for _ in range(n)) if n >= 0 else next(flat) for n in self._layout)


class _EagerOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, formula, layout, *flat):
        flat = iter(flat)
        args = [[next(flat) for _ in range(n)] if n >= 0 else next(flat) for n in layout]
        out = formula.impl(*args)
        ctx.formula, ctx.op_ctx = formula, _OpContext(layout)
        ctx.op_ctx._ctx = ctx
        formula.setup_context(ctx.op_ctx, args, out)
        ctx.op_ctx._ctx = None
        ctx.out_kind = type(out)
        return tuple(out) if isinstance(out, (list, tuple)) else out

    @staticmethod
    def backward(ctx, *grads):
        backward = ctx.formula.backward
        op_ctx = ctx.op_ctx
        op_ctx._ctx = ctx
        try:
            if ctx.out_kind is list:
                result = backward(op_ctx, list(grads))
            elif ctx.out_kind is tuple:
                result = backward(op_ctx, *grads)
            else:
                result = backward(op_ctx, grads[0])
        finally:
            op_ctx._ctx = None
        flat = []
        for grad, n in zip(result, op_ctx._layout):
            if n < 0:
                flat.append(grad)
            else:
                flat.extend(grad if grad is not None else [None] * n)
        return (None, None, *flat)
