"""The exact posterior of each frame's weight given sigma: mode, mean, sd, quantiles.

Given sigma, the likelihood of frame i is a Gaussian factor in x with mean ``xhat_i`` and precision
``dd_i / sigma^2`` (:func:`bayesmix._likelihood.x_precision`). Times the prior:

- TruncatedNormal(mu, tau; lo, hi) or Uniform(lo, hi) (precision 1/tau^2 = 0): the posterior is
  ``TruncatedNormal(m_i, lam_i^{-1/2}; lo, hi)`` with ``lam_i = dd_i/sigma^2 + 1/tau^2`` and
  ``m_i = (dd_i xhat_i / sigma^2 + mu / tau^2) / lam_i``; everything is closed form.
- Beta(a, b): the mode by a safeguarded Newton iteration on the concave log density; mean, sd and
  quantiles by quadrature on a grid of ``_GRID`` points fitted to each frame's posterior (centred
  on the mode, spanning ``_SPAN`` local widths), batched so memory stays O(batch x grid).

Pure functions of (stats, sigma^2, prior parameters); ``kind`` is static under jit.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlog1py, xlogy

from bayesmix._likelihood import x_precision
from bayesmix._precision import x64
from bayesmix._stats import FrameStats, bucket_size, pad_stats
from bayesmix._truncnorm import tn_moments, tn_quantile
from bayesmix.priors import XPrior

__all__ = [
    "PriorParams",
    "mode",
    "moments",
    "posterior_quantiles",
    "prior_params",
    "quantiles",
    "summary",
]

_NEWTON_STEPS = 60
_GRID = 2048
_SPAN = 20.0  # half-width of the grid, in local widths; beyond it the density is < e^-20
_BATCH = 1024


class PriorParams(NamedTuple):
    """Numbers of a prior on x, as arrays for the jitted core (``kind`` travels separately)."""

    p0: jnp.ndarray  # gaussian: prior mean;      beta: a
    p1: jnp.ndarray  # gaussian: prior precision; beta: b
    lo: jnp.ndarray
    hi: jnp.ndarray


def prior_params(prior: XPrior) -> tuple[str, PriorParams]:
    """``(kind, params)`` of a prior object."""
    lo, hi = prior.bounds
    if prior.kind == "gaussian":
        mu, prec = prior.gaussian_params()
        return "gaussian", PriorParams(*map(jnp.asarray, (mu, prec, lo, hi)))
    return "beta", PriorParams(*map(jnp.asarray, (prior.a, prior.b, lo, hi)))


def _gaussian(stats: FrameStats, sigma2, pp: PriorParams):
    """Untruncated posterior mean and sd of the Gaussian-prior case."""
    lik = x_precision(sigma2, stats)
    lam = lik + pp.p1
    m = (lik * stats.xhat + pp.p1 * pp.p0) / lam
    return m, jax.lax.rsqrt(lam)


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


def mode(kind: str, stats: FrameStats, sigma2, pp: PriorParams) -> jnp.ndarray:
    """The MAP of each x given sigma, shape (N,)."""
    if kind == "gaussian":
        m, _ = _gaussian(stats, sigma2, pp)
        return jnp.clip(m, pp.lo, pp.hi)
    return _beta_mode(stats, sigma2, pp)


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


def summary(kind: str, stats: FrameStats, sigma2, pp: PriorParams):
    """``(mode, mean, sd, at_bound)`` of each frame's posterior given sigma."""
    if kind == "gaussian":
        m, s = _gaussian(stats, sigma2, pp)
        mean, sd = tn_moments(m, s, pp.lo, pp.hi)
        x = jnp.clip(m, pp.lo, pp.hi)
    else:
        x, mean, sd = jax.lax.map(
            lambda st: _beta_summary1(st, sigma2, pp), stats, batch_size=_BATCH
        )
    at_bound = (x <= pp.lo) | (x >= pp.hi)
    return x, mean, sd, at_bound


def moments(kind: str, stats: FrameStats, sigma2, pp: PriorParams):
    """``(mean, sd)`` of each frame's posterior given sigma."""
    if kind == "gaussian":
        m, s = _gaussian(stats, sigma2, pp)
        return tn_moments(m, s, pp.lo, pp.hi)
    _, mean, sd = jax.lax.map(lambda st: _beta_summary1(st, sigma2, pp), stats, batch_size=_BATCH)
    return mean, sd


def quantiles(kind: str, stats: FrameStats, sigma2, pp: PriorParams, qs) -> jnp.ndarray:
    """Posterior quantiles ``qs`` (shape (K,)) of each frame, shape (N, K)."""
    qs = jnp.asarray(qs)
    if kind == "gaussian":
        m, s = _gaussian(stats, sigma2, pp)
        return tn_quantile(qs[None, :], m[:, None], s[:, None], pp.lo, pp.hi)
    return jax.lax.map(lambda st: _beta_quantiles1(st, sigma2, pp, qs), stats, batch_size=_BATCH)


@partial(jax.jit, static_argnames="kind")
def _quantiles_jit(kind, stats, sigma2, pp, qs):
    return quantiles(kind, stats, sigma2, pp, qs)


def posterior_quantiles(prior: XPrior, stats: FrameStats, sigma: float, qs) -> np.ndarray:
    """Quantiles ``qs`` of every frame's posterior given ``sigma``, shape (N, len(qs)), float64."""
    qs = np.atleast_1d(np.asarray(qs, np.float64))
    padded, _ = pad_stats(stats, bucket_size(stats.n_frames))
    with x64():
        kind, pp = prior_params(prior)
        out = _quantiles_jit(kind, padded, jnp.asarray(sigma) ** 2, pp, jnp.asarray(qs))
        return np.asarray(out)[: stats.n_frames]
