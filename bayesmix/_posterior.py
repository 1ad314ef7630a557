"""The exact posterior of each frame's weight given sigma: mode, mean, sd, quantiles.

Given sigma, the likelihood of frame i is a Gaussian factor in x with mean ``xhat_i`` and precision
``dd_i / sigma^2`` (:func:`bayesmix._likelihood.x_precision`). Times the prior:

- TruncatedNormal(mu, tau; lo, hi) or Uniform(lo, hi) (precision 1/tau^2 = 0): the posterior is
  ``TruncatedNormal(m_i, lam_i^{-1/2}; lo, hi)`` with ``lam_i = dd_i/sigma^2 + 1/tau^2`` and
  ``m_i = (dd_i xhat_i / sigma^2 + mu / tau^2) / lam_i``; everything is closed form.
- Beta(a, b): the mode by a safeguarded Newton iteration on the concave log density; mean, sd and
  quantiles by quadrature on a grid of ``_GRID`` points fitted to each frame's posterior (centred
  on the mode, spanning ``_SPAN`` local widths), batched so memory stays O(batch x grid).

With a gain (:class:`~bayesmix._stats.GainStats`) x's density given sigma is known pointwise (g
integrated out in closed form), and its moments and quantiles come from a grid fitted to each
frame (coarse grids zoomed on the mass, then a fine one), with any prior.

Each (prior type, statistics type) pair registers one method (:func:`register`); the jitted
core looks it up by the types of its pytree arguments at trace time (:func:`posterior_method`),
so the priors' numbers stay traced and a new model adds a method, not a branch. A method gives
``summary``, ``mode``, ``quantiles(stats, sigma2, prior, qs)`` (levels ``qs`` (Q,) shared by the
frames, (N, Q)) and ``cdf(stats, sigma2, prior, x)`` (one point per frame, ``x`` (N,) -> (N,));
everything built on them (highest-density intervals, the probability of lying near a bound)
asks only for these.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlog1py, xlogy

from bayesmix._likelihood import gain_profile, x_precision
from bayesmix._precision import x64
from bayesmix._stats import (
    FrameStats,
    GainStats,
    PerFrameStats,
    SmoothedStats,
    bucket_size,
    pad_stats,
)
from bayesmix._truncnorm import log_diff_ndtr, log_ndtr, tn_moments, tn_quantile
from bayesmix.priors import Beta, TruncatedNormal, Uniform, XPrior

__all__ = [
    "BetaGrid",
    "ConjugateGaussian",
    "GainGrid",
    "PriorParams",
    "ScaleMixture",
    "Summary",
    "posterior_cdf",
    "posterior_method",
    "posterior_quantiles",
    "prior_params",
    "register",
]

_NEWTON_STEPS = 60
_GRID = 2048
_SPAN = 20.0  # half-width of the grid, in local widths; beyond it the density is < e^-20
_BATCH = 1024


# Frames per block of the per-frame posterior computations: their temporaries (quadrature nodes,
# series terms: ~1 kB a frame in float64) then stay bounded for millions of frames.
_BLOCK_FRAMES = 1 << 16


def _n_blocks(size: int) -> int:
    """Blocks for ``size`` padded frames: a power of two that divides it, ~_BLOCK_FRAMES each."""
    blocks = 1
    while size % (2 * blocks) == 0 and size // (2 * blocks) >= _BLOCK_FRAMES:
        blocks *= 2
    return blocks


def _in_blocks(fn, stats, n_blocks):
    """``fn(stats)`` (a tuple of per-frame arrays), evaluated ``n_blocks`` blocks of frames at a
    time with ``lax.map``, so its intermediates hold one block, not all frames."""
    if n_blocks == 1:
        return fn(stats)
    blocks = jax.tree.map(lambda a: a.reshape(n_blocks, -1), stats)
    return jax.tree.map(lambda a: a.reshape(-1), jax.lax.map(fn, blocks))


class PriorParams(NamedTuple):
    """Numbers of a prior on x, as arrays for the jitted core (``kind`` travels separately)."""

    p0: jnp.ndarray  # gaussian: prior mean;      beta: a
    p1: jnp.ndarray  # gaussian: prior precision; beta: b
    lo: jnp.ndarray
    hi: jnp.ndarray


def prior_params(prior: XPrior) -> PriorParams:
    """The numbers of a prior as the closed forms read them (conjugate: mean and precision of
    its Gaussian factor; Beta: its shapes), with its bounds."""
    lo, hi = prior.bounds
    if isinstance(prior, Beta):
        return PriorParams(*map(jnp.asarray, (prior.a, prior.b, lo, hi)))
    mu, prec = prior.gaussian_params()
    return PriorParams(*map(jnp.asarray, (mu, prec, lo, hi)))


def _gaussian(stats: FrameStats, sigma2, pp: PriorParams):
    """Untruncated posterior mean and sd of the Gaussian-prior case."""
    lik = x_precision(sigma2, stats)
    lam = lik + pp.p1
    m = (lik * stats.xhat + pp.p1 * pp.p0) / lam
    return m, jax.lax.rsqrt(lam)


def _tn_cdf(x, m, s, lo, hi):
    """P(X <= x) for X ~ Normal(m, s) truncated to [lo, hi]: 0 below lo, 1 above hi.

    Ratios of ``log_diff_ndtr`` (which works in the tail away from the mass), so they keep their
    relative precision when m lies many s outside [lo, hi]. Above 1/2 it is 1 minus the upper
    part, so that ``1 - cdf`` (the mass above x) is right to an ulp of 1 even when tiny: the
    ratio itself would carry eps times the logs' magnitude."""
    a, b = (lo - m) / s, (hi - m) / s
    z = (jnp.clip(x, lo, hi) - m) / s
    log_z = log_diff_ndtr(a, b)
    below = log_diff_ndtr(a, z) - log_z
    return jnp.where(below < -np.log(2.0), jnp.exp(below),
                     -jnp.expm1(log_diff_ndtr(z, b) - log_z))  # fmt: skip


def _beta_grad(x, stats, sigma2, pp):
    """First and second derivative of the Beta-prior log posterior in x."""
    lik = x_precision(sigma2, stats)
    a1, b1 = pp.p0 - 1.0, pp.p1 - 1.0
    g1 = a1 / x - b1 / (1.0 - x) - lik * (x - stats.xhat)
    g2 = -a1 / x**2 - b1 / (1.0 - x) ** 2 - lik
    return g1, g2


def _beta_logpost(x, stats, sigma2, pp):
    lik = x_precision(sigma2, stats)
    return xlogy(pp.p0 - 1.0, x) + xlog1py(pp.p1 - 1.0, -x) - 0.5 * lik * (x - stats.xhat) ** 2


def _beta_mode(stats: FrameStats, sigma2, pp: PriorParams):
    """Mode on [0, 1]; the log density is concave (a, b >= 1) so a bracket + Newton is safe."""
    eps = jnp.finfo(stats.xhat.dtype).eps
    # With a = 1 (b = 1) the slope at 0 (1) is finite: the mode sits on that bound when the
    # slope there points outwards.
    lik = x_precision(sigma2, stats)
    at_lo = (pp.p0 == 1.0) & (lik * stats.xhat - (pp.p1 - 1.0) <= 0.0)
    at_hi = (pp.p1 == 1.0) & ((pp.p0 - 1.0) - lik * (1.0 - stats.xhat) >= 0.0)

    def body(_, state):
        x, lo, hi = state
        g1, g2 = _beta_grad(x, stats, sigma2, pp)
        lo = jnp.where(g1 > 0, x, lo)
        hi = jnp.where(g1 > 0, hi, x)
        xn = x - g1 / g2
        inside = (xn > lo) & (xn < hi)
        return jnp.where(inside, xn, 0.5 * (lo + hi)), lo, hi

    x0 = jnp.clip(stats.xhat, 0.01, 0.99)
    zeros, ones = jnp.zeros_like(x0) + eps, jnp.ones_like(x0) - eps
    x, _, _ = jax.lax.fori_loop(0, _NEWTON_STEPS, body, (x0, zeros, ones))
    return jnp.where(at_lo, 0.0, jnp.where(at_hi, 1.0, x))


def _beta_grid(stats1: FrameStats, sigma2, pp: PriorParams):
    """Grid, normalised trapezoid weights and CDF of one frame's Beta-prior posterior."""
    x0 = _beta_mode(stats1, sigma2, pp)
    eps = jnp.finfo(x0.dtype).eps
    g1, g2 = _beta_grad(jnp.clip(x0, eps, 1.0 - eps), stats1, sigma2, pp)
    g1 = jnp.where((x0 > 0.0) & (x0 < 1.0), 0.0, g1)  # the slope matters only at a bound
    width = 1.0 / (jnp.sqrt(-g2) + jnp.abs(g1))
    # With a (or b) just above 1 and the data beyond that bound, the mode sits a hair inside it
    # where (a - 1) / x^2 is huge: the curvature there says nothing of the bulk, which falls off
    # on the likelihood's own scale. Never make the grid narrower than that scale.
    lik = x_precision(sigma2, stats1)
    width_lik = 1.0 / (jnp.sqrt(lik) + lik * jnp.abs(x0 - stats1.xhat))
    width = jnp.maximum(width, jnp.minimum(width_lik, 1.0))
    lo = jnp.maximum(0.0, x0 - _SPAN * width)
    hi = jnp.minimum(1.0, x0 + _SPAN * width)
    grid = lo + (hi - lo) * jnp.linspace(0.0, 1.0, _GRID, dtype=x0.dtype)
    # At a bound, x^(a - 1) with a just above 1 is 0 but jumps to ~1 within any grid step; the
    # end point's value is taken a tenth of a step inside, which makes its cell's integral right.
    step = (hi - lo) / (_GRID - 1)
    lp = _beta_logpost(jnp.clip(grid, 0.1 * step, 1.0 - 0.1 * step), stats1, sigma2, pp)
    dens = jnp.exp(lp - jnp.max(lp))
    # Trapezoid rule: the weights are the density with the two end points halved.
    w = dens.at[0].multiply(0.5).at[-1].multiply(0.5)
    cdf = jnp.concatenate([jnp.zeros(1, dens.dtype), jnp.cumsum(0.5 * (dens[1:] + dens[:-1]))])
    return x0, grid, w / jnp.sum(w), cdf / cdf[-1]


def _beta_summary1(stats1, sigma2, pp):
    x0, grid, w, _ = _beta_grid(stats1, sigma2, pp)
    mean = jnp.sum(w * grid)
    sd = jnp.sqrt(jnp.sum(w * (grid - mean) ** 2))
    return x0, mean, sd


def _beta_quantiles1(stats1, sigma2, pp, qs):
    _, grid, _, cdf = _beta_grid(stats1, sigma2, pp)
    return jnp.interp(qs, cdf, grid)


def _beta_cdf1(stats1, sigma2, pp, x1):
    # Outside the grid (beyond 20 local widths of the mode) the mass is < e^-20: 0 or 1.
    _, grid, _, cdf = _beta_grid(stats1, sigma2, pp)
    return jnp.interp(x1, grid, cdf)


class Summary(NamedTuple):
    """Each frame's posterior given sigma: mode, mean, sd, at a bound, and model extras
    (``gain``, ``gain_sd`` for the gain model), each of shape (N,)."""

    x: jnp.ndarray
    mean: jnp.ndarray
    sd: jnp.ndarray
    at_bound: jnp.ndarray
    extra: dict


# (prior type, statistics type) -> posterior method. The statistics' type is the likelihood's
# family (a Gaussian factor in x, the gain-marginal likelihood, ...); each pair with a closed form
# or a fitted quadrature registers one method, as numpyro's kl registers one divergence per pair.
_REGISTRY: dict[tuple[type, type], type] = {}


def register(prior_types: tuple[type, ...], stats_type: type):
    """Class decorator: the posterior method for these prior types with ``stats_type``."""

    def deco(cls: type) -> type:
        for p in prior_types:
            _REGISTRY[(p, stats_type)] = cls
        return cls

    return deco


def posterior_method(prior: object, stats: object) -> type:
    """The registered method for ``(type(prior), type(stats))``, most specific first (by MRO)."""
    for p in type(prior).__mro__:
        for st in type(stats).__mro__:
            method = _REGISTRY.get((p, st))
            if method is not None:
                return method
    raise NotImplementedError(
        f"no posterior method for a {type(prior).__name__} prior with "
        f"{type(stats).__name__} statistics"
    )


@register((TruncatedNormal, Uniform), FrameStats)
class ConjugateGaussian:
    """Gaussian factor in x times a truncated-normal (or flat) prior: closed forms."""

    @staticmethod
    def mode(stats, sigma2, prior):
        pp = prior_params(prior)
        m, _ = _gaussian(stats, sigma2, pp)
        return jnp.clip(m, pp.lo, pp.hi)

    @staticmethod
    def moments(stats, sigma2, prior):
        pp = prior_params(prior)
        m, s = _gaussian(stats, sigma2, pp)
        return tn_moments(m, s, pp.lo, pp.hi)

    @staticmethod
    def summary(stats, sigma2, prior) -> Summary:
        pp = prior_params(prior)
        m, s = _gaussian(stats, sigma2, pp)
        mean, sd = tn_moments(m, s, pp.lo, pp.hi)
        x = jnp.clip(m, pp.lo, pp.hi)
        return Summary(x, mean, sd, (x <= pp.lo) | (x >= pp.hi), {})

    @classmethod
    def expected_sse(cls, stats, sigma2, prior):
        mean, sd = cls.moments(stats, sigma2, prior)
        return stats.rss + stats.dd * (sd**2 + (mean - stats.xhat) ** 2)

    @staticmethod
    def quantiles(stats, sigma2, prior, qs):
        pp = prior_params(prior)
        m, s = _gaussian(stats, sigma2, pp)
        return tn_quantile(qs[None, :], m[:, None], s[:, None], pp.lo, pp.hi)

    @staticmethod
    def cdf(stats, sigma2, prior, x):
        """P(x_i <= x[i] | y_i, sigma) per frame, ``x`` of shape (N,): closed form."""
        pp = prior_params(prior)
        m, s = _gaussian(stats, sigma2, pp)
        return _tn_cdf(x, m, s, pp.lo, pp.hi)


@register((Beta,), FrameStats)
class BetaGrid(ConjugateGaussian):
    """Gaussian factor in x times a Beta prior: Newton for the mode, a fitted grid otherwise."""

    @staticmethod
    def mode(stats, sigma2, prior):
        return _beta_mode(stats, sigma2, prior_params(prior))

    @staticmethod
    def moments(stats, sigma2, prior):
        pp = prior_params(prior)
        _, mean, sd = jax.lax.map(lambda st: _beta_summary1(st, sigma2, pp), stats,
                                  batch_size=_BATCH)  # fmt: skip
        return mean, sd

    @staticmethod
    def summary(stats, sigma2, prior) -> Summary:
        pp = prior_params(prior)
        x, mean, sd = jax.lax.map(lambda st: _beta_summary1(st, sigma2, pp), stats,
                                  batch_size=_BATCH)  # fmt: skip
        return Summary(x, mean, sd, (x <= pp.lo) | (x >= pp.hi), {})

    @staticmethod
    def quantiles(stats, sigma2, prior, qs):
        pp = prior_params(prior)
        return jax.lax.map(lambda st: _beta_quantiles1(st, sigma2, pp, qs), stats,
                           batch_size=_BATCH)  # fmt: skip

    @staticmethod
    def cdf(stats, sigma2, prior, x):
        """P(x_i <= x[i] | y_i, sigma) per frame: the fitted grid's trapezoid CDF, interpolated."""
        pp = prior_params(prior)
        return jax.lax.map(lambda a: _beta_cdf1(a[0], sigma2, pp, a[1]), (stats, x),
                           batch_size=_BATCH)  # fmt: skip


# The gain model: x's density is known pointwise (g integrated in closed form), so the posterior
# comes from a grid fitted to each frame: coarse grids over the prior's support, each zoomed to
# where the log density is within _ZOOM_DROP of its maximum, then a fine grid for the moments.
_ZOOM_POINTS = 65
_ZOOM_STEPS = 3
_FINE_POINTS = 257
_ZOOM_DROP = 40.0


def _zoom(logf, lo, hi, points):
    grid = lo + (hi - lo) * jnp.linspace(0.0, 1.0, points, dtype=jnp.result_type(lo, float))
    lp = logf(grid)
    keep = lp >= jnp.max(lp) - _ZOOM_DROP
    first = jnp.argmax(keep)
    last = points - 1 - jnp.argmax(keep[::-1])
    return grid[jnp.maximum(first - 1, 0)], grid[jnp.minimum(last + 1, points - 1)]


def _fitted_grid(logf, lo, hi):
    """Grid, normalised trapezoid weights, CDF and log density of a 1-D density on [lo, hi]."""
    a, b = lo, hi
    a, b = _zoom(logf, a, b, _ZOOM_POINTS)
    for _ in range(_ZOOM_STEPS - 1):
        a, b = _zoom(logf, a, b, _ZOOM_POINTS)
    grid = a + (b - a) * jnp.linspace(0.0, 1.0, _FINE_POINTS, dtype=jnp.result_type(a, float))
    lp = logf(grid)
    dens = jnp.exp(lp - jnp.max(lp))
    w = dens.at[0].multiply(0.5).at[-1].multiply(0.5)
    cdf = jnp.concatenate([jnp.zeros(1, dens.dtype), jnp.cumsum(0.5 * (dens[1:] + dens[:-1]))])
    return grid, w / jnp.sum(w), cdf / cdf[-1], lp


def _grid_mode(grid, lp):
    """The grid's best point, refined by the parabola through it and its neighbours."""
    k = jnp.argmax(lp)
    inner = jnp.clip(k, 1, grid.shape[0] - 2)
    l0, l1, l2 = lp[inner - 1], lp[inner], lp[inner + 1]
    h = grid[1] - grid[0]
    curv = l0 - 2.0 * l1 + l2
    shift = jnp.where(curv < 0, 0.5 * h * (l0 - l2) / jnp.where(curv < 0, curv, -1.0), 0.0)
    refined = grid[inner] + jnp.clip(shift, -h, h)
    return jnp.where((k == 0) | (k == grid.shape[0] - 1), grid[k], refined)


def _mills(t):
    """phi(t) / Phi(t), stable for every t."""
    return jnp.exp(-0.5 * t * t - 0.5 * np.log(2.0 * np.pi) - log_ndtr(t))


def _gain_frame(st1: GainStats, sigma2, prior):
    lo, hi = prior.bounds
    lo = jnp.asarray(lo, st1.rss.dtype)
    hi = jnp.asarray(hi, st1.rss.dtype)

    def logf(x):
        return prior.log_prob(x) + gain_profile(x, st1, sigma2)[0]

    grid, w, cdf, lp = _fitted_grid(logf, lo, hi)
    return grid, w, cdf, lp


def _gain_summary1(st1: GainStats, sigma2, prior):
    grid, w, _, lp = _gain_frame(st1, sigma2, prior)
    _, ghat, s, t, e2 = gain_profile(grid, st1, sigma2)
    mean = jnp.sum(w * grid)
    sd = jnp.sqrt(jnp.sum(w * (grid - mean) ** 2))
    lam = _mills(t)
    g_mean_x = ghat + s * lam
    g_var_x = s * s * jnp.maximum(1.0 - t * lam - lam * lam, 0.0)
    g_mean = jnp.sum(w * g_mean_x)
    g_sd = jnp.sqrt(jnp.maximum(jnp.sum(w * (g_var_x + (g_mean_x - g_mean) ** 2)), 0.0))
    # E[|z - g v|^2] = e2 + a E[(g - ghat)^2] = e2 + sigma^2 (1 - t lambda(t)), given x.
    e_sse = st1.rss + jnp.sum(w * (e2 + sigma2 * (1.0 - t * lam)))
    gx_mean = jnp.sum(w * grid * g_mean_x)  # E[g x]: g and x are correlated a posteriori
    return _grid_mode(grid, lp), mean, sd, g_mean, g_sd, gx_mean, e_sse


@register((object,), GainStats)
class GainGrid:
    """The gain model (g integrated out exactly given x) with any prior: a fitted grid in x."""

    @staticmethod
    def summary(stats, sigma2, prior) -> Summary:
        x, mean, sd, g, g_sd, gx, _ = jax.lax.map(
            lambda st: _gain_summary1(st, sigma2, prior), stats, batch_size=_BATCH
        )
        lo, hi = prior.bounds
        extra = {"gain": g, "gain_sd": g_sd, "gain_x": gx}
        return Summary(x, mean, sd, (x <= lo) | (x >= hi), extra)

    @staticmethod
    def expected_sse(stats, sigma2, prior):
        out = jax.lax.map(lambda st: _gain_summary1(st, sigma2, prior), stats, batch_size=_BATCH)
        return out[-1]

    @staticmethod
    def mode(stats, sigma2, prior):
        raise NotImplementedError("the joint mode is not available with gain")

    @staticmethod
    def quantiles(stats, sigma2, prior, qs):
        def one(st1):
            grid, _, cdf, _ = _gain_frame(st1, sigma2, prior)
            return jnp.interp(qs, cdf, grid)

        return jax.lax.map(one, stats, batch_size=_BATCH)

    @staticmethod
    def cdf(stats, sigma2, prior, x):
        """P(x_i <= x[i] | y_i, sigma) per frame: the fitted grid's CDF, interpolated (0 or 1
        beyond the grid, where the density is below e^-40 of its peak)."""

        def one(args):
            st1, x1 = args
            grid, _, cdf, _ = _gain_frame(st1, sigma2, prior)
            return jnp.interp(x1, grid, cdf)

        return jax.lax.map(one, (stats, x), batch_size=_BATCH)


_S_NODES = 41  # nodes of the log-sigma grid: 0.4 posterior widths apart over +-8 widths
_S_SPAN = 8.0


def _s_grid(st: PerFrameStats):
    """Per-frame nodes of log sigma (N, G) around the mode of its posterior (x integrated out
    approximately for the centre only; the nodes then carry the exact weights)."""
    m1 = jnp.maximum(st.n - 1.0, 0.5)
    rss = jnp.maximum(st.rss, jnp.finfo(jnp.float64).tiny)
    prec = 1.0 / st.s_tau**2
    s = 0.5 * jnp.log(rss / m1)
    s = (s * 2.0 * m1 + st.s_mu * prec) / (2.0 * m1 + prec)  # Gaussian approximation, then Newton

    def newton(s, _):
        e = rss * jnp.exp(-2.0 * s)
        g = -m1 + e - (s - st.s_mu) * prec
        h = -2.0 * e - prec
        return s - g / h, None

    s, _ = jax.lax.scan(newton, s, None, length=8)
    width = jax.lax.rsqrt(2.0 * rss * jnp.exp(-2.0 * s) + prec)
    t = jnp.linspace(-_S_SPAN, _S_SPAN, _S_NODES)
    return s[:, None] + width[:, None] * t[None, :], width * (t[1] - t[0])


def _log_zx(dd, xhat, inv, pp: PriorParams):
    """log of the integral over [lo, hi] of the likelihood's Gaussian factor in x (precision
    ``dd * inv``) times the prior's unnormalised one; and x's truncated normal (m, sd)."""
    lam = dd * inv + pp.p1
    m = (dd * xhat * inv + pp.p1 * pp.p0) / lam
    sd = jax.lax.rsqrt(lam)
    # The constant the product of two Gaussians leaves, without cancellation.
    c0 = jnp.where(pp.p1 > 0, dd * pp.p1 / (dd + pp.p1 / inv) * (xhat - pp.p0) ** 2, 0.0)
    log_zx = -0.5 * c0 + 0.5 * jnp.log(2.0 * jnp.pi / lam) + log_diff_ndtr(
        (pp.lo - m) / sd, (pp.hi - m) / sd)
    return log_zx, m, sd


@jax.jit
def gaussian_log_evidence(stats: FrameStats, sigma2, prior):
    """log p(y_i | sigma) per frame, x integrated out over its prior (closed form; up to the
    background's flat prior)."""
    pp = prior_params(prior)
    log_zx, _, _ = _log_zx(stats.dd, stats.xhat, 1.0 / sigma2, pp)
    return (-0.5 * stats.n * jnp.log(2.0 * jnp.pi * sigma2) - 0.5 * stats.rss / sigma2 + log_zx
            - _prior_log_norm(pp))  # fmt: skip


def _s_components(st: PerFrameStats, prior):
    """Per node of log sigma: log weight (unnormalised, exact), and x's truncated normal."""
    pp = prior_params(prior)
    # The nodes are a quadrature rule, not a parameter: derivatives in (mu, tau) flow through the
    # integrand only, which is the derivative of the integral to the rule's accuracy.
    nodes, step = jax.lax.stop_gradient(_s_grid(st))
    inv = jnp.exp(-2.0 * nodes)  # 1 / sigma^2
    log_zx, m, sd = _log_zx(st.dd[:, None], st.xhat[:, None], inv, pp)
    n, rss = st.n[:, None], st.rss[:, None]
    mu, tau = st.s_mu[:, None], st.s_tau[:, None]
    log_prior_s = -0.5 * ((nodes - mu) / tau) ** 2 - jnp.log(tau) - 0.5 * jnp.log(2.0 * jnp.pi)
    logw = log_prior_s - n * nodes - 0.5 * rss * inv + log_zx
    return nodes, step, logw, m, sd, pp


def _prior_log_norm(pp: PriorParams):
    """log of the integral of the prior's unnormalised Gaussian factor over [lo, hi]."""
    s = jax.lax.rsqrt(jnp.maximum(pp.p1, jnp.finfo(jnp.float64).tiny))
    gauss = 0.5 * jnp.log(2.0 * jnp.pi) + jnp.log(s) + log_diff_ndtr(
        (pp.lo - pp.p0) / s, (pp.hi - pp.p0) / s)
    return jnp.where(pp.p1 > 0, gauss, jnp.log(pp.hi - pp.lo))


def per_frame_log_evidence(st: PerFrameStats, prior):
    """log p(y_i | mu, tau) per frame: x and sigma_i integrated out (up to the background's flat
    prior), and the posterior mean and second moment of log sigma_i."""
    nodes, step, logw, *_, pp = _s_components(st, prior)
    log_z = jax.scipy.special.logsumexp(logw, axis=1)
    p = jnp.exp(logw - log_z[:, None])
    es = jnp.sum(p * nodes, axis=1)
    es2 = jnp.sum(p * nodes**2, axis=1)
    evidence = log_z + jnp.log(step) - 0.5 * st.n * jnp.log(2.0 * jnp.pi) - _prior_log_norm(pp)
    return evidence, es, es2


def _mixture_cdf(x, m, sd, pp, p):
    """CDF at x (N, Q) of the mixture over nodes of truncated normals (N, G)."""
    a = (pp.lo - m) / sd
    norm = log_diff_ndtr(a, (pp.hi - m) / sd)
    z = (jnp.clip(x[..., None], pp.lo, pp.hi) - m[:, None, :]) / sd[:, None, :]
    parts = jnp.exp(log_diff_ndtr(a[:, None, :], z) - norm[:, None, :])
    return jnp.sum(p[:, None, :] * parts, axis=-1)


@register((TruncatedNormal, Uniform), PerFrameStats)
class ScaleMixture:
    """Per-frame sigma_i integrated out over its population prior: x's posterior is a mixture,
    over a grid of log sigma_i with exact weights, of truncated normals (closed forms)."""

    @staticmethod
    def _mixture(stats, prior):
        nodes, _, logw, m, sd, pp = _s_components(stats, prior)
        p = jax.nn.softmax(logw, axis=1)
        return nodes, p, m, sd, pp

    @classmethod
    def summary(cls, stats, sigma2, prior) -> Summary:
        nodes, p, m, sd, pp = cls._mixture(stats, prior)
        mean_j, sd_j = tn_moments(m, sd, pp.lo, pp.hi)
        mean = jnp.sum(p * mean_j, axis=1)
        var = jnp.sum(p * (sd_j**2 + (mean_j - mean[:, None]) ** 2), axis=1)
        sig = jnp.exp(nodes)
        s_mean = jnp.sum(p * sig, axis=1)
        s_sd = jnp.sqrt(jnp.maximum(jnp.sum(p * (sig - s_mean[:, None]) ** 2, axis=1), 0.0))
        # The mode given sigma_i at its posterior mean (the mixture's components differ by
        # O(1/sqrt(n)) in width, so its mode is theirs to that order).
        lam = stats.dd / s_mean**2 + pp.p1
        x = jnp.clip((stats.dd * stats.xhat / s_mean**2 + pp.p1 * pp.p0) / lam, pp.lo, pp.hi)
        return Summary(x, jnp.clip(mean, pp.lo, pp.hi), jnp.sqrt(var),
                       (x <= pp.lo) | (x >= pp.hi), {"sigma": s_mean, "sigma_sd": s_sd})

    @classmethod
    def mode(cls, stats, sigma2, prior):
        return cls.summary(stats, sigma2, prior).x

    @classmethod
    def quantiles(cls, stats, sigma2, prior, qs):
        _, p, m, sd, pp = cls._mixture(stats, prior)
        target = qs[None, :] + 0.0 * stats.xhat[:, None]

        def bisect(bounds, _):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = _mixture_cdf(mid, m, sd, pp, p) < target
            return (jnp.where(below, mid, lo), jnp.where(below, hi, mid)), None

        lo = jnp.zeros_like(target) + pp.lo
        hi = jnp.zeros_like(target) + pp.hi
        (lo, hi), _ = jax.lax.scan(bisect, (lo, hi), None, length=48)
        return 0.5 * (lo + hi)

    @classmethod
    def cdf(cls, stats, sigma2, prior, x):
        """P(x_i <= x[i] | y_i) per frame: the mixture's CDF, closed form per node."""
        _, p, m, sd, pp = cls._mixture(stats, prior)
        return _mixture_cdf(x[:, None], m, sd, pp, p)[:, 0]


@register((TruncatedNormal, Uniform), SmoothedStats)
class TruncatedMarginal:
    """A frame's marginal along a sequence: a Gaussian truncated to the prior's bounds (the
    prior's own Gaussian factor is already in it, at the start of the walk)."""

    @staticmethod
    def summary(stats, sigma2, prior) -> Summary:
        pp = prior_params(prior)
        mean, sd = tn_moments(stats.m, stats.sd, pp.lo, pp.hi)
        x = jnp.clip(stats.m, pp.lo, pp.hi)
        return Summary(x, mean, sd, (x <= pp.lo) | (x >= pp.hi), {})

    @staticmethod
    def quantiles(stats, sigma2, prior, qs):
        pp = prior_params(prior)
        return tn_quantile(qs[None, :], stats.m[:, None], stats.sd[:, None], pp.lo, pp.hi)

    @staticmethod
    def cdf(stats, sigma2, prior, x):
        """P(x_i <= x[i] | all frames) per frame: closed form."""
        pp = prior_params(prior)
        return _tn_cdf(x, stats.m, stats.sd, pp.lo, pp.hi)


@jax.jit
def _quantiles_jit(stats, sigma2, prior, qs):
    return posterior_method(prior, stats).quantiles(stats, sigma2, prior, qs)


def posterior_quantiles(prior: XPrior, stats: Any, sigma: float, qs) -> np.ndarray:
    """Quantiles ``qs`` of every frame's posterior given ``sigma``, shape (N, len(qs)), float64."""
    qs = np.atleast_1d(np.asarray(qs, np.float64))
    padded, _ = pad_stats(stats, bucket_size(stats.n_frames))
    with x64():
        out = _quantiles_jit(padded, jnp.asarray(sigma) ** 2, prior, jnp.asarray(qs))
        return np.asarray(out)[: stats.n_frames]


@jax.jit
def _cdf_jit(stats, sigma2, prior, x):
    return posterior_method(prior, stats).cdf(stats, sigma2, prior, x)


def posterior_cdf(prior: XPrior, stats: Any, sigma: float, x: Any) -> np.ndarray:
    """P(x_i <= x[i] | y_i, sigma) for every frame i, shape (N,), float64.

    ``x`` has shape (N,), one point per frame (or a scalar, the same point for all).
    """
    n = stats.n_frames
    x = np.broadcast_to(np.asarray(x, np.float64), (n,))
    size = bucket_size(n)
    padded, _ = pad_stats(stats, size)
    # The padding frames are evaluated at a bound of the prior: finite, then discarded.
    xp = np.concatenate([x, np.full(size - n, float(prior.bounds[0]))])
    with x64():
        out = _cdf_jit(padded, jnp.asarray(sigma) ** 2, prior, jnp.asarray(xp))
        return np.asarray(out)[:n]
