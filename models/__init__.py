"""Model zoo: Wide-ResNet, pre-activation bottleneck ResNet, DenseNet(-BC) and ResNeXt with every
dropout level of Cai et al. (arXiv 1904.03392) wired in, plus a small name registry.

``build_model("wrn", depth=16, widen_factor=4, num_classes=100, drop_type="layer", drop_rate=0.2)``;
``list_models()`` gives the names: the four families and the paper's configurations.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List

from torch import nn

from ._base import BlockConfig, ConvNet, LAYER_MODELS, PATH_MODELS, layer_drop_rates
from .densenet import DenseLayer, Transition, densenet
from .resnet import BasicBlock, Bottleneck, preresnet, resnext, wrn

_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "wrn": wrn,
    "preresnet": preresnet,
    "densenet": densenet,
    "resnext": resnext,
    # the configurations of the paper (CIFAR)
    "wrn28_10": functools.partial(wrn, depth=28, widen_factor=10),
    "preresnet110": functools.partial(preresnet, depth=110),
    "preresnet164": functools.partial(preresnet, depth=164),
    "densenet_bc100_k12": functools.partial(densenet, depth=100, growth_rate=12),
    "densenet_bc190_k40": functools.partial(densenet, depth=190, growth_rate=40),
    "resnext29_8x64d": functools.partial(resnext, depth=29, cardinality=8, base_width=64),
}


def list_models() -> List[str]:
    """The names ``build_model`` accepts, sorted."""
    return sorted(_MODELS)


def build_model(name: str, **cfg) -> nn.Module:
    """The model registered as ``name``, built with keyword arguments ``cfg`` (e.g. ``num_classes``,
    ``block_type``, ``norm``, ``drop_type``, ``drop_rate``); a preset's own arguments can be overridden."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _MODELS[name](**cfg)


__all__ = [
    "wrn", "preresnet", "densenet", "resnext", "build_model", "list_models",
    "BasicBlock", "Bottleneck", "DenseLayer", "Transition", "ConvNet", "BlockConfig",
    "layer_drop_rates", "PATH_MODELS", "LAYER_MODELS",
]
