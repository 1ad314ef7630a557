"""The statistics pass with per-pixel weights (inverse variances): variance maps, counts, outliers.

With pixel weights :math:`W_i = \\mathrm{diag}(w_{ip})` (the inverse of each pixel's variance
relative to sigma^2), frame i's Gaussian likelihood depends on its pixels only through

.. math::

    G_i = \\Phi W_i \\Phi^T, \\quad p_i = \\Phi W_i y_i, \\quad \\beta_i = G_i^{-1} p_i, \\quad
    \\mathrm{rss}_i = (y_i - \\Phi^T \\beta_i)^T W_i (y_i - \\Phi^T \\beta_i),

with :math:`\\Phi` the model's basis [background, references]. These reduce to the same
:class:`~bayesmix._stats.BasisStats` as the unweighted pass, so every inference path runs on
them unchanged. A weight map shared by all frames gives one Gram matrix for all complete
frames; weights per frame (a variance per frame, or re-weighting from the current fit for
Poisson counts and Student-t outliers) give each frame its own, built as one matrix product
per block of frames. Everything is float64 and the residual is formed pixel by pixel (no
``q - p^T beta`` cancellation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba as nb
import numpy as np

from bayesmix._errors import InputError
from bayesmix._io import ChunkStream, Stack
from bayesmix._stats import (
    BasisStats,
    _as_rows,
    _check_pass,
    _is_dask,
    _reduce_rows,
    _run_pass,
)

__all__ = ["Weigher", "weighted_stats"]

_BLOCK_VALUES = 1 << 21  # float64 values per block of frames (16 MiB per temporary)

#: ``weigher(start, y, ok, mean) -> w``: pixel weights (m, n) for frames ``start..start+m`` with
#: their pixels ``y`` (m, n) (0 where not ``ok``) and the current fit's ``mean`` (or None).
Weigher = Callable[[int, np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


@nb.njit(cache=True, inline="always")
def _chol_solve(g, rhs, out):
    """Solve g x = rhs (g symmetric positive definite, tiny) in place by Cholesky; False when g
    is singular to rounding."""
    k = g.shape[0]
    scale = 0.0
    for b in range(k):
        scale = max(scale, abs(g[b, b]))
    for b in range(k):
        for c in range(b + 1):
            acc = g[b, c]
            for j in range(c):
                acc -= g[b, j] * g[c, j]
            if b == c:
                if not acc > 1e-12 * scale:
                    return False
                g[b, b] = np.sqrt(acc)
            else:
                g[b, c] = acc / g[c, c]
    for b in range(k):
        acc = rhs[b]
        for j in range(b):
            acc -= g[b, j] * out[j]
        out[b] = acc / g[b, b]
    for b in range(k - 1, -1, -1):
        acc = out[b]
        for j in range(b + 1, k):
            acc -= g[j, b] * out[j]
        out[b] = acc / g[b, b]
    return True


@nb.njit(parallel=True, cache=True, nogil=True)
def _weighted_kernel(y2d, w2d, lw2d, design, theta, gram, rss, n, logw, ninf):
    """Per frame: the weighted Gram matrix and projections in one sweep, the coefficients, then
    the weighted residual in a second sweep over the cache-resident row."""
    m, p = y2d.shape
    k = design.shape[0]
    shared = w2d.shape[0] == 1
    for i in nb.prange(m):
        wi = w2d[0] if shared else w2d[i]
        li = lw2d[0]  # log weights of a shared map (computed once); else logged here
        g = np.zeros((k, k))
        pr = np.zeros(k)
        cnt = 0
        n_inf = 0
        lsum = 0.0
        for q in range(p):
            v = np.float64(y2d[i, q])
            if not np.isfinite(v):
                if not np.isnan(v):
                    n_inf += 1
                continue
            ww = wi[q]
            if not (ww > 0.0 and ww < np.inf):
                continue
            cnt += 1
            lsum += li[q] if shared else np.log(ww)
            for b in range(k):
                t = ww * design[b, q]
                pr[b] += t * v
                for c in range(b + 1):
                    g[b, c] += t * design[c, q]
        for b in range(k):
            for c in range(b + 1):
                gram[i, b, c] = g[b, c]
                gram[i, c, b] = g[b, c]
        ninf[i] = n_inf
        logw[i] = lsum
        coef = np.zeros(k)
        if cnt <= k or not _chol_solve(g, pr, coef):
            n[i] = -cnt - 1 if cnt > 0 else 0
            rss[i] = 0.0
            for b in range(k):
                theta[i, b] = 0.0
            continue
        n[i] = cnt
        for b in range(k):
            theta[i, b] = coef[b]
        acc = 0.0
        for q in range(p):
            v = np.float64(y2d[i, q])
            ww = wi[q]
            if not (np.isfinite(v) and ww > 0.0 and ww < np.inf):
                continue
            r = v
            for b in range(k):
                r -= coef[b] * design[b, q]
            acc += ww * r * r
        rss[i] = acc


def _solve_block(y, w, design, n_bg):
    """Coefficients, Gram matrices, weighted rss and log-weights of one block of frames."""
    m = len(y)
    k = design.shape[0]
    w = np.ascontiguousarray(w, np.float64)
    lw = np.zeros((1, 0))
    if w.shape[0] == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            lw = np.log(w)
    theta, gram = np.empty((m, k)), np.empty((m, k, k))
    rss, logw = np.empty(m), np.empty(m)
    n, ninf = np.empty(m, np.int64), np.empty(m, np.int64)
    _weighted_kernel(y, w, lw, design, theta, gram, rss, n, logw, ninf)
    bad = n <= 0
    gram[bad] = np.eye(k)
    if n_bg:
        logw = logw - np.linalg.slogdet(gram[:, :n_bg, :n_bg])[1]
    return theta, gram, rss, n, logw, ninf


def weighted_stats(
    stack: Stack,
    design: np.ndarray,
    n_bg: int,
    weigher: Weigher,
    *,
    fitted: np.ndarray | None = None,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    stacklevel: int = 2,
) -> tuple[BasisStats, np.ndarray]:
    """One pass of weighted statistics over ``stack``.

    Returns the :class:`BasisStats` of the weighted frames and, per frame, the log-likelihood
    offset from the weighted to the original data: :math:`\\tfrac12 \\sum_p \\log w_{ip}` (the
    Jacobian of the whitening) minus :math:`\\tfrac12 \\log\\det G_{cc}` (the background's flat
    prior integrated out).

    Parameters
    ----------
    stack : Stack
        The validated frames.
    design : array, shape (B, n)
        The model's basis on the selected pixels, background first (``check_design``).
    n_bg : int
        P, the number of background rows of ``design``.
    weigher : callable
        Pixel weights per block of frames (see :data:`Weigher`).
    fitted : array, shape (N, B), optional
        The current fit's coefficients on ``design``: the block's fitted mean is passed to
        ``weigher``.
    """
    frames = stack.frames
    if _is_dask(frames) and (fitted is not None or getattr(weigher, "per_frame", True)):
        raise InputError(
            "per-frame pixel weights (a variance per frame, Poisson or Student-t noise) are not "
            "supported for dask arrays yet; compute the stack (np.asarray) or use a memory map"
        )
    pixels = stack.pixels
    state = {"start": 0}

    def chunk_fn(chunk: np.ndarray) -> tuple[np.ndarray, ...]:
        start = state["start"]
        m = int(chunk.shape[0])
        state["start"] = start + m
        rows = _as_rows(chunk, np.dtype(np.float64))
        if pixels is not None:
            rows = np.ascontiguousarray(rows[:, pixels])
        step = m if fitted is None else max(1, _BLOCK_VALUES // max(rows.shape[1], 1))
        out = []
        for i in range(0, m, step):
            y = rows[i : i + step]
            mean = None if fitted is None else fitted[start + i : start + i + len(y)] @ design
            if fitted is None and getattr(weigher, "per_frame", True) is False:
                w = np.asarray(weigher(start + i, y, None, None), np.float64)[None, :]
            else:
                finite = np.isfinite(y)
                w = weigher(start + i, np.where(finite, y, 0.0), finite, mean)
                w = np.broadcast_to(w, y.shape)
            out.append(_solve_block(y, w, design, n_bg))
        return tuple(np.concatenate(col) for col in zip(*out, strict=True))

    theta, gram, rss, n, offset, ninf = _run_pass(
        stack, chunk_fn, chunk_size=chunk_size, memory_limit=memory_limit, progress=None
    )
    _check_pass(np.where(n < 0, 1, n), ninf, stacklevel + 1)
    few = np.flatnonzero(n < 0)
    if few.size:
        raise InputError(
            f"{few.size} frame(s) have too few pixels with finite data and non-zero weight for "
            f"the model's {design.shape[0]} linear terms, e.g. frame(s) {few[:5].tolist()}; "
            "drop them, lower their variance, or use a simpler background"
        )
    w, z, chol, bg, sens = _reduce_rows(theta, gram, n_bg)
    return BasisStats(w=w, z=z, chol=chol, bg=bg, bg_sens=sens, rss=rss, n=n), 0.5 * offset


def variance_weigher(variance: Any, pixels: np.ndarray | None) -> Weigher:
    """Weights ``1 / variance`` from a map of shape (n,) or a per-frame array (N, *S)."""
    if isinstance(variance, np.ndarray) and variance.ndim == 1:
        inv = 1.0 / variance

        def shared(start, y, ok, mean):
            return inv

        shared.per_frame = False  # type: ignore[attr-defined]
        return shared

    from bayesmix._io import _check_variance_values

    def per_frame(start, y, ok, mean):
        v = np.asarray(variance[start : start + len(y)], np.float64).reshape(len(y), -1)
        if pixels is not None:
            v = v[:, pixels]
        _check_variance_values(f"variance of frames {start}..{start + len(y) - 1}", v)
        return 1.0 / v

    return per_frame


def unit_weigher(start, y, ok, mean):
    """Equal weights (the unweighted pass, in float64)."""
    return np.ones(y.shape[1])


unit_weigher.per_frame = False  # type: ignore[attr-defined]


def check_passes(stack: Stack) -> None:
    """Noise models that re-weight need to read the frames more than once."""
    if isinstance(stack.frames, ChunkStream):
        raise InputError(
            "this noise model re-weights the pixels from the current fit, which reads the "
            "frames several times; an iterator of chunks can be read once: pass an array or a "
            "memory map instead"
        )
