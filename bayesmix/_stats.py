"""One pass over the pixels: the per-frame sufficient statistics.

Writing ``d = A - B`` and ``r = y - B``, a frame's Gaussian likelihood depends on its pixels only
through four numbers (see :mod:`bayesmix._likelihood`)::

    xhat = (r . d) / (d . d)          least-squares weight of A
    rss  = ||r - xhat d||^2           residual sum of squares at xhat
    dd   = d . d                      over the frame's valid pixels
    n    = number of valid pixels

The pass is a fused, multithreaded kernel (numba) that reads each frame once; frames already on
a JAX device (a ``jax.Array``), or any frames with ``device="gpu"``, take the same pass in JAX
(:mod:`bayesmix._stats_jax`). It works on
``r' = y - c`` with ``c = (A + B) / 2``, which removes the frame's common level, and sums
float32 data in short float32 blocks added into float64, so rounding stays at the level of the
data's own precision. ``rss`` is taken as ``q - s^2/dd`` only when that subtraction loses less than
a few bits; otherwise a second sweep over the (cache-resident) row computes the residual directly.
Frames with NaN/Inf pixels take a slower path that leaves those pixels out. Integer stacks are
read as they are and converted in registers (float32 up to 16 bits, float64 above).
"""

from __future__ import annotations

import contextlib
import mmap
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import singledispatch
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numba as nb
import numpy as np

from bayesmix._errors import InputError
from bayesmix._io import ChunkStream, Stack, in_units, level, prepare
from bayesmix._stats_jax import basis_kernel as jax_basis_kernel
from bayesmix._stats_jax import device_chunks, is_jax_array
from bayesmix._stats_jax import frame_kernel as jax_frame_kernel
from bayesmix._threads import quiet_blas_threads

__all__ = [
    "BasisStats",
    "FrameStats",
    "GainStats",
    "PerFrameStats",
    "SimplexStats",
    "basis_stats_from_stack",
    "bucket_size",
    "frame_stats",
    "pad_stats",
    "reduce_stats",
    "stats_from_stack",
]

# Reassociation lets the reductions vectorise; no 'nnan'/'ninf', so NaN still propagates and
# flags the rows that need the masked path.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_BLOCK = 1024  # pixels per float32 partial sum (split again across SIMD lanes)
_ROWS_PER_TASK = 32
_NATIVE = {np.dtype(t) for t in ("f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")}
_WILLNEED = getattr(mmap, "MADV_WILLNEED", 3)
_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
_CANCEL = 16.0  # second sweep when q / rss > 16, i.e. the subtraction would lose > 4 bits


class FrameStats(NamedTuple):
    """Per-frame sufficient statistics, each an array of shape (N,) (float64; ``n`` int64).

    The Gaussian log-likelihood of frame ``i`` depends on its pixels only through these:

    .. math::

        \\log p(y_i \\mid x, \\sigma) = -n_i \\log\\sigma - \\tfrac{n_i}{2}\\log 2\\pi
            - \\frac{\\mathrm{rss}_i + \\mathrm{dd}_i (x - \\hat x_i)^2}{2\\sigma^2}
    """

    xhat: np.ndarray  #: least-squares weight of A, unconstrained
    rss: np.ndarray  #: residual sum of squares at xhat
    dd: np.ndarray  #: ||A - B||^2 over the frame's valid pixels
    n: np.ndarray  #: number of valid pixels

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(np.shape(self.xhat)[0])

    @property
    def r2(self) -> np.ndarray:
        """Per-frame R^2 of the least-squares fit, ``1 - rss / ||y - B||^2``.

        The same number as the classic per-image ``scipy.linalg.lstsq`` answer, with
        ``||y - B||^2 = rss + dd * xhat^2`` (Pythagoras, no second pass).
        """
        rss = np.asarray(self.rss)
        total = rss + np.asarray(self.dd) * np.asarray(self.xhat) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, 1.0 - rss / total, 0.0)

    @property
    def dof_residual(self) -> np.ndarray:
        """Degrees of freedom of ``rss``: n minus the weight."""
        return np.asarray(self.n, np.float64) - 1.0


def _explained(z: np.ndarray, rss: np.ndarray) -> np.ndarray:
    """R^2 from a frame's coordinates ``z`` in the references' subspace and its residual."""
    zz = np.sum(z**2, axis=-1)
    total = rss + zz
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, zz / total, 0.0)


class GainStats(NamedTuple):
    """Per-frame statistics of the model with a gain ``g`` (and any background), shape (N, ...).

    With the background integrated out, the all-pixel likelihood of the reference weights
    ``w = g (x, 1 - x)`` is :math:`-(\\mathrm{rss} + \\lVert M w - z\\rVert^2) / 2\\sigma^2`,
    and :math:`M w = g\\,(m_0 + x\\, m_1)`.
    """

    z: np.ndarray  #: (N, 2) the frame's coordinates in the references' subspace
    m0: np.ndarray  #: (N, 2) M applied to (0, 1), i.e. to B
    m1: np.ndarray  #: (N, 2) M applied to (1, -1), i.e. to A - B
    rss: np.ndarray  #: (N,) residual sum of squares of the full least-squares fit
    n: np.ndarray  #: (N,) degrees of freedom: valid pixels minus background terms

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(np.shape(self.rss)[0])

    @property
    def r2(self) -> np.ndarray:
        """R^2 of the least-squares fit (references free) relative to the background alone."""
        return _explained(np.asarray(self.z), np.asarray(self.rss))

    @property
    def dof_residual(self) -> np.ndarray:
        """Degrees of freedom of ``rss``: n minus the two reference coefficients."""
        return np.asarray(self.n, np.float64) - 2.0


class SimplexStats(NamedTuple):
    """Per-frame statistics of K >= 3 references (any background integrated out), shape (N, ...).

    The all-pixel likelihood of the weights ``x`` (a point of the simplex) is

    .. math::

        \\log p(y_i \\mid x, \\sigma) = -n_i \\log\\sigma
            - \\frac{\\mathrm{rss}_i + (x - w_i)^T M_i^T M_i (x - w_i)}{2\\sigma^2} + c,

    with ``w_i`` the unconstrained least-squares weights and :math:`M_i^T M_i` the Schur
    complement of the background in the frame's Gram matrix (shared by all frames without
    masked pixels).
    """

    w: np.ndarray  #: (N, K) least-squares weights of the references (unconstrained)
    chol: np.ndarray  #: (N, K, K) upper-triangular M
    rss: np.ndarray  #: (N,) residual sum of squares of the full least-squares fit
    n: np.ndarray  #: (N,) degrees of freedom: valid pixels minus background terms

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(np.shape(self.rss)[0])

    @property
    def n_refs(self) -> int:
        """K, the number of references."""
        return int(np.shape(self.w)[1])

    @property
    def r2(self) -> np.ndarray:
        """R^2 of the least-squares fit (weights free) relative to the background alone."""
        z = np.einsum("kij,kj->ki", np.asarray(self.chol), np.asarray(self.w))
        return _explained(z, np.asarray(self.rss))

    @property
    def dof_residual(self) -> np.ndarray:
        """Degrees of freedom of ``rss``: n minus the K reference coefficients."""
        return np.asarray(self.n, np.float64) - self.n_refs


class PerFrameStats(NamedTuple):
    """The two-reference statistics with a noise scale per frame and its population prior.

    :math:`\\log\\sigma_i \\sim \\mathcal N(\\mu, \\tau^2)`; ``s_mu`` and ``s_tau`` hold mu and
    tau for each frame (the same numbers, broadcast) so that the pytree pads like the others.
    """

    xhat: np.ndarray  #: (N,) least-squares weight of A
    rss: np.ndarray  #: (N,) residual sum of squares at xhat
    dd: np.ndarray  #: (N,) the likelihood's precision in x times sigma^2
    n: np.ndarray  #: (N,) degrees of freedom of the frame (pixels minus background terms)
    s_mu: np.ndarray  #: (N,) population mean of log sigma
    s_tau: np.ndarray  #: (N,) population sd of log sigma

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(np.shape(self.xhat)[0])

    @classmethod
    def of(cls, stats: FrameStats, mu: float, tau: float) -> PerFrameStats:
        """``stats`` with the population (mu, tau) of log sigma."""
        n = stats.n_frames
        return cls(*(np.asarray(v, np.float64) for v in stats), np.full(n, float(mu)),
                   np.full(n, float(tau)))  # fmt: skip


class SmoothedStats(NamedTuple):
    """Each frame's posterior along a sequence, before the frame's own bounds: x_i's marginal
    is :math:`\\mathcal N(m_i, \\mathrm{sd}_i^2)` truncated to the prior's bounds (the
    cavity of expectation propagation; see :mod:`bayesmix._temporal`). Arrays of shape (N,)."""

    m: np.ndarray
    sd: np.ndarray

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(np.shape(self.m)[0])


class BasisStats(NamedTuple):
    """The statistics pass on a basis [background, A, B]: per frame, shape (N, ...).

    ``w`` and ``bg`` are the least-squares coefficients of the references and of the background,
    ``chol`` an upper-triangular M with :math:`M^T M` the Schur complement of the background in
    the frame's Gram matrix, ``z = M w``; ``rss`` is the residual of the full least-squares fit,
    computed from the residual itself. ``bg_sens`` maps a change of ``w`` to the background's
    conditional mean: :math:`E[c \\mid w] = bg + bg_{sens} (w - w_{ls})`.
    """

    w: np.ndarray  #: (N, K)
    z: np.ndarray  #: (N, K)
    chol: np.ndarray  #: (N, K, K)
    bg: np.ndarray  #: (N, P)
    bg_sens: np.ndarray  #: (N, P, K)
    rss: np.ndarray  #: (N,)
    n: np.ndarray  #: (N,) valid pixels

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(np.shape(self.rss)[0])

    @property
    def n_background(self) -> int:
        """P, the number of background terms."""
        return int(np.shape(self.bg)[1])

    @property
    def n_refs(self) -> int:
        """K, the number of references."""
        return int(np.shape(self.w)[1])

    def background_at(self, w: np.ndarray) -> np.ndarray:
        """The background's conditional mean, shape (N, P), at reference coefficients ``w``,
        shape (N, K). It is linear in ``w``, so at :math:`E[w \\mid y]` it is
        :math:`E[c \\mid y]`."""
        sens = np.asarray(self.bg_sens, np.float64)
        return np.asarray(self.bg, np.float64) + np.einsum(
            "npk,nk->np", sens, np.asarray(w, np.float64) - np.asarray(self.w, np.float64)
        )


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _sweep(y, c, d):
    """Sums s' = sum (y - c) d and q' = sum (y - c)^2 in blocks."""
    zero = d[0] - d[0]
    s = 0.0
    q = 0.0
    for j0 in range(0, y.shape[0], _BLOCK):
        # Slices give the inner loop a plain trip count, which is what lets LLVM vectorise it.
        yb, cb, db = y[j0 : j0 + _BLOCK], c[j0 : j0 + _BLOCK], d[j0 : j0 + _BLOCK]
        bs = zero
        bq = zero
        for j in range(yb.shape[0]):
            r = yb[j] - cb[j]
            bs += r * db[j]
            bq += r * r
        s += bs
        q += bq
    return s, q


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _residual(y, c, d, dl):
    """rss = sum (y - c - dl d)^2, the centred second sweep (``dl`` in the row's dtype)."""
    zero = d[0] - d[0]
    q = 0.0
    for j0 in range(0, y.shape[0], _BLOCK):
        yb, cb, db = y[j0 : j0 + _BLOCK], c[j0 : j0 + _BLOCK], d[j0 : j0 + _BLOCK]
        bq = zero
        for j in range(yb.shape[0]):
            e = yb[j] - cb[j] - dl * db[j]
            bq += e * e
        q += bq
    return q


@nb.njit(cache=True)
def _masked_row(y, c, d):
    """Statistics of a row with non-finite pixels, which are left out. Float64 throughout."""
    n = 0
    ninf = 0
    dd = 0.0
    s = 0.0
    for j in range(y.shape[0]):
        v = y[j]
        if np.isfinite(v):
            n += 1
            dj = np.float64(d[j])
            dd += dj * dj
            s += (np.float64(v) - c[j]) * dj
        elif np.isinf(v):
            ninf += 1
    if n == 0 or dd == 0.0:
        return n, dd, np.nan, np.nan, ninf
    delta = s / dd
    rss = 0.0
    for j in range(y.shape[0]):
        v = y[j]
        if np.isfinite(v):
            e = (np.float64(v) - c[j]) - delta * np.float64(d[j])
            rss += e * e
    return n, dd, delta, rss, ninf


@nb.njit(cache=True, inline="always")
def _row(y2d, i, pixels, buf):
    """Row ``i`` of the stack: a view, or its masked pixels gathered into ``buf``."""
    if pixels.shape[0] == 0:
        return y2d[i]
    for j in range(buf.shape[0]):
        buf[j] = y2d[i, pixels[j]]
    return buf


# fastmath here too: inlined helpers are compiled with their caller's flags.
@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def _stats_kernel(y2d, pixels, c, d, dd, xhat, rss, ddo, n, ninf):
    """Fill the per-frame outputs for the rows of ``y2d`` (shape (m, P_all))."""
    m = y2d.shape[0]
    p = c.shape[0]
    ntasks = (m + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in nb.prange(ntasks):
        buf = np.empty(p, dtype=y2d.dtype)
        delta_w = np.empty(1, dtype=c.dtype)  # delta rounded to the row's dtype
        for i in range(t * _ROWS_PER_TASK, min((t + 1) * _ROWS_PER_TASK, m)):
            row = _row(y2d, i, pixels, buf)
            s, q = _sweep(row, c, d)
            if np.isfinite(s) and np.isfinite(q):
                delta = s / dd
                r = q - s * delta
                if not r * _CANCEL > q:
                    delta_w[0] = delta
                    r = _residual(row, c, d, delta_w[0])
                xhat[i] = 0.5 + delta
                rss[i] = r
                ddo[i] = dd
                n[i] = p
                ninf[i] = 0
            else:
                k, ddi, delta, r, ki = _masked_row(row, c, d)
                xhat[i] = 0.5 + delta
                rss[i] = r
                ddo[i] = ddi
                n[i] = k
                ninf[i] = ki


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _project(y, c, q, out):
    """out[b] = sum (y - c) q[b] in float32 blocks added into float64, for each basis row b."""
    zero = q[0, 0] - q[0, 0]
    for b in range(q.shape[0]):
        qb = q[b]
        s = 0.0
        for j0 in range(0, y.shape[0], _BLOCK):
            yb, cb, db = y[j0 : j0 + _BLOCK], c[j0 : j0 + _BLOCK], qb[j0 : j0 + _BLOCK]
            bs = zero
            for j in range(yb.shape[0]):
                bs += (yb[j] - cb[j]) * db[j]
            s += bs
        out[b] = s


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _basis_residual(y, c, q, coef, e):
    """rss = sum (y - c - q^T coef)^2, the residual formed pixel by pixel (``e``: a scratch row)."""
    zero = q[0, 0] - q[0, 0]
    for j in range(y.shape[0]):
        e[j] = y[j] - c[j]
    for b in range(q.shape[0]):
        cf = coef[b]
        qb = q[b]
        for j in range(y.shape[0]):
            e[j] -= cf * qb[j]
    r = 0.0
    for j0 in range(0, y.shape[0], _BLOCK):
        eb = e[j0 : j0 + _BLOCK]
        bq = zero
        for j in range(eb.shape[0]):
            bq += eb[j] * eb[j]
        r += bq
    return r


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def _basis_kernel(y2d, pixels, c, q, proj, rss, n, ninf):
    """Projections of each row of ``y2d`` on the orthonormal rows of ``q`` (shape (B, p)) and
    the residual sum of squares; rows with non-finite pixels get ``n = -1`` (done elsewhere)."""
    m = y2d.shape[0]
    p = c.shape[0]
    nb_ = q.shape[0]
    ntasks = (m + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in nb.prange(ntasks):
        buf = np.empty(p, dtype=y2d.dtype)
        e = np.empty(p, dtype=q.dtype)
        coef = np.empty(nb_, dtype=q.dtype)
        acc = np.empty(nb_)
        for i in range(t * _ROWS_PER_TASK, min((t + 1) * _ROWS_PER_TASK, m)):
            row = _row(y2d, i, pixels, buf)
            finite = True
            for j in range(p):
                if not np.isfinite(row[j]):
                    finite = False
                    break
            if not finite:
                n[i] = -1
                ninf[i] = 0
                rss[i] = np.nan
                for b in range(nb_):
                    proj[i, b] = np.nan
                continue
            _project(row, c, q, acc)
            for b in range(nb_):
                proj[i, b] = acc[b]
                coef[b] = acc[b]
            rss[i] = _basis_residual(row, c, q, coef, e)
            n[i] = p
            ninf[i] = 0


def _masked_basis_row(row: np.ndarray, c: np.ndarray, design: np.ndarray):
    """A row with non-finite pixels, in float64: (coefficients, Gram, rss, n, n_inf) on the
    model's design restricted to its finite pixels."""
    row = np.asarray(row, np.float64)
    ok = np.isfinite(row)
    n_inf = int(np.count_nonzero(np.isinf(row)))
    k = int(ok.sum())
    phi = design[:, ok]
    gram = phi @ phi.T
    if k <= design.shape[0] or np.linalg.matrix_rank(gram) < design.shape[0]:
        return None, gram, np.nan, k, n_inf
    r = row[ok] - c[ok]
    coef = np.linalg.solve(gram, phi @ r)
    e = r - coef @ phi
    return coef, gram, float(e @ e), k, n_inf


def _chunks(
    n_frames: int,
    frame_bytes: int,
    work_bytes: int,
    chunk_size: int | None,
    memory_limit: int | None,
    copies: bool,
) -> int:
    """Frames per chunk: ``chunk_size``, or as many as ``memory_limit`` allows, or a default."""
    if chunk_size is not None:
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return int(chunk_size)
    if memory_limit is not None:
        # In flight: the chunk being computed and the one being read (double buffering), plus
        # its converted copy when the data is not in a dtype the kernel reads directly.
        per_frame = 2 * frame_bytes + (work_bytes if copies else 0)
        return max(1, min(n_frames, int(memory_limit) // per_frame))
    # A chunk that must be converted is copied: ~32 MiB keeps that copy cache-friendly.
    # A view costs nothing, so take larger chunks and fewer parallel launches.
    target = (32 << 20) if copies else (512 << 20)
    return max(1, min(n_frames, target // max(frame_bytes, 1)))


def _check_memory_limit(memory_limit: Any) -> int | None:
    if memory_limit is None:
        return None
    try:
        value = int(memory_limit)
    except (TypeError, ValueError):
        value = 0
    if value != memory_limit or value < 1:
        raise InputError(
            f"memory_limit must be a positive number of bytes (e.g. 2**30), got {memory_limit!r}"
        )
    return value


def _mmap_of(a: Any) -> tuple[mmap.mmap, int] | None:
    """The ``mmap`` under a numpy memory map and its start address, or None."""
    mm = getattr(a, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mm, "madvise"):
        return None
    try:
        start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError):  # a closed or zero-length map
        return None
    return mm, start


def _advise(mapped: tuple[mmap.mmap, int] | None, chunk: np.ndarray, flag: int) -> None:
    """Best-effort madvise over the pages of ``chunk`` (a view of a memory map)."""
    if mapped is None or chunk.size == 0:
        return
    mm, start = mapped
    offset = chunk.ctypes.data - start
    aligned = offset - offset % mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(flag, aligned, min(chunk.nbytes + offset - aligned, len(mm) - aligned))


def _array_chunks(frames: Any, step: int) -> Iterator[np.ndarray]:
    """The chunks of a stack, each read while the previous one is computed.

    A memory map is advised ahead (WILLNEED) and released behind (DONTNEED: the pages leave the
    process's resident set, staying in the page cache), so resident memory stays about two
    chunks whatever the file size. Other lazy arrays (HDF5, zarr, TIFF pages, xarray) are read
    by a background thread, one chunk ahead.
    """
    n_frames = int(frames.shape[0])
    bounds = [(i, min(i + step, n_frames)) for i in range(0, n_frames, step)]
    if isinstance(frames, np.ndarray):
        mapped = _mmap_of(frames)
        for k, (i, j) in enumerate(bounds):
            if k + 1 < len(bounds):
                _advise(mapped, frames[slice(*bounds[k + 1])], _WILLNEED)
            chunk = frames[i:j]
            yield chunk
            _advise(mapped, chunk, _DONTNEED)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bayesmix-read") as pool:
        ahead = pool.submit(lambda i, j: np.asarray(frames[i:j]), *bounds[0])
        for k in range(len(bounds)):
            chunk = ahead.result()
            if k + 1 < len(bounds):
                ahead = pool.submit(lambda i, j: np.asarray(frames[i:j]), *bounds[k + 1])
            yield chunk


def _stream_chunks(stream: ChunkStream) -> Iterator[np.ndarray]:
    """The chunks of an iterator of arrays, the next one pulled by a thread while one computes."""
    it = iter(stream)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bayesmix-read") as pool:
        ahead = pool.submit(next, it, None)
        while (chunk := ahead.result()) is not None:
            ahead = pool.submit(next, it, None)
            yield chunk


def _as_rows(chunk: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A chunk as a contiguous (k, pixels) array the kernels read directly.

    The kernels read float32/64 and 8-64 bit integers as they are (a view of a contiguous
    stack); anything else (float16, byte-swapped, strided) costs one chunk-sized copy.
    """
    kind = chunk.dtype if chunk.dtype in _NATIVE else dtype
    return np.ascontiguousarray(chunk, dtype=kind).reshape(int(chunk.shape[0]), -1)


def _chunk_stats(chunk: np.ndarray, pixels, c, d, dd) -> tuple[np.ndarray, ...]:
    """The kernel on one chunk of frames: (xhat, rss, dd, n, n_inf), each of shape (k,)."""
    m = int(chunk.shape[0])
    chunk = _as_rows(chunk, c.dtype)
    out = (np.empty(m), np.empty(m), np.empty(m), np.empty(m, np.int64), np.empty(m, np.int64))
    _stats_kernel(chunk, pixels, c, d, dd, *out)
    return out


def _is_dask(frames: Any) -> bool:
    return type(frames).__module__.split(".")[0] == "dask" and hasattr(frames, "map_blocks")


def _pack(cols: tuple[np.ndarray, ...]) -> np.ndarray:
    """Per-frame outputs of any shape (k, ...) as one float64 array of shape (k, width)."""
    k = int(cols[0].shape[0])
    return np.hstack([np.asarray(a, np.float64).reshape(k, -1) for a in cols])


def _unpack(packed: np.ndarray, like: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The inverse of :func:`_pack`, with the shapes and dtypes of ``like`` (one chunk's)."""
    out, at = [], 0
    for a in like:
        width = int(np.prod(a.shape[1:], dtype=np.int64))
        col = packed[:, at : at + width].reshape(-1, *a.shape[1:])
        out.append(col.astype(a.dtype))
        at += width
    return tuple(out)


def _dask_pass(frames, fn, chunk_size, memory_limit) -> tuple[np.ndarray, ...]:
    """The pass as a dask computation: each block of whole frames gives its statistics where it
    lives (a worker of a ``dask.distributed`` cluster, if one is active); only the O(N)
    statistics come back."""
    ndim = frames.ndim
    frame_bytes = int(np.prod(frames.shape[1:])) * frames.dtype.itemsize
    rows: Any = "auto"
    if chunk_size is not None or memory_limit is not None:
        rows = _chunks(int(frames.shape[0]), frame_bytes, frame_bytes, chunk_size, memory_limit,
                       True)  # fmt: skip
    elif all(len(ch) == 1 for ch in frames.chunks[1:]):
        rows = frames.chunks[0]  # already whole frames: keep the user's blocks
    frames = frames.rechunk({0: rows, **{k: -1 for k in range(1, ndim)}})
    # The output layout, from one frame (cheap: the first block's first row).
    like = fn(np.asarray(frames[:1]))
    width = _pack(like).shape[1]
    out = frames.map_blocks(
        lambda block: _pack(fn(block)),
        drop_axis=list(range(1, ndim)), new_axis=1, chunks=(frames.chunks[0], (width,)),
        dtype=np.float64, meta=np.empty((0, width)),
    ).compute()  # fmt: skip
    return _unpack(out, like)


def _run_pass(
    stack: Stack,
    fn: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    *,
    chunk_size: int | None,
    memory_limit: int | None,
    progress: Callable[[int], object] | None,
    on_device: Any = None,
) -> tuple[np.ndarray, ...]:
    """``fn`` (chunk of frames -> per-frame arrays) over the whole stack, chunk by chunk, the
    next chunk read while one is computed; the per-frame arrays concatenated. With
    ``on_device`` (a JAX device), ``fn`` is given device arrays (the JAX pass)."""
    memory_limit = _check_memory_limit(memory_limit)
    frames = stack.frames
    if stack.scale != 1.0:
        fn = _scaled(fn, stack.scale, stack.dtype)
    if on_device is None and _is_dask(frames):
        return _dask_pass(frames, fn, chunk_size, memory_limit)
    if on_device is not None:
        frame_bytes = int(np.prod(stack.frame_shape)) * np.dtype(frames.dtype).itemsize
        step = _chunks(int(frames.shape[0]), frame_bytes, frame_bytes, chunk_size, memory_limit,
                       True) if not isinstance(frames, ChunkStream) else 0  # fmt: skip
        source = _stream_chunks(frames) if isinstance(frames, ChunkStream) else frames
        # (chunk, frames in it that are real): device chunks are padded, host ones are not.
        chunks: Iterator[tuple[Any, int]] = device_chunks(source, step, on_device)
    else:
        if isinstance(frames, ChunkStream):
            host: Iterator[np.ndarray] = _stream_chunks(frames)
        else:
            p_all = int(np.prod(stack.frame_shape))
            native = isinstance(frames, np.ndarray) and frames.dtype in _NATIVE
            copies = not (native and frames.flags.c_contiguous) or stack.scale != 1.0
            step = _chunks(int(frames.shape[0]), p_all * frames.dtype.itemsize,
                           p_all * stack.dtype.itemsize, chunk_size, memory_limit,
                           copies)  # fmt: skip
            host = _array_chunks(frames, step)
        chunks = ((chunk, int(chunk.shape[0])) for chunk in host)
        # OpenBLAS threads still spinning after the user's last numpy call would halve the pass.
        quiet_blas_threads(int(np.prod(stack.frame_shape)) * int(frames.shape[0] or 0)
                           * np.dtype(frames.dtype).itemsize)  # fmt: skip
    parts = []
    for chunk, k in chunks:
        out = fn(chunk)
        parts.append(out if k == len(out[0]) else tuple(a[:k] for a in out))
        if progress is not None:
            progress(k)
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _scaled(fn: Callable[[Any], Any], scale: float, dtype: np.dtype) -> Callable[[Any], Any]:
    """``fn`` on each chunk divided by ``scale`` (a power of two: exact), in the pass's dtype."""
    inv = float(1.0 / scale)

    def scaled_fn(chunk: Any) -> Any:
        if is_jax_array(chunk):
            return fn(chunk * jnp.asarray(inv, chunk.dtype))
        return fn(np.multiply(chunk, dtype.type(inv), dtype=dtype, casting="unsafe"))

    return scaled_fn


@singledispatch
def in_data_units(stats: Any, scale: float) -> Any:
    """Statistics of frames / ``scale`` (and references / ``scale``) as those of the frames
    themselves: exact (``scale`` is a power of two), in float64."""
    raise NotImplementedError(f"no units for {type(stats).__name__}")


@in_data_units.register
def _(stats: FrameStats, scale: float) -> FrameStats:
    s2 = scale * scale
    return stats._replace(rss=np.asarray(stats.rss) * s2, dd=np.asarray(stats.dd) * s2)


@in_data_units.register
def _(stats: BasisStats, scale: float) -> BasisStats:
    # The weights are dimensionless; projections, background coefficients and their
    # sensitivity carry the data's unit, sums of squares its square.
    return stats._replace(
        z=np.asarray(stats.z) * scale, chol=np.asarray(stats.chol) * scale,
        bg=np.asarray(stats.bg) * scale, bg_sens=np.asarray(stats.bg_sens) * scale,
        rss=np.asarray(stats.rss) * (scale * scale),
    )  # fmt: skip


def pass_device(stack: Stack, device: str | None) -> Any:
    """The JAX device of the statistics pass, or None for the numba pass on the host: frames
    that are a ``jax.Array`` stay where they are; ``device="gpu"`` sends any frames to the GPU."""
    if is_jax_array(stack.frames):
        return next(iter(stack.frames.devices()))
    if device == "gpu":
        from bayesmix._devices import platform_devices

        return platform_devices(device)[0]
    return None


def _check_pass(n: np.ndarray, ninf: np.ndarray, stacklevel: int) -> None:
    """Errors for frames with no finite pixel, a warning for infinite pixels."""
    empty = np.flatnonzero(n == 0)
    if empty.size:
        raise InputError(
            f"{empty.size} frame(s) have no finite pixel (all NaN/Inf), e.g. frame(s) "
            f"{empty[:5].tolist()}; drop them from the stack or fill them"
        )
    n_inf = int(ninf.sum())
    if n_inf:
        warnings.warn(
            f"{n_inf} pixel(s) in {int(np.count_nonzero(ninf))} frame(s) are +/-Inf and were left "
            "out of those frames, like NaN pixels; check the data for saturation or a bad "
            "log/division upstream",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )


def stats_from_stack(
    stack: Stack,
    *,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    stacklevel: int = 2,
    progress: Callable[[int], object] | None = None,
    device: str | None = None,
) -> FrameStats:
    """The statistics pass over a validated :class:`~bayesmix._io.Stack`.

    ``progress``, if given, is called with the number of frames of each chunk done (a progress
    bar's ``update``). ``device`` as in :func:`pass_device`.
    """
    stack = in_units(stack)
    dt = stack.dtype
    d_full = stack.ref_a - stack.ref_b
    d = d_full.astype(dt)
    c = (0.5 * (stack.ref_a + stack.ref_b)).astype(dt)
    dd = float(np.dot(d.astype(np.float64), d.astype(np.float64)))
    pixels = stack.pixels if stack.pixels is not None else np.empty(0, np.int64)
    pixels = np.ascontiguousarray(pixels, dtype=np.int64)
    dev = pass_device(stack, device)
    kernel = _chunk_stats if dev is None else jax_frame_kernel
    xhat, rss, ddo, n, ninf = _run_pass(
        stack, lambda chunk: kernel(chunk, pixels, c, d, dd),
        chunk_size=chunk_size, memory_limit=memory_limit, progress=progress, on_device=dev,
    )  # fmt: skip
    _check_pass(n, ninf, stacklevel)
    flat = np.flatnonzero(~(ddo > 0))
    if flat.size:
        raise InputError(
            f"{flat.size} frame(s) are finite only where ref_a == ref_b, so their weight is not "
            f"identifiable, e.g. frame(s) {flat[:5].tolist()}"
        )
    stats = FrameStats(xhat=xhat, rss=rss, dd=ddo, n=n)
    return stats if stack.scale == 1.0 else in_data_units(stats, stack.scale)


class _Basis(NamedTuple):
    """The model's basis, orthonormalised once (float64 algebra shared by every chunk)."""

    q: np.ndarray  #: (B, p) orthonormal rows spanning the design, in the pass's dtype
    c: np.ndarray  #: (p,) centre (A + B) / 2, in the pass's dtype
    r: np.ndarray  #: (B, B) upper triangular: design^T = Q R
    design: np.ndarray  #: (B, p) float64, background first, then A, B
    c64: np.ndarray  #: (p,) float64 centre
    n_bg: int
    centre: float  #: the centre's weight on each reference: 1 / K, or 0 with gain
    bg_unit: float = 1.0  #: the background rows of ``design`` are the basis times this

    @property
    def n_refs(self) -> int:
        """K, the number of references."""
        return int(self.design.shape[0]) - self.n_bg


def _make_basis(stack: Stack, model: Any) -> _Basis:
    from bayesmix._model import check_design

    refs = stack.refs
    k = refs.shape[0]
    design = check_design(model, refs, stack.frame_shape, stack.pixels)
    # The background rows brought to the references' level: a basis of unit images against
    # references of 1e-20 would make R as ill-conditioned as their ratio.
    bg_unit = level(refs)
    design[:-k] *= bg_unit
    q, r = np.linalg.qr(design.T)
    # Centring on the references' mean removes the frame's common level when the references
    # are in the data's units (g = 1). With a gain the references may be in any units: centring
    # on them could cost the data its precision, so the frames are projected as they are.
    centre = 0.0 if model.gain else 1.0 / k
    c64 = centre * refs.sum(axis=0)
    dt = stack.dtype
    return _Basis(np.ascontiguousarray(q.T, dt), c64.astype(dt), r, design, c64,
                  design.shape[0] - k, centre, bg_unit)  # fmt: skip


def _reduce_rows(theta: np.ndarray, gram: np.ndarray, n_bg: int) -> tuple[np.ndarray, ...]:
    """Model-basis coefficients and Gram matrices (k, B), (k, B, B) -> w, z, chol, bg, bg_sens."""
    p = n_bg
    w, bg = theta[:, p:], theta[:, :p]
    gww, gcc, gcw = gram[:, p:, p:], gram[:, :p, :p], gram[:, :p, p:]
    if p:
        sens = -np.linalg.solve(gcc, gcw)  # (k, P, K)
        schur = gww + np.einsum("kpi,kpj->kij", gcw, sens)
    else:
        sens = np.zeros((len(theta), 0, w.shape[1]))
        schur = gww
    chol = np.swapaxes(np.linalg.cholesky(schur), -1, -2)  # upper: chol^T chol = schur
    z = np.einsum("kij,kj->ki", chol, w)
    return w, z, chol, bg, sens


def _basis_chunk(chunk: Any, pixels: np.ndarray, basis: _Basis,
                 jax_pass: bool = False) -> tuple[np.ndarray, ...]:  # fmt: skip
    """The basis kernel on one chunk: (w, z, chol, bg, bg_sens, rss, n, n_inf)."""
    m = int(chunk.shape[0])
    nb_ = basis.q.shape[0]
    p = basis.n_bg
    if jax_pass:
        proj, rss, n, ninf = jax_basis_kernel(chunk, pixels, basis.c, basis.q)

        def row_of(i: int) -> np.ndarray:  # one row to the host, for the float64 masked path
            return np.asarray(jax.device_get(chunk[i])).reshape(-1)
    else:
        rows = _as_rows(chunk, basis.c.dtype)
        proj, rss = np.empty((m, nb_)), np.empty(m)
        n, ninf = np.empty(m, np.int64), np.empty(m, np.int64)
        _basis_kernel(rows, pixels, basis.c, basis.q, proj, rss, n, ninf)

        def row_of(i: int) -> np.ndarray:
            return rows[i]
    theta_c = np.zeros(nb_)
    theta_c[p:] = basis.centre
    r = basis.r
    kr = basis.n_refs
    w = np.empty((m, kr))
    z = np.empty((m, kr))
    chol = np.empty((m, kr, kr))
    bg = np.empty((m, p))
    sens = np.empty((m, p, kr))
    ok = n >= 0
    if ok.any():
        # Projections on an orthonormal basis: the Gram matrix is R^T R and the Schur complement
        # of the background is R22^T R22, so z comes straight from the projections.
        theta = np.linalg.solve(r, proj[ok].T).T + theta_c
        r22 = r[p:, p:]
        w[ok] = theta[:, p:]
        z[ok] = proj[ok, p:] + r22 @ theta_c[p:]
        chol[ok] = r22
        bg[ok] = theta[:, :p]
        sens[ok] = -np.linalg.solve(r[:p, :p], r[:p, p:]) if p else np.zeros((p, kr))
    for i in np.flatnonzero(~ok):
        row = row_of(i) if pixels.size == 0 else row_of(i)[pixels]
        coef, gram, rss_i, k, k_inf = _masked_basis_row(row, basis.c64, basis.design)
        n[i], ninf[i], rss[i] = k, k_inf, rss_i
        if coef is None:
            n[i] = -k - 1 if k else 0  # too few finite pixels for the model: reported below
            w[i] = z[i] = np.nan
            chol[i] = np.eye(kr)
            bg[i] = np.nan
            sens[i] = 0.0
            continue
        theta = (coef + theta_c)[None]
        out = _reduce_rows(theta, gram[None], p)
        w[i], z[i], chol[i], bg[i], sens[i] = (a[0] for a in out)
    return w, z, chol, bg, sens, rss, n, ninf


def basis_stats_from_stack(
    stack: Stack,
    model: Any,
    *,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    stacklevel: int = 2,
    progress: Callable[[int], object] | None = None,
    device: str | None = None,
) -> BasisStats:
    """The statistics pass on the model's basis [background, A, B] (see :class:`BasisStats`).

    One fused pass per chunk: the projections of each frame (centred on (A + B) / 2) on an
    orthonormal basis of the model's span, then the residual formed pixel by pixel in a second
    sweep over the cache-resident row. Frames with non-finite pixels are solved on their own
    finite pixels in float64.
    """
    stack = in_units(stack, from_frames=model.gain)
    basis = _make_basis(stack, model)
    pixels = stack.pixels if stack.pixels is not None else np.empty(0, np.int64)
    pixels = np.ascontiguousarray(pixels, dtype=np.int64)
    dev = pass_device(stack, device)
    w, z, chol, bg, sens, rss, n, ninf = _run_pass(
        stack, lambda chunk: _basis_chunk(chunk, pixels, basis, jax_pass=dev is not None),
        chunk_size=chunk_size, memory_limit=memory_limit, progress=progress, on_device=dev,
    )  # fmt: skip
    _check_pass(n, ninf, stacklevel)
    few = np.flatnonzero(n < 0)
    if few.size:
        raise InputError(
            f"{few.size} frame(s) have too few finite pixels for the model's "
            f"{basis.design.shape[0]} linear terms (or only pixels where the terms are "
            f"dependent), e.g. frame(s) {few[:5].tolist()}; drop them or use a simpler background"
        )
    bg, sens = bg * basis.bg_unit, sens * basis.bg_unit  # coefficients of the basis itself
    stats = BasisStats(w=w, z=z, chol=chol, bg=bg, bg_sens=sens, rss=rss, n=n)
    return stats if stack.scale == 1.0 else in_data_units(stats, stack.scale)


def reduce_stats(basis: BasisStats, *, gain: bool) -> FrameStats | GainStats | SimplexStats:
    """The per-frame statistics the inference reads, from the basis statistics.

    K >= 3 references: :class:`SimplexStats` (the weights stay K-vectors; with a gain they are
    ``g x``).

    Without gain, ``w = (x, 1 - x)``: the likelihood is a Gaussian factor in x, i.e. the
    :class:`FrameStats` of the plain model with ``n`` reduced by the background terms:

    .. math::

        \\mathrm{dd} = \\lVert M u\\rVert^2, \\quad
        \\hat x = \\frac{(M u) \\cdot t}{\\mathrm{dd}}, \\quad
        \\mathrm{rss}' = \\mathrm{rss} + \\lVert t - \\hat x M u\\rVert^2,

    with ``u = (1, -1)`` and ``t = z - M (0, 1)``. With gain, :class:`GainStats`.
    """
    chol = np.asarray(basis.chol)
    dof = np.asarray(basis.n, np.int64) - basis.n_background
    if basis.n_refs > 2:
        return SimplexStats(w=np.asarray(basis.w), chol=chol, rss=np.asarray(basis.rss), n=dof)
    m1 = np.einsum("kij,j->ki", chol, np.array([1.0, -1.0]))
    m0 = chol[:, :, 1]
    if gain:
        return GainStats(z=np.asarray(basis.z), m0=m0, m1=m1, rss=np.asarray(basis.rss), n=dof)
    t = np.asarray(basis.z) - m0
    dd = np.sum(m1 * m1, axis=1)
    xhat = np.sum(m1 * t, axis=1) / dd
    e = t - xhat[:, None] * m1
    return FrameStats(xhat=xhat, rss=np.asarray(basis.rss) + np.sum(e * e, axis=1), dd=dd, n=dof)


def frame_stats(
    frames: Any,
    ref_a: Any,
    ref_b: Any,
    *more_refs: Any,
    mask: Any = None,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    background: Any = None,
    gain: bool = False,
    spectral_axis: int | None = None,
    device: str | None = None,
) -> FrameStats | BasisStats:
    """Per-frame sufficient statistics of a frame stack, in one pass over the pixels.

    Parameters
    ----------
    frames : array, shape (N, *S), or iterator of arrays, shape (k, *S)
        The stack: N frames of shape S, e.g. (N, H, W), (N, H, W, C) or (N, P) for spectra.
        Any sliceable array works (numpy, memory map, HDF5/zarr dataset, xarray, dask); it is
        read chunk by chunk, the next chunk while the current one is computed. An iterator
        (e.g. a generator) of chunks is consumed once, for stacks that arrive in pieces.
        Integer images are converted to float chunk by chunk.
        NaN pixels are left out of their frame (so are +/-Inf, with a warning).
    ref_a, ref_b : array, shape S
        The two reference frames; ``x`` is the weight of ``ref_a``.
    *more_refs : array, shape S
        More references (K >= 3): the pass then projects on the basis of all K and returns
        :class:`BasisStats`.
    mask : bool array, shape S, optional
        Pixels to use (True keeps a pixel). Default: all.
    chunk_size : int, optional
        Frames per chunk; default about 32 MiB of frames (512 MiB for a contiguous array,
        which is read in place).
    memory_limit : int, optional
        Bytes of frame data in memory at once (the chunk computed, the chunk being read ahead,
        and a converted copy if any); sets the chunk size when ``chunk_size`` is not given.
        A memory-mapped ``.npy`` then keeps a resident set of about ``memory_limit`` plus
        O(N) statistics, however large the file.
    background, gain, spectral_axis
        The model (see :func:`bayesmix.fit_map`). With a background or gain the pass projects
        each frame on the basis [background, A, B] and returns :class:`BasisStats`; pass the
        same ``background`` and ``gain`` to :func:`bayesmix.fit_map_stats`.
    device : {'cpu', 'gpu'}, optional
        'gpu' runs the pass on the GPU (in JAX). Frames that are a ``jax.Array`` are read on
        their own device, in JAX, with no host copy; otherwise the pass is numba's on the CPU.

    Returns
    -------
    FrameStats or BasisStats
        ``xhat``, ``rss``, ``dd``, ``n``, each of shape (N,), for the two-reference model.

    Notes
    -----
    With :math:`d = A - B` and :math:`r_i = y_i - B` over the valid pixels of frame i,

    .. math::

        \\hat x_i = \\frac{r_i \\cdot d}{d \\cdot d}, \\qquad
        \\mathrm{rss}_i = \\lVert r_i - \\hat x_i d \\rVert^2 .

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix import frame_stats
    >>> a, b = np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 1.0])
    >>> st = frame_stats(np.stack([0.25 * a + 0.75 * b]), a, b)
    >>> float(st.xhat[0]), float(st.rss[0]), float(st.dd[0]), int(st.n[0])
    (0.25, 0.0, 6.0, 3)
    """
    from bayesmix._io import spectral_frames
    from bayesmix._model import make_model

    model = make_model(background=background, gain=gain, n_refs=2 + len(more_refs))
    frames, _ = spectral_frames(frames, spectral_axis, ref_a)
    stack = prepare(frames, ref_a, ref_b, mask, more_refs)
    if model.is_plain:
        return stats_from_stack(stack, chunk_size=chunk_size, memory_limit=memory_limit,
                                device=device)  # fmt: skip
    return basis_stats_from_stack(stack, model, chunk_size=chunk_size, memory_limit=memory_limit,
                                  device=device)  # fmt: skip


def bucket_size(n: int) -> int:
    """Smallest m * 2^e >= n with 8 <= m < 16 (at most 12.5% padding).

    Jitted functions see padded lengths only, so stacks of similar size share one compilation.
    """
    n = max(int(n), 16)
    e = max(n.bit_length() - 4, 0)
    return -(-n // (1 << e)) * (1 << e)


_INERT = {
    # Padding frames: n = 0 (no pixels), so they add nothing to any sum over frames, and values
    # that keep every per-frame formula finite.
    "FrameStats": {"xhat": 0.5, "rss": 0.0, "dd": 1.0, "n": 0.0},
    "GainStats": {"z": 0.0, "m0": (1.0, 0.0), "m1": (0.0, 1.0), "rss": 0.0, "n": 0.0},
    "SmoothedStats": {"m": 0.5, "sd": 1.0},
    "PerFrameStats": {"xhat": 0.5, "rss": 1.0, "dd": 1.0, "n": 3.0, "s_mu": 0.0, "s_tau": 1.0},
    "SimplexStats": {
        "w": lambda shape: np.full(shape, 1.0 / shape[-1]),
        "chol": lambda shape: np.broadcast_to(np.eye(shape[-1]), shape),
        "rss": 0.0,
        "n": 0.0,
    },
}


def pad_stats(stats: Any, size: int) -> tuple[Any, np.ndarray]:
    """Pad to ``size`` frames with inert frames (n = 0); also return the validity mask."""
    n = stats.n_frames
    extra = size - n
    valid = np.zeros(size, bool)
    valid[:n] = True
    fill = _INERT[type(stats).__name__]

    def pad(name):
        a = np.asarray(getattr(stats, name), np.float64)
        shape = (extra, *a.shape[1:])
        value = fill[name](shape) if callable(fill[name]) else fill[name]
        tail = np.broadcast_to(np.asarray(value, np.float64), shape)
        return np.concatenate([a, tail])

    return type(stats)(*(pad(f) for f in stats._fields)), valid
