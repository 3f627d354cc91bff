"""The interface every interactive session offers: the M-SAM Session, the random-walker baseline and the
stand-ins of the tests. ``evaluation.run_protocol``, the CLI and the widget drive any of them through it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .boxes import Box


@dataclass
class ClickResult:
    """What one click (or undo) changed: the box of the full volume and the object's mask inside it."""

    bbox: Box
    mask: np.ndarray
    probabilities: np.ndarray | None
    timings: dict[str, float]
    object_id: int


@runtime_checkable
class SessionLike(Protocol):
    """One image, one current object built click by click (array voxel indices), undo and reset."""

    @property
    def device(self) -> str: ...

    @property
    def spacing(self) -> tuple[float, float, float]: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def current_mask(self) -> np.ndarray: ...

    @property
    def clicks(self) -> list[tuple[tuple[int, int, int], bool]]: ...

    @property
    def zoom(self) -> float: ...

    def set_image(self, volume: np.ndarray, spacing: Sequence[float] = (1, 1, 1),
                  modality: str = "other") -> None: ...

    def add_click(self, voxel: tuple[int, int, int], positive: bool = True) -> ClickResult: ...

    def undo(self) -> ClickResult | None: ...

    def reset(self) -> None: ...
