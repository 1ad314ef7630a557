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
from functools import singledispatch
from typing import Any

import jax.numpy as jnp
import numpy as np

from bayesmix._stats import FrameStats, GainStats
from bayesmix._truncnorm import log_ndtr

__all__ = [
    "centred_loglik",
    "centred_reference",
    "centred_total",
    "energy",
    "frame_loglik",
    "gain_centred_loglik",
    "gain_profile",
    "loglik",
    "misfit_pvalue",
    "misfit_qvalues",
    "MISFIT_FDR",
    "sse",
    "x_precision",
]

_LOG_2PI = math.log(2.0 * math.pi)


def sse(x: jnp.ndarray, stats: FrameStats) -> jnp.ndarray:
    """Per-frame sum of squared residuals at weight ``x``: ``rss + dd (x - xhat)^2``."""
    return stats.rss + stats.dd * (x - stats.xhat) ** 2


def frame_loglik(x: jnp.ndarray, sigma: jnp.ndarray, stats: FrameStats) -> jnp.ndarray:
    """Per-frame Gaussian log-likelihood :math:`\\log p(y_i \\mid x_i, \\sigma)`, shape (N,)."""
    return -stats.n * (jnp.log(sigma) + 0.5 * _LOG_2PI) - 0.5 * sse(x, stats) / sigma**2


@singledispatch
def loglik(stats: Any, x: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """Per-frame log-likelihood :math:`\\log p(y_i \\mid x_i, \\sigma)` of the model whose
    statistics these are (nuisances integrated out), shape of ``x`` (..., N)."""
    raise NotImplementedError(f"no likelihood for {type(stats).__name__}")


@loglik.register
def _(stats: FrameStats, x: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    return frame_loglik(x, sigma, stats)


def gain_terms(x: jnp.ndarray, stats: GainStats) -> tuple[jnp.ndarray, ...]:
    """``(a, b, e2)`` of the gain model at weights ``x`` (shape (..., N)): with
    ``v = m0 + x m1``, ``a = |v|^2``, ``b = v . z`` and ``e2 = |z - (b/a) v|^2``, formed from the
    residual vector itself (no cancellation)."""
    v = stats.m0 + x[..., None] * stats.m1
    a = jnp.sum(v * v, axis=-1)
    b = jnp.sum(v * stats.z, axis=-1)
    e = stats.z - (b / a)[..., None] * v
    return a, b, jnp.sum(e * e, axis=-1)


def gain_profile(x: jnp.ndarray, stats: GainStats, sigma2: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """The gain model at weights ``x`` given sigma^2: ``(ll, ghat, s, t, e2)``.

    ``ll`` is the x-dependent part of the log-likelihood with g integrated out,
    ``-log(a)/2 - e2 / (2 sigma^2) + log Phi(t)``; g given x is Normal(ghat, s^2) truncated to
    g > 0, with ``ghat = b / a``, ``s = sigma / sqrt(a)`` and ``t = ghat / s``.
    """
    a, b, e2 = gain_terms(x, stats)
    ghat = b / a
    s = jnp.sqrt(sigma2 / a)
    t = ghat / s
    return -0.5 * jnp.log(a) - 0.5 * e2 / sigma2 + log_ndtr(t), ghat, s, t, e2


@loglik.register
def _(stats: GainStats, x: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    # Integrating g over (0, inf) with a flat prior gives sigma sqrt(2 pi / a) Phi(b / sigma sqrt a)
    # times the likelihood at g = b / a: one power of sigma fewer.
    ll = gain_profile(x, stats, sigma**2)[0]
    return -(stats.n - 1.0) * (jnp.log(sigma) + 0.5 * _LOG_2PI) - 0.5 * stats.rss / sigma**2 + ll


@singledispatch
def energy(stats: Any) -> jnp.ndarray:
    """Per-frame squared norm of the data (plus the references' contrast): the scale below
    which a noise level is not resolvable, shape (N,)."""
    raise NotImplementedError(f"no energy for {type(stats).__name__}")


@energy.register
def _(stats: FrameStats) -> jnp.ndarray:
    return stats.rss + stats.dd * stats.xhat**2 + stats.dd


@energy.register
def _(stats: GainStats) -> jnp.ndarray:
    return stats.rss + jnp.sum(stats.z**2, axis=-1) + jnp.sum(stats.m1**2, axis=-1)


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


def misfit_pvalue(stats: Any, sigma: float) -> np.ndarray:
    """Per frame, the upper-tail p-value of ``rss / sigma^2 ~ chi^2(dof)``.

    Under the model the residual of a frame's least-squares fit is ``dof`` degrees of freedom
    of Gaussian noise (pixels minus background terms minus the fitted weights); a tiny p-value
    flags a frame the model does not explain (another component, a shift, a defect), whatever
    its weight.
    """
    from scipy.stats import chi2

    dof = np.maximum(np.asarray(stats.dof_residual, np.float64), 1.0)
    return chi2.sf(np.asarray(stats.rss, np.float64) / float(sigma) ** 2, dof)


#: Misfit flags keep the false discovery rate over a run's frames at this level: on frames that
#: all follow the model, no frame is flagged in 95% of runs (Benjamini-Hochberg under the global
#: null is the Simes test).
MISFIT_FDR = 0.05


def misfit_qvalues(p: Any) -> np.ndarray:
    r"""Benjamini-Hochberg adjusted p-values (q-values) of per-frame misfit p-values.

    A frame is flagged as badly fit when its q-value is below :data:`MISFIT_FDR`: among the
    flagged frames, the expected share of frames that the model in fact explains is at most
    that level (Benjamini & Hochberg 1995, J. R. Stat. Soc. B 57, 289-300). NaN p-values (a
    frame without residual degrees of freedom) stay NaN and do not count.

    .. math:: q_{(i)} = \min_{j \ge i} \min(1, m\, p_{(j)} / j)

    Examples
    --------
    >>> misfit_qvalues([0.01, 0.04, 0.03, 0.5]).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    p = np.asarray(p, np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m:
        order = np.argsort(p[ok])
        scaled = p[ok][order] * m / np.arange(1, m + 1)
        adj = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
        out = np.empty(m)
        out[order] = adj
        q[ok] = out
    return q


def gain_centred_loglik(
    x: jnp.ndarray,
    u: jnp.ndarray,
    stats: GainStats,
    x_ref: jnp.ndarray,
    e2_ref: jnp.ndarray,
    log_a_ref: jnp.ndarray,
    sse_ref: float,
) -> jnp.ndarray:
    """The gain model's total log-likelihood in a float32-safe form (up to a constant).

    As :func:`centred_loglik`: ``sigma = sigma_ref exp(u)``, the squared error split at the MAP
    (``sse_ref`` in float64, the per-frame ``e2_ref`` and ``log_a_ref`` there), so that every
    term is of the size of the fluctuations. ``stats`` must be in units of sigma_ref (``z`` and
    ``rss`` divided by it: see :func:`centred_reference`).
    """
    a, b, e2 = gain_terms(x, stats)
    ds = jnp.sum(e2 - e2_ref)
    dof = jnp.sum(stats.n - 1.0)
    t = b * jnp.exp(-u) / jnp.sqrt(a)
    return (
        -0.5 * sse_ref * jnp.expm1(-2.0 * u)
        - 0.5 * ds * jnp.exp(-2.0 * u)
        - dof * u
        - 0.5 * jnp.sum(jnp.log(a) - log_a_ref)
        + jnp.sum(log_ndtr(t))
    )


@singledispatch
def centred_reference(stats: Any, x_map: np.ndarray, sigma_ref: float) -> tuple[Any, Any, float]:
    """``(stats, ref, sse_ref)`` for :func:`centred_total`, built in float64 at the MAP, in
    units of ``sigma_ref`` (the sampler then sees O(1) numbers whatever the data's units)."""
    raise NotImplementedError(f"no centred likelihood for {type(stats).__name__}")


@centred_reference.register
def _(stats: FrameStats, x_map: np.ndarray, sigma_ref: float) -> tuple[Any, Any, float]:
    # In units of sigma_ref, as the gain model's: O(1) numbers whatever the data's units.
    s2 = float(sigma_ref) ** 2
    scaled = stats._replace(rss=np.asarray(stats.rss) / s2, dd=np.asarray(stats.dd) / s2)
    x_map = np.asarray(x_map, np.float64)
    sse = scaled.rss + scaled.dd * (x_map - np.asarray(stats.xhat)) ** 2
    return scaled, x_map, float(np.sum(sse))


@centred_reference.register
def _(stats: GainStats, x_map: np.ndarray, sigma_ref: float) -> tuple[Any, Any, float]:
    # In units of sigma_ref, and each frame's M scaled to |m1| = 1 (a constant factor of a, b):
    # every number the sampler sees is then O(1) whatever the data's units.
    k = np.linalg.norm(np.asarray(stats.m1), axis=1)[:, None]
    scaled = GainStats(
        z=np.asarray(stats.z) / sigma_ref,
        m0=np.asarray(stats.m0) / k,
        m1=np.asarray(stats.m1) / k,
        rss=np.asarray(stats.rss) / sigma_ref**2,
        n=np.asarray(stats.n, np.float64),
    )
    x_map = np.asarray(x_map, np.float64)
    a, _, e2 = (np.asarray(v) for v in gain_terms(jnp.asarray(x_map), scaled))
    sse_ref = float(np.sum(scaled.rss + e2))
    return scaled, (x_map, e2, np.log(a)), sse_ref


@singledispatch
def centred_total(stats: Any, x, u, ref, sse_ref) -> jnp.ndarray:
    """The model's total log-likelihood in its float32-safe centred form (up to a constant),
    with ``sigma = sigma_ref exp(u)`` and ``stats``, ``ref``, ``sse_ref`` from
    :func:`centred_reference` (already in units of sigma_ref)."""
    raise NotImplementedError(f"no centred likelihood for {type(stats).__name__}")


@centred_total.register
def _(stats: FrameStats, x, u, ref, sse_ref) -> jnp.ndarray:
    return centred_loglik(x, u, stats, ref, sse_ref, 1.0)  # stats in units of sigma_ref


@centred_total.register
def _(stats: GainStats, x, u, ref, sse_ref) -> jnp.ndarray:
    _, e2_ref, log_a_ref = ref
    return gain_centred_loglik(x, u, stats, ref[0], e2_ref, log_a_ref, sse_ref)
