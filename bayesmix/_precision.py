"""Scoped float64 for the inference core, without touching JAX's global configuration.

The per-frame statistics are O(N) numbers, so running the closed-form core in float64 costs
nothing next to the pixel pass and keeps the truncated-normal tails exact. The flag is set for the
duration of a call only (``jax.enable_x64`` is a thread-local context), so a user's own JAX code
keeps its configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

__all__ = ["x64"]


@contextlib.contextmanager
def x64() -> Iterator[None]:
    """Run the enclosed JAX code with 64-bit types enabled."""
    with jax.enable_x64(True):
        yield
