"""The Gaussian likelihood of a frame, written once, on its sufficient statistics.

For frame ``i`` with valid pixels ``V_i``, ``d = A - B`` and ``r_i = y_i - B``, Pythagoras in the
basis {d, d-orthogonal} gives, for every ``x``,

.. math::

    \\sum_{p \\in V_i} (r_{ip} - x d_p)^2 = \\mathrm{rss}_i + \\mathrm{dd}_i (x - \\hat x_i)^2,

so the all-pixel likelihood is a function of ``(xhat, rss, dd, n)`` exactly, not approximately.
Never expand it as ``sum r^2 - 2 x s + x^2 dd``: in float32 that cancels catastrophically.

Every inference path (MAP, exact posterior, NUTS, LOO) calls the functions here.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from bayesmix._stats import FrameStats

__all__ = ["centred_loglik", "frame_loglik", "misfit_pvalue", "sse", "x_precision"]

_LOG_2PI = math.log(2.0 * math.pi)


def sse(x: jnp.ndarray, stats: FrameStats) -> jnp.ndarray:
    """Per-frame sum of squared residuals at weight ``x``: ``rss + dd (x - xhat)^2``."""
    return stats.rss + stats.dd * (x - stats.xhat) ** 2


def frame_loglik(x: jnp.ndarray, sigma: jnp.ndarray, stats: FrameStats) -> jnp.ndarray:
    """Per-frame Gaussian log-likelihood :math:`\\log p(y_i \\mid x_i, \\sigma)`, shape (N,)."""
    return -stats.n * (jnp.log(sigma) + 0.5 * _LOG_2PI) - 0.5 * sse(x, stats) / sigma**2


def x_precision(sigma2: jnp.ndarray, stats: FrameStats) -> jnp.ndarray:
    """The likelihood as a Gaussian factor in ``x``: mean ``xhat``, precision ``dd / sigma^2``."""
    return stats.dd / sigma2


def centred_loglik(
    x: jnp.ndarray,
    u: jnp.ndarray,
    stats: FrameStats,
    x_ref: jnp.ndarray,
    sse_ref: float,
    sigma_ref: float,
) -> jnp.ndarray:
    """Total log-likelihood in a form that stays accurate in float32 (up to a constant).

    Parameterise ``sigma = sigma_ref * exp(u)`` and split the total squared error at a reference
    point ``x_ref`` (the MAP): ``S(x) = sse_ref + dS(x)`` with

    .. math::

        dS(x) = \\sum_i \\mathrm{dd}_i\\,[(x_i - \\hat x_i)^2 - (x^{ref}_i - \\hat x_i)^2].

    Dropping the constant ``-n log sigma_ref - sse_ref / (2 sigma_ref^2)``,

    .. math::

        \\log L = -\\tfrac12 \\frac{S_{ref}}{\\sigma_{ref}^2}\\,\\mathrm{expm1}(-2u)
                  - \\tfrac12 \\frac{dS(x)}{\\sigma_{ref}^2} e^{-2u} - n u ,

    whose terms are of the size of the fluctuations (about sqrt(n) or N), not of n itself, so
    float32 round-off stays far below 1 and HMC's energy checks stay meaningful.
    """
    a = x - stats.xhat
    b = x_ref - stats.xhat
    ds = jnp.sum(stats.dd * (a - b) * (a + b))
    n = jnp.sum(stats.n)
    s2 = sigma_ref**2
    return -0.5 * (sse_ref / s2) * jnp.expm1(-2.0 * u) - 0.5 * (ds / s2) * jnp.exp(-2.0 * u) - n * u


def misfit_pvalue(stats: FrameStats, sigma: float) -> np.ndarray:
    """Per frame, the upper-tail p-value of ``rss / sigma^2 ~ chi^2(n - 1)``.

    Under the model the residual of a frame at its least-squares weight is ``n - 1`` degrees of
    freedom of Gaussian noise; a tiny p-value flags a frame the two references do not explain
    (another component, a shift, a defect), whatever its weight.
    """
    from scipy.stats import chi2

    dof = np.maximum(np.asarray(stats.n, np.float64) - 1.0, 1.0)
    return chi2.sf(np.asarray(stats.rss, np.float64) / float(sigma) ** 2, dof)
