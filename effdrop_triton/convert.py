"""``convert(model)``: swap the dropout modules of an existing model for this package's."""

from __future__ import annotations

import warnings

from torch import nn

from .modules import DropChannel, DropNeuron, DropPath


def _replacement(module: nn.Module):
    """This package's equivalent of a PyTorch, timm or torchvision dropout module, or None."""
    if type(module) is nn.Dropout:
        return DropNeuron(module.p)
    if type(module) in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
        return DropChannel(module.p)
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    if kind == "torchvision.ops.stochastic_depth.StochasticDepth":
        # a per-sample ("row") or per-batch gate on a whole residual branch: one path, groups=1
        return DropPath(module.p, mode="sample" if module.mode == "row" else "batch", groups=1)
    if kind.startswith("timm.") and type(module).__name__ == "DropPath":
        if not getattr(module, "scale_by_keep", True):
            warnings.warn(f"convert: kept {kind} with scale_by_keep=False (this package always rescales kept values)")
            return None
        return DropPath(module.drop_prob, mode="sample", groups=1)
    return None


def convert(model: nn.Module) -> nn.Module:
    """Replace ``nn.Dropout`` (drop-neuron), ``nn.Dropout1d/2d/3d`` (drop-channel), timm's ``DropPath``
    and torchvision's ``StochasticDepth`` (per-sample or per-batch branch gates) by this package's
    modules with the same rate and mode, in place; returns ``model``.

    Only dropout modules are touched; they hold no parameters or buffers, so the state dict is
    unchanged. Dropout applied through ``F.dropout`` calls inside a model's ``forward`` is not a
    module and stays as it is. The replacements take batched ``(N, C, *)`` input: an unbatched
    ``(C, L)`` input to ``nn.Dropout1d`` (or ``(C, D, H, W)`` to ``nn.Dropout3d``) would be read as
    ``(N, C)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    replacement = _replacement(model)
    if replacement is not None:
        return replacement.train(model.training)
    for name, child in model.named_children():
        replacement = _replacement(child)
        if replacement is not None:
            setattr(model, name, replacement.train(child.training))
        else:
            convert(child)
    return model
