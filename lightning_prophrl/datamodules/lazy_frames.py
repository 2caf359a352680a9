"""Episode frames that are decoded on demand: a clip sampler asks for the frames its windows need and nothing else.

A ``FrameSource`` stands where an episode's ``(T, H, W, 3) uint8`` frame array would be. Indexing it like that array
(``frames[i]``, ``frames[[i, j]]``, ``frames[a:b]``) decodes those frames only and returns them as arrays;
``load(indices)`` decodes several frames in one pass before they are indexed (one pass over a video shares the
decoding that nearby frames have in common); ``select(keep)`` is the time-subsampled view ``frames[keep]`` that decodes
nothing until it is indexed. Decoded frames are kept by the source until it is dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np


class FrameSource(ABC):
    """``(T, H, W, 3) uint8`` frames decoded on demand (see the module docstring)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int, int, int]:
        """``(T, H, W, 3)``."""

    @abstractmethod
    def load(self, indices: Sequence[int] | np.ndarray) -> None:
        """Decode the frames at ``indices`` (valid, non-negative) that are not held yet, in one pass."""

    @abstractmethod
    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (valid, non-negative, any order, repeats allowed) as ``(n, H, W, 3) uint8``."""

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        """NumPy-style indexing along time (ints, negative ints, slices, integer arrays); decodes what it returns."""
        positions = np.arange(len(self))[index]  # NumPy's own index rules and IndexError
        if positions.ndim == 0:
            return self.take([int(positions)])[0]
        return self.take(positions.reshape(-1)).reshape(*positions.shape, *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All frames (decodes the whole episode): ``np.asarray(frames)``."""
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def select(self, keep: Sequence[int] | np.ndarray) -> FrameSource:
        """The frames ``keep`` as a new source (frame ``i`` of the view is frame ``keep[i]`` here); decodes nothing."""
        return SelectedFrames(self, keep)


class SelectedFrames(FrameSource):
    """Frames ``keep`` of another source, decoded (and kept) by that source.

    Args:
        base: the source.
        keep: ``(T',)`` indices into ``base`` (e.g. ``arange(0, T, stride)``).
    """

    def __init__(self, base: FrameSource, keep: Sequence[int] | np.ndarray):
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        if keep.size and (keep.min() < 0 or keep.max() >= len(base)):
            raise IndexError(f"frame indices {keep.min()}..{keep.max()} outside 0..{len(base) - 1}")
        self.base, self.keep = base, keep

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.keep), *self.base.shape[1:])

    def load(self, indices: Sequence[int] | np.ndarray) -> None:
        self.base.load(self.keep[np.asarray(indices, dtype=np.int64)])

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.base.take(self.keep[np.asarray(indices, dtype=np.int64)])
