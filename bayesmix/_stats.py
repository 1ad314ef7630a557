"""One pass over the pixels: the per-frame sufficient statistics.

Writing ``d = A - B`` and ``r = y - B``, a frame's Gaussian likelihood depends on its pixels only
through four numbers (see :mod:`bayesmix._likelihood`)::

    xhat = (r . d) / (d . d)          least-squares weight of A
    rss  = ||r - xhat d||^2           residual sum of squares at xhat
    dd   = d . d                      over the frame's valid pixels
    n    = number of valid pixels

The pass is a fused, multithreaded kernel (numba) that reads each frame once. It works on
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
from typing import Any, NamedTuple

import numba as nb
import numpy as np

from bayesmix._io import ChunkStream, Stack, prepare

__all__ = ["FrameStats", "bucket_size", "frame_stats", "pad_stats", "stats_from_stack"]

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


# fastmath here too: inlined helpers are compiled with their caller's flags.
@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def _stats_kernel(y2d, pixels, c, d, dd, xhat, rss, ddo, n, ninf):
    """Fill the per-frame outputs for the rows of ``y2d`` (shape (m, P_all))."""
    m = y2d.shape[0]
    p = c.shape[0]
    gather = pixels.shape[0] > 0
    ntasks = (m + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in nb.prange(ntasks):
        buf = np.empty(p, dtype=y2d.dtype)
        delta_w = np.empty(1, dtype=c.dtype)  # delta rounded to the row's dtype
        for i in range(t * _ROWS_PER_TASK, min((t + 1) * _ROWS_PER_TASK, m)):
            if gather:
                for j in range(p):
                    buf[j] = y2d[i, pixels[j]]
                row = buf
            else:
                row = y2d[i]
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
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
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
        raise ValueError(
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


def _chunk_stats(chunk: np.ndarray, pixels, c, d, dd) -> tuple[np.ndarray, ...]:
    """The kernel on one chunk of frames: (xhat, rss, dd, n, n_inf), each of shape (k,)."""
    # The kernel reads float32/64 and 8-64 bit integers as they are (a view of a contiguous
    # stack); anything else (float16, byte-swapped, strided) costs one chunk-sized copy.
    m = int(chunk.shape[0])
    kind = chunk.dtype if chunk.dtype in _NATIVE else c.dtype
    chunk = np.ascontiguousarray(chunk, dtype=kind).reshape(m, -1)
    out = (np.empty(m), np.empty(m), np.empty(m), np.empty(m, np.int64), np.empty(m, np.int64))
    _stats_kernel(chunk, pixels, c, d, dd, *out)
    return out


def _is_dask(frames: Any) -> bool:
    return type(frames).__module__.split(".")[0] == "dask" and hasattr(frames, "map_blocks")


def _block_stats(block: np.ndarray, pixels, c, d, dd) -> np.ndarray:
    """:func:`_chunk_stats` of one dask block, as one float64 array of shape (k, 5)."""
    return np.stack([col.astype(np.float64) for col in _chunk_stats(block, pixels, c, d, dd)], 1)


def _dask_stats(frames, pixels, c, d, dd, chunk_size, memory_limit) -> tuple[np.ndarray, ...]:
    """The pass as a dask computation: each block of whole frames gives its statistics where it
    lives (a worker of a ``dask.distributed`` cluster, if one is active); only the (N, 5)
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
    out = frames.map_blocks(
        _block_stats, pixels, c, d, dd,
        drop_axis=list(range(1, ndim)), new_axis=1, chunks=(frames.chunks[0], (5,)),
        dtype=np.float64, meta=np.empty((0, 5)),
    ).compute()  # fmt: skip
    n, ninf = out[:, 3].astype(np.int64), out[:, 4].astype(np.int64)
    return out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy(), n, ninf


def stats_from_stack(
    stack: Stack,
    *,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    stacklevel: int = 2,
    progress: Callable[[int], object] | None = None,
) -> FrameStats:
    """The statistics pass over a validated :class:`~bayesmix._io.Stack`.

    ``progress``, if given, is called with the number of frames of each chunk done (a progress
    bar's ``update``).
    """
    memory_limit = _check_memory_limit(memory_limit)
    dt = stack.dtype
    d_full = stack.ref_a - stack.ref_b
    d = d_full.astype(dt)
    c = (0.5 * (stack.ref_a + stack.ref_b)).astype(dt)
    dd = float(np.dot(d.astype(np.float64), d.astype(np.float64)))
    pixels = stack.pixels if stack.pixels is not None else np.empty(0, np.int64)
    pixels = np.ascontiguousarray(pixels, dtype=np.int64)

    frames = stack.frames
    p_all = int(np.prod(stack.frame_shape))
    if _is_dask(frames):
        xhat, rss, ddo, n, ninf = _dask_stats(frames, pixels, c, d, dd, chunk_size, memory_limit)
    else:
        if isinstance(frames, ChunkStream):
            chunks: Iterator[np.ndarray] = _stream_chunks(frames)
        else:
            native = isinstance(frames, np.ndarray) and frames.dtype in _NATIVE
            copies = not (native and frames.flags.c_contiguous)
            itemsize = frames.dtype.itemsize
            step = _chunks(int(frames.shape[0]), p_all * itemsize, p_all * dt.itemsize,
                           chunk_size, memory_limit, copies)  # fmt: skip
            chunks = _array_chunks(frames, step)
        parts = []
        for chunk in chunks:
            parts.append(_chunk_stats(chunk, pixels, c, d, dd))
            if progress is not None:
                progress(int(chunk.shape[0]))
        xhat, rss, ddo, n, ninf = (np.concatenate(col) for col in zip(*parts, strict=True))

    empty = np.flatnonzero(n == 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} frame(s) have no finite pixel (all NaN/Inf), e.g. frame(s) "
            f"{empty[:5].tolist()}; drop them from the stack or fill them"
        )
    flat = np.flatnonzero(~(ddo > 0))
    if flat.size:
        raise ValueError(
            f"{flat.size} frame(s) are finite only where ref_a == ref_b, so their weight is not "
            f"identifiable, e.g. frame(s) {flat[:5].tolist()}"
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
    return FrameStats(xhat=xhat, rss=rss, dd=ddo, n=n)


def frame_stats(
    frames: Any,
    ref_a: Any,
    ref_b: Any,
    *,
    mask: Any = None,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
) -> FrameStats:
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

    Returns
    -------
    FrameStats
        ``xhat``, ``rss``, ``dd``, ``n``, each of shape (N,).

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
    return stats_from_stack(
        prepare(frames, ref_a, ref_b, mask), chunk_size=chunk_size, memory_limit=memory_limit
    )


def bucket_size(n: int) -> int:
    """Smallest m * 2^e >= n with 8 <= m < 16 (at most 12.5% padding).

    Jitted functions see padded lengths only, so stacks of similar size share one compilation.
    """
    n = max(int(n), 16)
    e = max(n.bit_length() - 4, 0)
    return -(-n // (1 << e)) * (1 << e)


def pad_stats(stats: FrameStats, size: int) -> tuple[FrameStats, np.ndarray]:
    """Pad to ``size`` frames with inert frames (n = 0, dd = 1); also return the validity mask."""
    n = stats.n_frames
    extra = size - n
    valid = np.zeros(size, bool)
    valid[:n] = True

    def pad(a, value, dtype):
        return np.concatenate([np.asarray(a, dtype), np.full(extra, value, dtype)])

    padded = FrameStats(
        xhat=pad(stats.xhat, 0.5, np.float64),
        rss=pad(stats.rss, 0.0, np.float64),
        dd=pad(stats.dd, 1.0, np.float64),
        n=pad(stats.n, 0, np.float64),
    )
    return padded, valid
