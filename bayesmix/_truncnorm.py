"""Truncated-normal mean, sd and quantiles that stay finite and accurate in the tails.

The posterior of a frame's weight given sigma is ``TruncatedNormal(m, s; lo, hi)``, and ``m`` can
lie many ``s`` outside [lo, hi] (a frame that contradicts its bounds). Naive formulas then divide
0 by 0. Here everything is computed in log space, in the orientation where the mass sits in the
lower tail of the standard normal (reflect when it sits in the upper one), with
:func:`ndtri_log`, the inverse of ``log_ndtr``, for the quantiles, and the exponential limit for
the moments once the interval is hundreds of sd into a tail. Pure and jit-safe.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtri

__all__ = ["ndtri_log", "tn_moments", "tn_quantile", "log_diff_ndtr"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Past this many sd into a tail the moment formulas lose ~ t^4 eps to cancellation while the
# exponential limit is off by ~ 1/t^2: 300 balances the two (both ~1e-6 relative in float64).
_TAIL = 300.0


def _log_phi(z: jnp.ndarray) -> jnp.ndarray:
    return -0.5 * z * z - _HALF_LOG_2PI


def _log1mexp(a: jnp.ndarray) -> jnp.ndarray:
    """log(1 - exp(a)) for a <= 0, accurate at both ends."""
    return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def log_diff_ndtr(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """log(Phi(b) - Phi(a)) for a < b, without cancellation in either tail."""
    flip = a + b > 0
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    lhi = log_ndtr(hi)
    return lhi + _log1mexp(log_ndtr(lo) - lhi)


def ndtri_log(log_p: jnp.ndarray) -> jnp.ndarray:
    """Inverse of ``log_ndtr``: z with log Phi(z) = log_p, for log_p <= 0, even far below -700.

    Starts from ``ndtri(exp(log_p))`` (or the asymptotic tail) and polishes with Newton steps on
    the concave function log_ndtr, which converge monotonically from the left.
    """
    log_p = jnp.asarray(log_p)
    tiny = math.log(jnp.finfo(log_p.dtype).tiny) + 10.0
    lp_safe = jnp.maximum(log_p, tiny)
    t = -2.0 * jnp.minimum(log_p, -1.0)
    z_tail = -jnp.sqrt(t - jnp.log(t) - math.log(2.0 * math.pi))
    z = jnp.where(log_p > tiny, ndtri(jnp.exp(lp_safe)), z_tail)
    upper = log_p > -math.log(2.0)  # Phi(z) > 1/2: ndtri is accurate there, Newton unneeded
    for _ in range(4):
        lz = log_ndtr(z)
        step = (lz - log_p) * jnp.exp(lz - _log_phi(z))
        z = jnp.where(upper, z, z - step)
    return z


def _std_frame(m, s, lo, hi):
    """Standardised bounds, reflected so that a + b <= 0 (mass not deep in the upper tail)."""
    a = (lo - m) / s
    b = (hi - m) / s
    flip = a + b > 0
    return jnp.where(flip, -b, a), jnp.where(flip, -a, b), flip


def tn_moments(m, s, lo, hi):
    """Mean and sd of Normal(m, s) truncated to [lo, hi]. Shapes broadcast."""
    a, b, flip = _std_frame(m, s, lo, hi)
    log_z = log_diff_ndtr(a, b)
    ra = jnp.exp(_log_phi(a) - log_z)
    rb = jnp.exp(_log_phi(b) - log_z)
    mu = ra - rb
    var = 1.0 + a * ra - b * rb - mu * mu
    # Deep tail (b < -_TAIL): the density on [a, b] is ~ exp(-|b| t), t = b - z, cut at width w.
    rate = jnp.maximum(-b, 1.0)
    w = b - a
    rw = rate * w
    em1 = jnp.expm1(jnp.minimum(rw, 700.0))
    t_mean = jnp.where(rw < 700.0, 1.0 / rate - w / em1, 1.0 / rate)
    t_var = jnp.where(rw < 700.0, 1.0 / rate**2 - w * w * (em1 + 1.0) / (em1 * em1), 1.0 / rate**2)
    deep = b < -_TAIL
    mu = jnp.where(deep, b - t_mean, mu)
    var = jnp.where(deep, t_var, var)
    mean_std = jnp.where(flip, -mu, mu)
    mean = jnp.clip(m + s * mean_std, lo, hi)
    sd = s * jnp.sqrt(jnp.clip(var, 0.0, 1.0))
    return mean, sd


def tn_quantile(q, m, s, lo, hi):
    """Quantile ``q`` of Normal(m, s) truncated to [lo, hi]. Shapes broadcast."""
    a, b, flip = _std_frame(m, s, lo, hi)
    q = jnp.where(flip, 1.0 - q, q)
    # Phi(z) = (1 - q) Phi(a) + q Phi(b), in logs.
    with_a = jnp.log1p(-q) + log_ndtr(a)
    with_b = jnp.log(q) + log_ndtr(b)
    z = jnp.clip(ndtri_log(jnp.logaddexp(with_a, with_b)), a, b)
    return jnp.clip(m + s * jnp.where(flip, -z, z), lo, hi)
