"""The one ``Modality`` enum every layer uses (docs/contracts.md: ids 0, 1, 2 in this order).

Boundary tokens (begin/end of image, begin/end of speech) belong to the *text*
modality: they are predicted by the text tower and embedded like text.
"""
from __future__ import annotations

import enum


class Modality(enum.IntEnum):
    TEXT = 0
    IMAGE = 1
    SPEECH = 2

    @classmethod
    def parse(cls, value: "str | int | Modality") -> "Modality":
        """Accept ``"image"``, ``1`` or ``Modality.IMAGE``; raise a helpful error otherwise."""
        if isinstance(value, Modality):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and value in cls._value2member_map_:
            return cls(value)
        names = ", ".join(m.label for m in cls)
        raise ValueError(f"unknown modality {value!r}; expected one of: {names}")

    @property
    def label(self) -> str:
        """Lower-case name used in metric tags (``train/loss_image``) and shard JSON."""
        return self.name.lower()
