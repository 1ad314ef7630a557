"""The statistics pass in JAX, for frames that live on a device (a ``jax.Array``) or
``device="gpu"``.

The same statistics as the numba kernels of :mod:`bayesmix._stats`, as jitted work XLA fuses:
products of float32 pixels summed in float64 (XLA's row reduction with a float64 accumulator,
as fast as its float32 one on a CPU; partial sums over pixel blocks are not: XLA's CPU
reductions into a (frames, blocks) array ran 15x slower), and the residual formed pixel by
pixel (never ``q - s^2/dd``), so the rounding stays at the level of the data's own precision.
Only the O(N) statistics leave the device (by ``jax.device_get``); a frame with non-finite
pixels in a model with a background or K >= 3 references is solved on the host in float64, one
row at a time, as the numba path does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._precision import x64

__all__ = ["basis_kernel", "device_chunks", "frame_kernel", "is_jax_array"]

#: Frames per chunk are rounded up to a multiple of this, so a stack compiles at most twice.
_ROUND = 256


def is_jax_array(frames: Any) -> bool:
    """True for a ``jax.Array`` (data already on a device)."""
    return isinstance(frames, jax.Array)


def _row_sum(v: jax.Array) -> jax.Array:
    """Row sums of ``v`` (m, p), accumulated in float64 whatever its dtype."""
    return jnp.sum(v, axis=1, dtype=jnp.float64)


def _rows(chunk: jax.Array, pixels: jax.Array | None, dtype: Any) -> jax.Array:
    rows = chunk.reshape(chunk.shape[0], -1)
    if pixels is not None:
        rows = jnp.take(rows, pixels, axis=1)
    return rows.astype(dtype)


@jax.jit
def _frame_delta(chunk: jax.Array, pixels: jax.Array | None, c: jax.Array,
                 d: jax.Array) -> jax.Array:  # fmt: skip
    return _row_sum((_rows(chunk, pixels, c.dtype) - c) * d)


@jax.jit
def _frame_rss(chunk: jax.Array, pixels: jax.Array | None, c: jax.Array, d: jax.Array,
               delta: jax.Array) -> jax.Array:  # fmt: skip
    e = _rows(chunk, pixels, c.dtype) - c - delta.astype(c.dtype)[:, None] * d
    return _row_sum(e * e)


def _frame_kernel(chunk: jax.Array, pixels: jax.Array | None, c: jax.Array, d: jax.Array,
                  dd: jax.Array) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Frames with finite pixels: (xhat, rss); a non-finite pixel makes both non-finite (NaN and
    Inf propagate), which flags the frame for :func:`_masked_kernel`.

    Shaped by what XLA's CPU backend does fast (measured on 20,000 frames of 64x64): two jitted
    sweeps that each read the chunk once and end at a plain row sum. In one program it writes
    ``y - c`` to memory between the sweeps (6x slower); anything applied to a row sum inside
    the same program (even ``/ dd``), selects, integer counts, or sums over pixel blocks make
    it emit a slow reduction (10-25x slower).
    """
    delta = _frame_delta(chunk, pixels, c, d) / dd
    return 0.5 + delta, _frame_rss(chunk, pixels, c, d, delta)


@jax.jit
def _masked_kernel(chunk: jax.Array, pixels: jax.Array | None, c: jax.Array, d: jax.Array,
                   dd: jax.Array) -> tuple[jax.Array, ...]:  # fmt: skip
    """Frames with non-finite pixels, which are left out: (xhat, rss, dd, n, n_inf)."""
    rows = _rows(chunk, pixels, c.dtype)
    p = rows.shape[1]
    ok = jnp.isfinite(rows)
    r = jnp.where(ok, rows - c, 0)
    dk = jnp.where(ok, d, 0)
    n = ok.sum(axis=1)
    n_inf = jnp.isinf(rows).sum(axis=1)
    dd_i = jnp.where(n == p, dd, _row_sum(dk * dk))
    good = (n > 0) & (dd_i > 0)
    delta = jnp.where(good, _row_sum(r * dk) / jnp.where(good, dd_i, 1.0), jnp.nan)
    e = r - delta.astype(c.dtype)[:, None] * dk
    rss = jnp.where(good, _row_sum(e * e), jnp.nan)
    return 0.5 + delta, rss, dd_i, n, n_inf


@jax.jit
def _basis_proj(chunk: jax.Array, pixels: jax.Array | None, c: jax.Array,
                q: jax.Array) -> jax.Array:  # fmt: skip
    r = _rows(chunk, pixels, c.dtype) - c
    return jnp.einsum("mp,bp->mb", r, q, preferred_element_type=jnp.float64)


@jax.jit
def _basis_rss(chunk: jax.Array, pixels: jax.Array | None, c: jax.Array, q: jax.Array,
               proj: jax.Array) -> jax.Array:  # fmt: skip
    e = _rows(chunk, pixels, c.dtype) - c - proj.astype(c.dtype) @ q
    return _row_sum(e * e)


def _basis_kernel(chunk: jax.Array, pixels: jax.Array | None, c: jax.Array,
                  q: jax.Array) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Projections on the orthonormal rows of ``q`` and the residual's sum of squares, in two
    sweeps (see :func:`_frame_kernel`)."""
    proj = _basis_proj(chunk, pixels, c, q)
    return proj, _basis_rss(chunk, pixels, c, q, proj)


def _device_args(pixels: np.ndarray, *arrays: np.ndarray) -> tuple[Any, ...]:
    px = None if pixels.size == 0 else jnp.asarray(pixels.astype(np.int32))
    return (px, *(jnp.asarray(a) for a in arrays))


def frame_kernel(chunk: Any, pixels: np.ndarray, c: np.ndarray, d: np.ndarray,
                 dd: float) -> tuple[np.ndarray, ...]:  # fmt: skip
    """(xhat, rss, dd, n, n_inf) of one chunk of frames (a device array), each (k,)."""
    m = int(chunk.shape[0])
    with x64():
        px, c_, d_ = _device_args(pixels, c, d)
        dd_ = jnp.float64(dd)
        xhat, rss = (np.array(a, np.float64)  # writable copies of the O(N) statistics
                     for a in jax.device_get(_frame_kernel(chunk, px, c_, d_, dd_)))  # fmt: skip
        ddo = np.full(m, float(dd))
        n = np.full(m, int(c.shape[0]), np.int64)
        n_inf = np.zeros(m, np.int64)
        bad = np.flatnonzero(~(np.isfinite(xhat) & np.isfinite(rss)))
        if bad.size:
            # The few frames with NaN/Inf pixels, gathered on the device (padded to a power of
            # two so that their count compiles a handful of shapes at most).
            size = 1 << int(bad.size - 1).bit_length()
            idx = jnp.asarray(np.concatenate([bad, np.full(size - bad.size, bad[0])]))
            out = jax.device_get(_masked_kernel(chunk[idx], px, c_, d_, dd_))
            for full, part in zip((xhat, rss, ddo, n, n_inf), out, strict=True):
                full[bad] = np.asarray(part)[: bad.size]
    return xhat, rss, ddo, n, n_inf


def basis_kernel(chunk: Any, pixels: np.ndarray, c: np.ndarray,
                 q: np.ndarray) -> tuple[np.ndarray, ...]:  # fmt: skip
    """(proj, rss, n, n_inf) of one chunk of frames (a device array); rows with non-finite
    pixels get ``n = -1`` (solved on the host, see :func:`bayesmix._stats._basis_chunk`)."""
    with x64():
        px, c_, q_ = _device_args(pixels, c, q)
        proj, rss = (np.array(a, np.float64)
                     for a in jax.device_get(_basis_kernel(chunk, px, c_, q_)))  # fmt: skip
    finite = np.isfinite(rss) & np.isfinite(proj).all(axis=1)  # NaN/Inf pixels propagate
    proj[~finite] = np.nan
    rss[~finite] = np.nan
    n = np.where(finite, int(c.shape[0]), -1).astype(np.int64)
    return proj, rss, n, np.zeros(len(rss), np.int64)


def _rounded(chunk: Any, device: Any) -> tuple[Any, int]:
    """A chunk on the device, padded with zero frames to a multiple of 256, and its length."""
    if not is_jax_array(chunk):
        chunk = jax.device_put(np.asarray(chunk), device)
    k = int(chunk.shape[0])
    pad = -k % _ROUND
    if pad:
        chunk = jnp.pad(chunk, ((0, pad),) + ((0, 0),) * (chunk.ndim - 1))
    return chunk, k


def device_chunks(frames: Any, step: int, device: Any) -> Iterator[tuple[Any, int]]:
    """Chunks of ``frames`` as device arrays, each with the number of its frames that are real.

    A ``jax.Array`` is one chunk, read where it lives: the kernels make no frame-sized
    temporary, and slicing it would copy (it compiles once per stack shape). Host frames are put
    on ``device`` ``step`` frames at a time, and the chunks of an iterator one by one, padded
    with zero frames to a multiple of 256: a stack of any length then compiles the kernels at
    most twice (its step and one remainder size).
    """
    if is_jax_array(frames):
        yield frames, int(frames.shape[0])
        return
    if isinstance(frames, Iterator):
        for chunk in frames:
            yield _rounded(chunk, device)
        return
    n_frames = int(frames.shape[0])
    step = max(_ROUND, -(-int(step) // _ROUND) * _ROUND)
    for i in range(0, n_frames, step):
        yield _rounded(frames[i : i + step], device)
