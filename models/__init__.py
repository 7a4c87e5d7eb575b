"""Model zoo: Wide-ResNet, pre-activation bottleneck ResNet, DenseNet(-BC) and ResNeXt with every
dropout level of Cai et al. (arXiv 1904.03392) wired in, plus a small name registry.

``build_model("wrn", depth=16, widen_factor=4, num_classes=100, drop_type="layer", drop_rate=0.2)``;
``list_models()`` gives the names: the four families and the paper's configurations.
``FAMILIES`` describes each family for command lines and configs (:class:`ModelFamily`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from ._base import BlockConfig, ConvNet, LAYER_MODELS, PATH_MODELS, layer_drop_rates
from .densenet import DenseLayer, Transition, densenet
from .resnet import BasicBlock, Bottleneck, preresnet, resnext, wrn


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A family's builder and what a command line needs to know of it."""

    build: Callable[..., nn.Module]
    options: Dict[str, str]  # the builder's keyword arguments beyond the settings every family shares: what each sets
    smallest_depth: int  # the shallowest depth the builder accepts with its default options
    depths: str  # the depths it accepts, as its error message spells them
    # the options the paper repository's --arg1 and --arg2 set (its resnet's --arg1, a widen factor, is fixed here)
    arg1: Optional[str] = None
    arg2: Optional[str] = None


FAMILIES: Dict[str, ModelFamily] = {
    "wrn": ModelFamily(wrn, {"widen_factor": "width multiplier"}, 10, "6n+4", arg1="widen_factor"),
    "preresnet": ModelFamily(preresnet, {}, 11, "9n+2"),
    "densenet": ModelFamily(densenet, {"growth_rate": "growth rate",
                                       "bottleneck": "1x1 bottleneck in each dense layer (DenseNet-BC)",
                                       "compression": "transition compression"},
                            10, "6n+4 (3n+4 without bottleneck)", arg1="growth_rate"),
    "resnext": ModelFamily(resnext, {"cardinality": "groups", "base_width": "width per group"}, 11, "9n+2",
                           arg1="cardinality", arg2="base_width"),
}

# the configurations of the paper (CIFAR): name -> (family, the builder arguments it fixes)
PRESETS: Dict[str, Tuple[str, Dict]] = {
    "wrn28_10": ("wrn", dict(depth=28, widen_factor=10)),
    "preresnet110": ("preresnet", dict(depth=110)),
    "preresnet164": ("preresnet", dict(depth=164)),
    "densenet_bc100_k12": ("densenet", dict(depth=100, growth_rate=12)),
    "densenet_bc190_k40": ("densenet", dict(depth=190, growth_rate=40)),
    "resnext29_8x64d": ("resnext", dict(depth=29, cardinality=8, base_width=64)),
}


def list_models() -> List[str]:
    """The names ``build_model`` accepts, sorted."""
    return sorted([*FAMILIES, *PRESETS])


def _check_name(name: str) -> None:
    if name not in FAMILIES and name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")


def family_of(name: str) -> str:
    """The family a registered model name belongs to (a family's own name for a family)."""
    _check_name(name)
    return PRESETS[name][0] if name in PRESETS else name


def build_model(name: str, **cfg) -> nn.Module:
    """The model registered as ``name``, built with keyword arguments ``cfg`` (e.g. ``num_classes``,
    ``block_type``, ``norm``, ``drop_type``, ``drop_rate``); a preset's own arguments can be overridden."""
    family = family_of(name)
    preset = PRESETS[name][1] if name in PRESETS else {}
    return FAMILIES[family].build(**{**preset, **cfg})


__all__ = [
    "wrn", "preresnet", "densenet", "resnext", "build_model", "list_models", "family_of",
    "FAMILIES", "PRESETS", "ModelFamily",
    "BasicBlock", "Bottleneck", "DenseLayer", "Transition", "ConvNet", "BlockConfig",
    "layer_drop_rates", "PATH_MODELS", "LAYER_MODELS",
]
