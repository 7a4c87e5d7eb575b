"""Autograd of the gating ops: the mask is regenerated from the seed, never saved."""


def register_self_adjoint(op) -> None:
    """For ``op(x, seed, *args)`` that multiplies ``x`` by a seed-determined mask: its gradient is
    the same op applied to the incoming gradient (so double backward works too)."""

    def setup_context(ctx, inputs, output):
        ctx.args = inputs[2:]
        ctx.save_for_backward(inputs[1])  # the 0-d seed: 8 bytes

    def backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        return (op(grad, seed, *ctx.args), None) + (None,) * len(ctx.args)

    op.register_autograd(backward, setup_context=setup_context)
