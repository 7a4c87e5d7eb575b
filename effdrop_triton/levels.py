"""The four structural dropout levels, with the paper repository's numbering.

One vocabulary from the public API down to the kernels: a level's number is also its
Philox stream (``effdrop_triton.masks``) and the value of the kernels' ``DROP`` constexpr.
"No dropout" is ``p == 0`` (or no level), never a code of its own.
"""

from __future__ import annotations

import enum
import numbers
from typing import Iterable, Optional, Union


class DropLevel(enum.IntEnum):
    NEURON = 0  # one element
    CHANNEL = 1  # one (sample, channel) map
    PATH = 2  # one path of a multi-path transformation
    LAYER = 3  # the residual branch of one sample (or of the batch)

    @classmethod
    def parse(cls, value: Union[int, str, "DropLevel"], name: str = "drop_type",
              allowed: Optional[Iterable["DropLevel"]] = None) -> "DropLevel":
        """The level of a number (0-3) or a name ("neuron", "channel", "path", "layer");
        ``ValueError`` naming ``name`` and the valid values otherwise (or outside ``allowed``)."""
        choices = tuple(cls) if allowed is None else tuple(allowed)
        level = None
        if isinstance(value, str):
            level = cls.__members__.get(value.upper()) if value.islower() else None
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) < len(cls):
            level = cls(int(value))
        if level is None or level not in choices:
            valid = ", ".join(f"{int(c)} / {c.label!r}" for c in choices)
            raise ValueError(f"{name} must be one of {valid}, got {value!r}")
        return level

    @property
    def label(self) -> str:
        """The level's name as the API spells it: "neuron", "channel", "path" or "layer"."""
        return self.name.lower()


INNER_LEVELS = (DropLevel.NEURON, DropLevel.CHANNEL)  # the levels that act inside a norm or conv block
