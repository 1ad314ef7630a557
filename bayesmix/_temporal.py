"""Frames along a sequence: a random walk of the weight, solved exactly in O(N).

Each frame's likelihood is a Gaussian factor in its weight (mean :math:`\\hat x_t`, precision
:math:`p_t = \\mathrm{dd}_t / \\sigma^2`), and the prior is a random walk
:math:`x_t = x_{t-1} + \\varepsilon_t`, :math:`\\varepsilon_t \\sim \\mathcal N(0, q^2
\\Delta_t)`, started from the weight's prior and kept within its bounds
(:class:`bayesmix.temporal.RandomWalk`). Without the bounds this is a linear-Gaussian
state-space model, and everything below is one Kalman filter (forward) and one
Rauch-Tung-Striebel smoother (backward), each a ``jax.lax.scan`` over chunks of frames whose
state is carried from chunk to chunk (so any length compiles once, and memory stays a few
numbers per frame):

- q (and sigma) by maximising the marginal likelihood :math:`p(y \\mid \\sigma, q)` that the
  filter gives (the bounds left out there: they change it only for trajectories that press
  against them). log q by Brent's method over a bounded range (its ends checked: the
  likelihood flattens towards both limits); sigma by EM steps between (the expected squared
  error under the smoothed posterior); q's sd from the curvature of the log marginal
  likelihood in log q.
- the joint MAP within the bounds, exactly: projected Newton on the tridiagonal system. Each
  Newton step is the smoother with the frames that sit at a bound (and are pushed outward by
  the gradient) clamped there, then an Armijo search along the projection arc.
- each frame's marginal within the bounds by expectation propagation: every bound is a factor
  :math:`\\mathbf 1[lo \\le x_t \\le hi]`, replaced by a Gaussian site fitted so that the
  smoother's marginal times the bound has the moments of the truncated normal (Cunningham,
  Hennig & Lacoste-Julien 2011, who find EP accurate for box-truncated Gaussians). The frame's
  marginal is then the truncated normal of its cavity (:class:`SmoothedStats`): exact where no
  bound is near (the sites vanish), and checked against NUTS near them.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._errors import InputError
from bayesmix._precision import x64
from bayesmix._stats import FrameStats, SmoothedStats
from bayesmix._truncnorm import tn_moments
from bayesmix.priors import XPrior

__all__ = ["SequenceFit", "check_sequence", "fit_sequence"]

#: How many times each jitted chunk function has been traced; the tests watch it.
TRACES: Counter[str] = Counter()

#: Frames per chunk of the filter and smoother (short stacks use one chunk of 1/16 or 1/4 of it).
CHUNK = 1 << 16

# log q's search range, in units of the bounds' span per unit of (median) time step.
_LOG_Q_RANGE = (math.log(1e-6), math.log(1e2))
_EP_MAX, _EP_TOL = 200, 1e-7
_QP_MAX = 100


@dataclass(frozen=True)
class SequenceFit:
    """What the random walk learned, beside the frames' own estimates.

    Attributes
    ----------
    q, q_sd : float
        The walk's step sd per unit of time (per frame without ``times=``), and its sd from the
        curvature of the log marginal likelihood in log q (0 when q was given).
    q_fixed : bool
        q was given, not learned.
    q_limit : str
        ``''``, or ``'upper'`` / ``'lower'`` when the learned q sits at the end of its search
        range (the frames look independent, or constant).
    times : ndarray, shape (N,)
        Each frame's time (its index without ``times=``).
    sequence : ndarray, shape (N,)
        Each frame's sequence label (0 without ``sequence_id=``).
    mean_alone, sd_alone : ndarray, shape (N,)
        Each frame's posterior mean and sd on its own (the prior, no walk), at the same sigma.
    log_evidence : float
        log p(y | sigma, q) of all frames (without the bounds; see the module notes).
    ep_iter, map_iter : int
        Iterations of expectation propagation and of projected Newton.
    cavity : SmoothedStats
        Each frame's marginal before its own bounds (x's marginal is it truncated to them).
    """

    q: float
    q_sd: float
    q_fixed: bool
    q_limit: str
    times: np.ndarray
    sequence: np.ndarray
    mean_alone: np.ndarray
    sd_alone: np.ndarray
    log_evidence: float
    ep_iter: int
    map_iter: int
    cavity: SmoothedStats

    @property
    def n_sequences(self) -> int:
        """Number of independent sequences."""
        return int(np.unique(self.sequence).size)


# --------------------------------------------------------------------------------------------
# Inputs


def check_sequence(times: Any, sequence_id: Any, n_frames: int | None) -> tuple[Any, Any]:
    """Validate ``times`` and ``sequence_id`` (length N each) at the boundary.

    Returns float64 times (or None) and the sequence labels (or None).
    """
    if times is not None:
        t = np.asarray(times)
        if np.issubdtype(t.dtype, np.datetime64):
            t = (t - t.min()) / np.timedelta64(1, "s")
        if t.dtype.kind not in "fiu" or t.ndim != 1:
            raise InputError(
                f"times must be a 1-D array of numbers (or datetime64), one per frame; got "
                f"dtype {t.dtype} and shape {t.shape}"
            )
        t = t.astype(np.float64)
        if not np.all(np.isfinite(t)):
            raise InputError("times has NaN or Inf entries; give every frame a finite time")
        if n_frames is not None and t.size != n_frames:
            raise InputError(f"times must have one entry per frame ({n_frames}), got {t.size}")
        times = t
    if sequence_id is not None:
        s = np.asarray(sequence_id)
        if s.ndim != 1 or s.dtype.kind not in "iuUSOb":
            raise InputError(
                f"sequence_id must be a 1-D array of labels (integers or strings), one per "
                f"frame; got dtype {s.dtype} and shape {s.shape}"
            )
        if n_frames is not None and s.size != n_frames:
            raise InputError(
                f"sequence_id must have one entry per frame ({n_frames}), got {s.size}"
            )
        sequence_id = s
    return times, sequence_id


class _Order(NamedTuple):
    """Frames sorted by (sequence, time): the permutation and the per-frame walk inputs."""

    order: np.ndarray  # sorted position -> frame index
    reset: np.ndarray  # bool: the first frame of a sequence
    gap: np.ndarray  # time since the previous frame, in units of the median gap
    unit: float  # the median gap, in the caller's time unit
    times: np.ndarray
    codes: np.ndarray  # integer sequence code per frame (input order)
    labels: np.ndarray


def _order(n: int, times: Any, sequence_id: Any) -> _Order:
    t = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    if sequence_id is None:
        labels, codes = np.zeros(1, np.int64), np.zeros(n, np.int64)
    else:
        labels, codes = np.unique(np.asarray(sequence_id), return_inverse=True)
    order = np.lexsort((t, codes))
    ts, cs = t[order], codes[order]
    reset = np.ones(n, bool)
    reset[1:] = cs[1:] != cs[:-1]
    gap = np.zeros(n)
    gap[1:] = ts[1:] - ts[:-1]
    tied = ~reset & (gap <= 0)
    if np.any(tied):
        i = int(np.flatnonzero(tied)[0])
        raise InputError(
            f"frames {int(order[i - 1])} and {int(order[i])} of one sequence share the time "
            f"{ts[i]:g}; times must differ within a sequence (average such frames, or give "
            "them different sequence_id labels)"
        )
    steps = gap[~reset]
    unit = float(np.median(steps)) if steps.size else 1.0
    gap = np.where(reset, 0.0, gap / unit)
    return _Order(order, reset, gap, unit, t, codes, labels)


# --------------------------------------------------------------------------------------------
# The jitted chunk functions: a forward and a backward scan whose state crosses chunks.


class _Start(NamedTuple):
    """The walk's start: the prior's Gaussian factor (P0 = inf: flat) and the log of the
    bounds' span (a flat start's density)."""

    m0: jnp.ndarray
    p0: jnp.ndarray
    log_span: jnp.ndarray


def _filter_step(carry, d, q2, start: _Start):
    m, var = carry
    xh, p, reset, gap, clamp, cval = d
    var_p = jnp.where(reset, start.p0, var + q2 * gap)
    m_p = jnp.where(reset, start.m0, m)
    lam_p = 1.0 / var_p  # 0 for a flat state
    lam = lam_p + p
    safe = jnp.where(lam > 0, lam, 1.0)
    m_new = jnp.where(lam > 0, (lam_p * m_p + p * xh) / safe, m_p)
    var_new = jnp.where(lam > 0, 1.0 / safe, jnp.inf)
    # log of the frame's Gaussian factor in x integrated over the predicted state (prequential)
    ratio = jnp.where(lam > 0, lam_p / safe, 1.0)
    gauss = 0.5 * jnp.log(jnp.where(ratio > 0, ratio, 1.0))
    gauss = gauss - 0.5 * lam_p * p / safe * (xh - m_p) ** 2
    flat = 0.5 * jnp.log(2.0 * jnp.pi / jnp.where(p > 0, p, 1.0)) - start.log_span
    ll = jnp.where(p > 0, jnp.where(lam_p > 0, gauss, flat), 0.0)
    m_new = jnp.where(clamp, cval, m_new)
    var_new = jnp.where(clamp, 0.0, var_new)
    return (m_new, var_new), (m_new, var_new, ll)


@jax.jit
def _filter_chunk(carry, data, q2, start):
    """Kalman filter over one chunk: filtered means, variances and prequential log terms."""
    TRACES["filter"] += 1
    return jax.lax.scan(partial(_filter_step, q2=q2, start=start), carry, data)


@jax.jit
def _evidence_chunk(carry, data, q2, start):
    """The filter's state after the chunk and its summed log terms."""
    TRACES["evidence"] += 1
    carry, (_, _, ll) = jax.lax.scan(partial(_filter_step, q2=q2, start=start), carry, data)
    return carry, jnp.sum(ll)


def _smooth_step(carry, d, q2):
    ms_next, vs_next = carry
    m, var, gap_next, reset_next = d
    q = q2 * gap_next
    ratio = jnp.where(var > 0, q / jnp.where(var > 0, var, 1.0), jnp.where(q > 0, jnp.inf, 0.0))
    g = jnp.where(reset_next, 0.0, 1.0 / (1.0 + ratio))  # P / (P + Q), inf-safe
    ms = jnp.where(g > 0, (1.0 - g) * jnp.where(g < 1, m, 0.0) + g * ms_next, m)
    vs = jnp.where(reset_next, var, g * q + g * g * vs_next)
    return (ms, vs), (ms, vs)


@jax.jit
def _smooth_chunk(carry, data, q2):
    """Rauch-Tung-Striebel smoother over one chunk, last frame first."""
    TRACES["smooth"] += 1
    return jax.lax.scan(partial(_smooth_step, q2=q2), carry, data, reverse=True)


@jax.jit
def _tilt_chunk(mc, sc, lo, hi):
    TRACES["tilt"] += 1
    return tn_moments(mc, sc, lo, hi)


# --------------------------------------------------------------------------------------------
# Host drivers: loop over chunks, carrying the state.


class _Walk(NamedTuple):
    """The sorted, padded per-frame inputs (numpy, float64; length a multiple of the chunk)."""

    xhat: np.ndarray
    dd: np.ndarray
    rss: np.ndarray
    n: np.ndarray
    reset: np.ndarray
    gap: np.ndarray
    gap_next: np.ndarray
    reset_next: np.ndarray
    size: int  # frames before padding
    chunk: int


def _walk(stats: FrameStats, od: _Order) -> _Walk:
    n = stats.n_frames
    # Three chunk lengths at most (4^6, 4^7, 4^8 frames by default): each jitted function
    # compiles at most three times, whatever the lengths of the stacks.
    chunk = next((c for c in (CHUNK // 16, CHUNK // 4) if n <= c), CHUNK)
    total = -(-n // chunk) * chunk
    o = od.order

    def pad(a, fill=0.0):
        out = np.full(total, fill, np.float64)
        out[:n] = a
        return out

    dd = np.asarray(stats.dd, np.float64)[o]
    xhat = np.where(dd > 0, np.asarray(stats.xhat, np.float64)[o], 0.0)
    reset = pad(od.reset.astype(np.float64))
    gap = pad(od.gap)
    gap_next = np.append(gap[1:], 0.0)
    reset_next = np.append(reset[1:], 1.0)
    reset_next[n - 1 :] = 1.0  # nothing follows the last frame
    return _Walk(pad(xhat), pad(dd), pad(np.asarray(stats.rss, np.float64)[o]),
                 pad(np.asarray(stats.n, np.float64)[o]), reset, gap, gap_next, reset_next,
                 n, chunk)  # fmt: skip


def _chunks(walk: _Walk):
    for k in range(0, walk.xhat.size, walk.chunk):
        yield slice(k, k + walk.chunk)


def _start(prior: XPrior) -> _Start:
    lo, hi = prior.bounds
    mu, prec = prior.gaussian_params()
    var0 = 1.0 / prec if prec > 0 else np.inf
    mu = mu if prec > 0 else 0.5 * (lo + hi)
    return _Start(jnp.float64(mu), jnp.float64(var0), jnp.float64(math.log(hi - lo)))


def _log_evidence(walk: _Walk, s2: float, u: float, start: _Start) -> float:
    """log p(y | sigma, q) at u = log q^2 (normalised time)."""
    q2 = jnp.float64(math.exp(u))
    carry = (jnp.float64(0.0), jnp.float64(np.inf))
    total = 0.0
    p = walk.dd / s2
    zero = np.zeros(walk.chunk)
    for sl in _chunks(walk):
        data = (walk.xhat[sl], p[sl], walk.reset[sl] > 0, walk.gap[sl], zero > 0, zero)
        carry, part = _evidence_chunk(carry, data, q2, start)
        total += float(part)
    pixels = -0.5 * np.sum(walk.n) * math.log(2.0 * math.pi * s2) - 0.5 * np.sum(walk.rss) / s2
    return total + float(pixels)


def _smooth(walk: _Walk, p: np.ndarray, xh: np.ndarray, q2: float, start: _Start,
            clamp: np.ndarray | None = None, cval: np.ndarray | None = None):  # fmt: skip
    """Filter then smoother: smoothed means and variances (sorted, padded) and the filter's
    prequential log terms."""
    if clamp is None:
        clamp, cval = np.zeros(walk.xhat.size, bool), np.zeros(walk.xhat.size)
    q2 = jnp.float64(q2)
    carry = (jnp.float64(0.0), jnp.float64(np.inf))
    filt = []
    for sl in _chunks(walk):
        data = (xh[sl], p[sl], walk.reset[sl] > 0, walk.gap[sl], clamp[sl], cval[sl])
        carry, out = _filter_chunk(carry, data, q2, start)
        filt.append(out)
    ms, vs = np.empty(walk.xhat.size), np.empty(walk.xhat.size)
    ll = np.concatenate([np.asarray(f[2]) for f in filt])
    back = (jnp.float64(0.0), jnp.float64(0.0))
    for k, sl in reversed(list(enumerate(_chunks(walk)))):
        m, var, _ = filt[k]
        data = (m, var, walk.gap_next[sl], walk.reset_next[sl] > 0)
        back, (a, b) = _smooth_chunk(back, data, q2)
        ms[sl], vs[sl] = np.asarray(a), np.asarray(b)
    return ms, vs, ll


def _u_range(span: float) -> tuple[float, float]:
    return 2.0 * (_LOG_Q_RANGE[0] + math.log(span)), 2.0 * (_LOG_Q_RANGE[1] + math.log(span))


def _search_q(walk: _Walk, s2: float, start: _Start, centre: float | None, span: float):
    """The u = log q^2 that maximises the log marginal likelihood: Brent's method on the
    whole range (or within 1 of ``centre``), then the ends of the range checked (the
    likelihood flattens towards both limits, so the best point may be an end)."""
    from scipy.optimize import minimize_scalar

    lo, hi = _u_range(span)
    if centre is not None:
        lo, hi = max(lo, centre - 1.0), min(hi, centre + 1.0)
    out = minimize_scalar(lambda u: -_log_evidence(walk, s2, u, start), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-5})  # fmt: skip
    best_u, best = float(out.x), -float(out.fun)
    for end in (lo, hi):
        value = _log_evidence(walk, s2, end, start)
        if value > best:
            best_u, best = end, value
    return best_u


def _log_q_sd(walk: _Walk, s2: float, u: float, start: _Start) -> float:
    """sd of log q from the curvature of the log marginal likelihood (Laplace)."""
    h = 0.05
    a, b, c = (_log_evidence(walk, s2, v, start) for v in (u - h, u, u + h))
    curv = -(a - 2.0 * b + c) / h**2  # in u = 2 log q
    return 0.5 / math.sqrt(curv) if curv > 0 else math.inf  # sd(u) / 2


# --------------------------------------------------------------------------------------------
# Bounds: the joint MAP (projected Newton) and the marginals (expectation propagation).


def _objective(x, walk: _Walk, p, q2, start: _Start, n):
    """-log posterior (up to a constant) of sorted weights ``x`` and its gradient."""
    x = x[:n]
    r = x - walk.xhat[:n]
    f = 0.5 * np.sum(p[:n] * r * r)
    g = p[:n] * r
    reset = walk.reset[:n] > 0
    if np.isfinite(start.p0):
        d0 = np.where(reset, x - float(start.m0), 0.0)
        f += 0.5 * np.sum(d0 * d0) / float(start.p0)
        g = g + d0 / float(start.p0)
    w = np.where(reset[1:], 0.0, 1.0 / (q2 * np.where(reset[1:], 1.0, walk.gap[1:n])))
    dx = np.diff(x)
    f += 0.5 * np.sum(w * dx * dx)
    g = g.copy()
    g[1:] += w * dx
    g[:-1] -= w * dx
    return f, g


def _bounded_map(walk: _Walk, p, q2, start: _Start, lo, hi, x0):
    """The joint MAP within [lo, hi]: projected Newton (Bertsekas 1982), each step the smoother
    with the frames held at their bound clamped, then Armijo along the projection arc."""
    n = walk.size
    x = np.clip(x0.copy(), lo, hi)
    eps = 1e-12 * (hi - lo)
    f, g = _objective(x, walk, p, q2, start, n)
    it = 0
    for it in range(1, _QP_MAX + 1):  # noqa: B007 (the count is returned)
        at_lo = (x[:n] <= lo + eps) & (g > 0)
        at_hi = (x[:n] >= hi - eps) & (g < 0)
        clamp = np.zeros(x.size, bool)
        clamp[:n] = at_lo | at_hi
        cval = np.where(clamp[:n], np.where(at_lo, lo, hi), 0.0)
        cval = np.concatenate([cval, np.zeros(x.size - n)])
        target, _, _ = _smooth(walk, p, walk.xhat, q2, start, clamp, cval)
        step = target - x
        alpha, done = 1.0, False
        while alpha > 1e-10:
            xn = np.clip(x + alpha * step, lo, hi)
            fn, gn = _objective(xn, walk, p, q2, start, n)
            if fn <= f + 1e-4 * float(np.dot(g, xn[:n] - x[:n])) + 1e-15 * abs(f):
                done = True
                break
            alpha *= 0.5
        if not done:
            break
        moved = np.max(np.abs(xn[:n] - x[:n]))
        # A full step to a target within the bounds: the exact minimiser with this clamped set.
        exact = alpha == 1.0 and np.all((target[:n] >= lo) & (target[:n] <= hi))
        x, f, g = xn, fn, gn
        # KKT: that minimiser, and the clamped set at the new point is the same (every
        # clamped frame still pushed outward).
        same = np.array_equal(clamp[:n], ((x[:n] <= lo + eps) & (g > 0))
                              | ((x[:n] >= hi - eps) & (g < 0)))
        if (exact and same) or moved <= 1e-13 * (hi - lo):
            break
    return x, it


def _tilt(mc, sc, lo, hi, walk: _Walk):
    mean, sd = np.empty_like(mc), np.empty_like(mc)
    for sl in _chunks(walk):
        a, b = _tilt_chunk(mc[sl], sc[sl], jnp.float64(lo), jnp.float64(hi))
        mean[sl], sd[sl] = np.asarray(a), np.asarray(b)
    return mean, sd


def _ep(walk: _Walk, p, q2, start: _Start, lo, hi):
    """Expectation propagation for the bounds: each frame's cavity (m, sd) and its truncated
    moments, and the iterations used."""
    size = walk.xhat.size
    pi, nu = np.zeros(size), np.zeros(size)  # site precision and precision * mean
    mean_old, change_old = None, np.inf
    damp = 1.0
    it = 0
    for it in range(1, _EP_MAX + 1):  # noqa: B007 (the count is returned)
        p_all = p + pi
        xh = np.where(p_all > 0, (p * walk.xhat + nu) / np.where(p_all > 0, p_all, 1.0), 0.0)
        ms, vs, _ = _smooth(walk, p_all, xh, q2, start)
        vs = np.maximum(vs, 1e-300)
        lam_c = np.maximum(1.0 / vs - pi, 1e-300)
        h_c = ms / vs - nu
        mc, sc = h_c / lam_c, 1.0 / np.sqrt(lam_c)
        mean, sd = _tilt(mc, sc, lo, hi, walk)
        sd = np.maximum(sd, 1e-300)
        pi_new = np.maximum(1.0 / sd**2 - lam_c, 0.0)
        nu_new = mean / sd**2 - h_c
        if mean_old is None and not np.any(pi_new > 1e-10 * lam_c):
            break  # no bound within reach of any frame: the smoother is exact
        change = np.inf if mean_old is None else np.max(np.abs(mean - mean_old) / sd)
        if change < _EP_TOL:
            break
        # Undamped while it contracts; damped if a step grows (parallel EP can oscillate).
        damp = 1.0 if mean_old is None or change < change_old else 0.5
        pi = (1.0 - damp) * pi + damp * pi_new
        nu = (1.0 - damp) * nu + damp * nu_new
        mean_old, change_old = mean, change
    return mc, sc, mean, sd, it


# --------------------------------------------------------------------------------------------


def fit_sequence(stats: FrameStats, prior: XPrior, sigma_prior: Any, *, q: float | None,
                 sigma: float, sigma_fixed: bool, times: Any, sequence_id: Any,
                 mean_alone: np.ndarray, sd_alone: np.ndarray, tol: float, max_iter: int,
                 ) -> dict[str, Any]:  # fmt: skip
    """The random walk on the frames' statistics: sigma and q, the bounded MAP, each frame's
    marginal. Returns the fields of a :class:`bayesmix.MapResult` (input order)."""
    n = stats.n_frames
    od = _order(n, times, sequence_id)
    walk = _walk(stats, od)
    lo, hi = prior.bounds
    with x64():
        start = _start(prior)
        s2 = float(sigma) ** 2
        alpha, beta = sigma_prior.ig_params
        n_tot = float(np.sum(walk.n))
        u = None if q is None else 2.0 * math.log(q) + math.log(od.unit)
        # sigma by EM steps, q by maximising the marginal likelihood between them.
        it, converged = 0, sigma_fixed
        while True:
            if q is None:
                u = _search_q(walk, s2, start, None if it == 0 else u, hi - lo)
            if sigma_fixed or it >= max_iter:
                break
            it += 1
            ms, vs, _ = _smooth(walk, walk.dd / s2, walk.xhat, math.exp(u), start)
            e_sse = np.sum(walk.rss + walk.dd * ((ms - walk.xhat) ** 2 + vs))
            s2_new = (e_sse + 2.0 * beta) / (n_tot + 2.0 * alpha + 1.0)
            done = abs(s2_new - s2) <= tol * s2
            s2 = s2_new
            if done:
                converged = True
                break
        q2 = math.exp(u)
        p = walk.dd / s2
        log_ev = _log_evidence(walk, s2, u, start)
        ms, vs, ll = _smooth(walk, p, walk.xhat, q2, start)
        x_map, map_iter = _bounded_map(walk, p, q2, start, lo, hi, ms)
        mc, sc, mean, sd, ep_iter = _ep(walk, p, q2, start, lo, hi)
        q_sd = 0.0 if q is not None else _log_q_sd(walk, s2, u, start)
    edge = _u_range(hi - lo)
    limit = ""
    if q is None and u >= edge[1] - 1e-9:
        limit = "upper"
    elif q is None and u <= edge[0] + 1e-9:
        limit = "lower"
    q_user = math.exp(0.5 * u) / math.sqrt(od.unit)
    if limit == "upper":
        warnings.warn(
            f"the random walk's step q reached the top of its range ({q_user:.3g}): the frames "
            "look independent; temporal='independent' gives frame-by-frame estimates under "
            "the prior",
            UserWarning,
            stacklevel=5,
        )
    back = np.empty(n, np.int64)
    back[od.order] = np.arange(n)

    def unsort(a):
        return np.asarray(a)[:n][back]

    pixels = -0.5 * walk.n[:n] * math.log(2.0 * math.pi * s2) - 0.5 * walk.rss[:n] / s2
    return {
        "x": unsort(x_map),
        "mean": unsort(mean),
        "sd": unsort(sd),
        "sigma": math.sqrt(s2),
        "n_iter": it,
        "converged": bool(converged),
        "loglik": unsort(ll[:n] + pixels),
        "fit": SequenceFit(
            q=q_user, q_sd=q_user * q_sd if math.isfinite(q_sd) else math.inf,
            q_fixed=q is not None, q_limit=limit, times=od.times,
            sequence=od.labels[od.codes], mean_alone=np.asarray(mean_alone),
            sd_alone=np.asarray(sd_alone), log_evidence=log_ev, ep_iter=ep_iter,
            map_iter=map_iter, cavity=SmoothedStats(unsort(mc), unsort(sc)),
        ),
    }  # fmt: skip
