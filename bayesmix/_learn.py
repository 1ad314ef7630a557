"""Priors learned from the frames (``prior="learn"``): empirical Bayes on the weights.

With thousands of frames the population their weights come from is itself well determined. A
family of priors :math:`p(x \\mid \\theta)` (truncated normal, Beta, Dirichlet, or point masses on
the pure phases plus a continuous part) has its hyperparameters :math:`\\theta` learned by
maximising the marginal likelihood of all frames,

.. math::

    \\ell(\\theta, \\sigma) = \\sum_i \\log \\int p(y_i \\mid x, \\sigma)\\, p(x \\mid \\theta)\\,
        dx + \\log p(\\sigma),

with each frame's weights integrated out exactly (:func:`log_evidence`):

- truncated normal: closed form (a Gaussian factor in x times a Gaussian prior);
- Beta: Gauss-Legendre quadrature (64 nodes) over the part of [0, 1] where the frame's
  likelihood is within :math:`e^{-40}` of its largest value there (the nodes follow the frame
  however sharp its likelihood);
- point masses: the likelihood at each pure phase, plus the continuous part's evidence;
- three references: a 2-D quadrature on the simplex, per frame: Gauss-Legendre in the first
  weight over the range where the frame's likelihood lives, and in the conditional truncated
  normal's quantile for the second (:func:`simplex_rule`); the rule is built once, so learning
  the prior is a weighted sum per frame.

With two references sigma is learned jointly (its log is the first coordinate of the Newton
iteration, :func:`bayesmix._population.maximize`); with three it is the restricted (REML)
estimate from the residuals, which does not depend on the prior. The learned prior then goes
through the same exact per-frame posteriors as a fixed one.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from bayesmix._errors import InputError
from bayesmix._likelihood import gain_profile
from bayesmix._population import PopulationFit, maximize, natural_sd
from bayesmix._posterior import (
    _BATCH,
    _ZOOM_POINTS,
    _ZOOM_STEPS,
    Summary,
    _gaussian,
    _in_blocks,
    _n_blocks,
    _zoom,
    gaussian_log_evidence,
    prior_params,
    register,
)
from bayesmix._precision import x64
from bayesmix._stats import FrameStats, GainStats, SimplexStats, bucket_size, pad_stats
from bayesmix._truncnorm import log_diff_ndtr, tn_moments, tn_quantile
from bayesmix.priors import (
    Beta,
    Dirichlet,
    Learn,
    PointMassMixture,
    TruncatedNormal,
    Uniform,
    _unvalidated,
)

__all__ = ["FAMILIES", "FINE_LEVELS", "GridRule", "SimplexRule", "evidence_of", "gain_rule",
           "learn_prior", "log_evidence", "simplex_point_mass", "simplex_rule"]

# Gauss-Legendre nodes on (0, 1): over the range a frame's likelihood lives in (Beta; the
# simplex's outer weight; the gain model) and in the conditional's quantile (inner weight).


_U_NODES = 64
_OUTER_NODES = 48
_INNER_NODES = 32


def _legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (t + 1.0), 0.5 * w


def _clustered(v, at_lo, at_hi):
    """Nodes ``v`` in (0, 1) mapped by ``v^k / (v^k + (1 - v)^k')``, with k = 2 at an end on a
    bound of the support (else 1), and the map's derivative. There a density such as
    ``x^(a - 1)`` is not smooth; after the map it is smooth to a few orders more, so
    Gauss-Legendre keeps its accuracy."""
    k_lo = jnp.where(at_lo, 2.0, 1.0)
    k_hi = jnp.where(at_hi, 2.0, 1.0)
    p, q = v**k_lo, (1.0 - v) ** k_hi
    t = p / (p + q)
    dt = (k_lo * p / v * q + k_hi * p * q / (1.0 - v)) / (p + q) ** 2
    return t, dt


# ---------------------------------------------------------------------------------------------
# Each frame's marginal likelihood, by (prior type, statistics type), as the posterior methods.

_EVIDENCE: dict[tuple[type, type], Any] = {}


def _evidence_for(prior_types: tuple[type, ...], data_type: type):
    def deco(fn):
        for p in prior_types:
            _EVIDENCE[(p, data_type)] = fn
        return fn

    return deco


def log_evidence(prior: Any, data: Any, sigma2: jnp.ndarray) -> jnp.ndarray:
    """:math:`\\log p(y_i \\mid \\sigma, \\text{prior})` per frame, shape (N,): the weights
    integrated out over the prior (up to the background's flat prior, as the fast path's
    ``loglik``). Chosen by the types of ``prior`` and ``data`` (closed forms where they exist).

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix._stats import FrameStats
    >>> from bayesmix._learn import log_evidence
    >>> from bayesmix.priors import Beta, Uniform
    >>> st = FrameStats(np.array([0.3]), np.array([1.0]), np.array([50.0]), np.array([10.0]))
    >>> from bayesmix._precision import x64
    >>> with x64():  # Beta(1, 1) is the flat prior: quadrature against the closed form
    ...     a, b = log_evidence(Beta(1.0, 1.0), st, 0.1), log_evidence(Uniform(), st, 0.1)
    >>> bool(abs(float(a[0] - b[0])) < 1e-10)
    True
    """
    for p in type(prior).__mro__:
        for d in type(data).__mro__:
            fn = _EVIDENCE.get((p, d))
            if fn is not None:
                return fn(prior, data, sigma2)
    raise NotImplementedError(
        f"no marginal likelihood for a {type(prior).__name__} prior with "
        f"{type(data).__name__} statistics"
    )


@jax.jit
def evidence_of(prior: Any, data: Any, sigma2: jnp.ndarray) -> jnp.ndarray:
    """:func:`log_evidence`, jitted (the prior's numbers traced: one compilation per type)."""
    return log_evidence(prior, data, sigma2)


def _base(n: jnp.ndarray, sse: jnp.ndarray, sigma2: jnp.ndarray) -> jnp.ndarray:
    """The Gaussian log likelihood of ``n`` pixels with squared residuals ``sse``."""
    return -0.5 * n * jnp.log(2.0 * jnp.pi * sigma2) - 0.5 * sse / sigma2


@_evidence_for((TruncatedNormal, Uniform), FrameStats)
def _ev_conjugate(prior, stats, sigma2):
    return gaussian_log_evidence(stats, sigma2, prior)


@_evidence_for((Beta,), FrameStats)
def _ev_beta(prior, stats, sigma2):
    # Gauss-Legendre over the part of [0, 1] where the likelihood is within e^-40 of its
    # largest value there (closed form: a Gaussian in x). The nodes are held fixed (no
    # derivative flows through them), so the derivatives in sigma and the prior are the
    # quadrature's of the integrand's: exact to the rule's accuracy.
    u, w = _legendre01(_U_NODES)
    s2 = jax.lax.stop_gradient(sigma2 / stats.dd)
    m = jax.lax.stop_gradient(stats.xhat)
    c = jnp.clip(m, 0.0, 1.0)
    r = jnp.sqrt((c - m) ** 2 + 80.0 * s2)
    a, b = jnp.maximum(m - r, 0.0), jnp.minimum(m + r, 1.0)
    t, dt = _clustered(jnp.asarray(u)[None, :], (a <= 0.0)[:, None], (b >= 1.0)[:, None])
    x = a[:, None] + (b - a)[:, None] * t
    log_l = -0.5 * stats.dd[:, None] * (x - stats.xhat[:, None]) ** 2 / sigma2
    lp = prior.log_prob(jnp.clip(x, 0.0, 1.0))
    log_w = jnp.log(jnp.asarray(w))[None, :] + jnp.log(dt) + jnp.log(b - a)[:, None]
    return _base(stats.n, stats.rss, sigma2) + logsumexp(log_l + lp + log_w, axis=1)


def _point_mass_parts(prior: PointMassMixture, stats: FrameStats, sigma2):
    """Log of (prior weight x marginal likelihood) of pure A (x = 1), pure B (x = 0) and the
    continuous part, each (N,)."""
    base = _base(stats.n, stats.rss, sigma2)
    atoms = jnp.stack([jnp.asarray(a) for a in prior.atoms])
    log_c = jnp.log1p(-jnp.sum(atoms))
    la = jnp.log(atoms[0]) + base - 0.5 * stats.dd * (1.0 - stats.xhat) ** 2 / sigma2
    lb = jnp.log(atoms[1]) + base - 0.5 * stats.dd * stats.xhat**2 / sigma2
    lc = log_c + log_evidence(prior.continuous, stats, sigma2)
    return la, lb, lc


@_evidence_for((PointMassMixture,), FrameStats)
def _ev_point_mass(prior, stats, sigma2):
    la, lb, lc = _point_mass_parts(prior, stats, sigma2)
    return jnp.logaddexp(jnp.logaddexp(la, lb), lc)


# ---------------------------------------------------------------------------------------------
# Three references: a quadrature rule on the simplex, per frame.


class SimplexRule(NamedTuple):
    """A frame's likelihood on the simplex as quadrature nodes (K = 3).

    ``x`` (N, G, 3) nodes on the simplex; ``logw`` (N, G) log of node weight times the
    likelihood there (every constant included), so that
    :math:`\\log \\int L_i(x) p(x) dx = \\mathrm{logsumexp}(\\mathrm{logw} + \\log p(x))`;
    ``log_vertex`` (N, 3) the log likelihood at each pure phase.
    """

    x: jnp.ndarray
    logw: jnp.ndarray
    log_vertex: jnp.ndarray


def _rule1(w, chol, rss, n, sigma2):
    """The rule of one frame (see :func:`simplex_rule`)."""
    h = chol.T @ chol
    u = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    ek = jnp.array([0.0, 0.0, 1.0])
    ht = u.T @ h @ u
    that = jnp.linalg.solve(ht, u.T @ h @ (w - ek))
    d = ek + u @ that - w
    base = _base(n, rss + d @ h @ d, sigma2)
    cov = sigma2 * jnp.linalg.inv(ht)
    m1, s1 = that[0], jnp.sqrt(cov[0, 0])
    slope = cov[0, 1] / cov[0, 0]
    s2 = jnp.sqrt(jnp.maximum(cov[1, 1] - cov[0, 1] * slope, 1e-300))

    def inner(t1):
        """log Z2(t1) (t2 | t1 inside [0, 1 - t1]) and the conditional's (m, s)."""
        m2 = that[1] + slope * (t1 - m1)
        top = jnp.maximum(1.0 - t1, 0.0)
        return log_diff_ndtr((0.0 - m2) / s2, (top - m2) / s2), m2, top

    def log_outer(t1):
        return -0.5 * ((t1 - m1) / s1) ** 2 + inner(t1)[0]

    a, b = _zoom(log_outer, jnp.float64(0.0), jnp.float64(1.0), 65)
    a, b = _zoom(log_outer, a, b, 65)
    uo, wo = _legendre01(_OUTER_NODES)
    ui, wi = _legendre01(_INNER_NODES)
    # Clustered at the faces (a Dirichlet's x^(alpha - 1) is not smooth there): the outer
    # range's ends where they are faces, the inner quantile's ends always (t2 = 0 and
    # t2 = 1 - t1 are faces).
    to, dto = _clustered(jnp.asarray(uo), a <= 0.0, b >= 1.0)
    ti, dti = _clustered(jnp.asarray(ui), True, True)
    t1 = a + (b - a) * to  # (G1,)
    lz2, m2, top = inner(t1)
    t2 = tn_quantile(ti[None, :], m2[:, None], s2, 0.0, top[:, None])  # (G1, G2)
    t1g = jnp.broadcast_to(t1[:, None], t2.shape)
    x = jnp.stack([t1g, t2, jnp.maximum(1.0 - t1g - t2, 0.0)], axis=-1).reshape(-1, 3)
    log_phi1 = -0.5 * ((t1 - m1) / s1) ** 2 - jnp.log(s1) - 0.5 * jnp.log(2.0 * jnp.pi)
    lw_outer = (jnp.log(jnp.maximum(b - a, 1e-300)) + jnp.log(jnp.asarray(wo) * dto)
                + log_phi1 + lz2)  # fmt: skip
    logw = (lw_outer[:, None] + jnp.log(jnp.asarray(wi) * dti)[None, :]).reshape(-1)
    # 2 pi sqrt(det cov): the Gaussian's normaliser on the plane's (t1, t2) coordinates.
    logw = logw + base + jnp.log(2.0 * jnp.pi) + 0.5 * jnp.linalg.slogdet(cov)[1]
    eye = jnp.eye(3)
    dv = eye - w[None, :]
    log_vertex = _base(n, rss + jnp.einsum("ki,ij,kj->k", dv, h, dv), sigma2)
    return x, logw, log_vertex


@jax.jit
def _simplex_rule(w, chol, rss, n, sigma2):
    return SimplexRule(*jax.vmap(lambda a, b, c, d: _rule1(a, b, c, d, sigma2))(w, chol, rss, n))


def simplex_rule(stats: SimplexStats, sigma2: float) -> SimplexRule:
    """Every frame's quadrature rule on the simplex (three references), given sigma^2.

    The weights' likelihood is a Gaussian on the plane :math:`\\sum x = 1`; in coordinates
    :math:`t = (x_1, x_2)` it is :math:`\\phi(t_1)\\,\\phi(t_2 \\mid t_1)`, so

    .. math::

        \\int_{\\Delta} L(x) p(x) dx \\propto \\int_0^1 \\phi(t_1)\\, Z_2(t_1)\\,
            E\\big[p(x) \\mid t_1\\big] dt_1,

    with :math:`Z_2(t_1)` the conditional's mass on :math:`[0, 1 - t_1]` (closed form) and the
    inner mean by Gauss-Legendre in the conditional truncated normal's quantile; the outer
    integral by Gauss-Legendre over the range (zoomed on a grid) where
    :math:`\\phi(t_1) Z_2(t_1)` is within :math:`e^{-40}` of its maximum.
    """
    with x64():
        return _simplex_rule(*(jnp.asarray(np.asarray(v, np.float64)) for v in (
            stats.w, stats.chol, stats.rss, stats.n)), jnp.float64(sigma2))  # fmt: skip


@_evidence_for((Dirichlet,), SimplexRule)
def _ev_rule(prior, rule, sigma2):
    return logsumexp(rule.logw + prior.log_prob(rule.x), axis=1)


@_evidence_for((PointMassMixture,), SimplexRule)
def _ev_rule_point_mass(prior, rule, sigma2):
    atoms = jnp.stack([jnp.asarray(a) for a in prior.atoms])
    cont = jnp.log1p(-jnp.sum(atoms)) + log_evidence(prior.continuous, rule, sigma2)
    return logsumexp(jnp.concatenate([jnp.log(atoms)[None, :] + rule.log_vertex,
                                      cont[:, None]], axis=1), axis=1)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Two references with a gain: the gain-marginal likelihood of x on a grid fitted to each frame.


class GridRule(NamedTuple):
    """A frame's likelihood of x (the gain integrated out) as quadrature nodes.

    ``x`` (N, G) Gauss-Legendre nodes over the range where the likelihood lives (found as the
    fast path's gain posteriors find it); ``logw`` (N, G) log of node weight times likelihood.
    Each row is shifted by a constant of its own, which the prior does not see.
    """

    x: jnp.ndarray
    logw: jnp.ndarray


def _gain_rule1(st1: GainStats, sigma2):
    def logf(x):
        return gain_profile(x, st1, sigma2)[0]

    # The range where the likelihood is within e^-40 of its maximum (zoomed as the fast path's
    # gain posteriors are), then Gauss-Legendre on it: smooth there, so 32 nodes suffice.
    a, b = jnp.float64(0.0), jnp.float64(1.0)
    for _ in range(_ZOOM_STEPS):
        a, b = _zoom(logf, a, b, _ZOOM_POINTS)
    u, w = _legendre01(_OUTER_NODES)
    x = a + (b - a) * jnp.asarray(u)
    lp = logf(x)
    return x, jnp.log(jnp.asarray(w) * jnp.maximum(b - a, 1e-300)) + lp - jnp.max(lp)


@jax.jit
def _gain_rule(stats: GainStats, sigma2):
    return GridRule(*jax.lax.map(lambda st: _gain_rule1(st, sigma2), stats, batch_size=_BATCH))


def gain_rule(stats: GainStats, sigma2: float) -> GridRule:
    """Every frame's :class:`GridRule` given sigma^2 (two references with a gain)."""
    with x64():
        data = jax.tree.map(lambda v: jnp.asarray(np.asarray(v, np.float64)), stats)
        return _gain_rule(data, jnp.float64(sigma2))


@_evidence_for((TruncatedNormal, Uniform, Beta), GridRule)
def _ev_grid(prior, rule, sigma2):
    eps = jnp.finfo(rule.x.dtype).eps
    return logsumexp(rule.logw + prior.log_prob(jnp.clip(rule.x, eps, 1.0 - eps)), axis=1)


# ---------------------------------------------------------------------------------------------
# The posterior of one weight under point masses on the pure phases (two references).


@register((PointMassMixture,), FrameStats)
class PointMassPosterior:
    """Pure A (x = 1), pure B (x = 0) or the continuous part's truncated normal posterior:
    the mixture's weights, moments, CDF and quantiles in closed form."""

    @staticmethod
    def _parts(stats, sigma2, prior):
        la, lb, lc = _point_mass_parts(prior, stats, sigma2)
        r = jax.nn.softmax(jnp.stack([la, lb, lc]), axis=0)
        pp = prior_params(prior.continuous)
        m, s = _gaussian(stats, sigma2, pp)
        return r[0], r[1], r[2], m, s, pp

    @classmethod
    def summary(cls, stats, sigma2, prior) -> Summary:
        ra, rb, rc, m, s, pp = cls._parts(stats, sigma2, prior)
        mean_c, sd_c = tn_moments(m, s, pp.lo, pp.hi)
        mean = ra + rc * mean_c
        ex2 = ra + rc * (sd_c**2 + mean_c**2)
        sd = jnp.sqrt(jnp.maximum(ex2 - mean**2, 0.0))
        # The mode of the most probable part: a pure phase, or the continuous part's mode.
        best = jnp.argmax(jnp.stack([ra, rb, rc]), axis=0)
        x = jnp.where(best == 0, 1.0, jnp.where(best == 1, 0.0, jnp.clip(m, pp.lo, pp.hi)))
        return Summary(x, jnp.clip(mean, 0.0, 1.0), sd, (x <= 0.0) | (x >= 1.0),
                       {"p_pure_a": ra, "p_pure_b": rb})  # fmt: skip

    @classmethod
    def mode(cls, stats, sigma2, prior):
        return cls.summary(stats, sigma2, prior).x

    @classmethod
    def expected_sse(cls, stats, sigma2, prior):
        summ = cls.summary(stats, sigma2, prior)
        return stats.rss + stats.dd * (summ.sd**2 + (summ.mean - stats.xhat) ** 2)

    @classmethod
    def cdf(cls, stats, sigma2, prior, x):
        ra, rb, rc, m, s, pp = cls._parts(stats, sigma2, prior)
        a = (pp.lo - m) / s
        inside = jnp.exp(log_diff_ndtr(a, (jnp.clip(x, pp.lo, pp.hi) - m) / s)
                         - log_diff_ndtr(a, (pp.hi - m) / s))  # fmt: skip
        inside = jnp.where(x <= pp.lo, 0.0, inside)
        return jnp.where(x >= 0.0, rb, 0.0) + rc * inside + jnp.where(x >= 1.0, ra, 0.0)

    @classmethod
    def quantiles(cls, stats, sigma2, prior, qs):
        ra, rb, rc, m, s, pp = cls._parts(stats, sigma2, prior)
        q = qs[None, :] + 0.0 * m[:, None]
        ra, rb, rc = ra[:, None], rb[:, None], rc[:, None]
        qc = jnp.clip((q - rb) / jnp.maximum(rc, 1e-300), 1e-300, 1.0 - 1e-16)
        cont = tn_quantile(qc, m[:, None], s[:, None], pp.lo, pp.hi)
        return jnp.where(q <= rb, 0.0, jnp.where(q >= 1.0 - ra, 1.0, cont))


# ---------------------------------------------------------------------------------------------
# The posterior of three weights under point masses on the pure phases.

#: Levels at which the continuous part's marginal quantiles are kept, to mix with the atoms:
#: a uniform grid, so that with 0 and 1 added (the support's ends) it interpolates directly.
FINE_STEP = 0.0025
FINE_LEVELS = tuple(round(FINE_STEP * j, 6) for j in range(1, round(1 / FINE_STEP)))


def simplex_point_mass(fit_c: Any, stats: SimplexStats, prior: PointMassMixture,
                       sigma2: float) -> Any:  # fmt: skip
    """Three weights under :class:`PointMassMixture`: the continuous part's fit ``fit_c`` (its
    quantiles at :data:`FINE_LEVELS`) mixed with the pure phases, each frame's mixture weights
    from the exact marginal likelihoods (:func:`simplex_rule`).

    Each weight's marginal is an atom at 1 (its own pure phase), an atom at 0 (the others')
    and the continuous part: mean and sd exact given the parts', quantiles by inverting the
    mixture's CDF (interpolated in the continuous part's kept quantiles).
    """
    from bayesmix._simplex import SimplexFit

    rule = simplex_rule(stats, sigma2)
    with x64():
        cont = np.asarray(evidence_of(jax.tree.map(jnp.asarray, prior.continuous), rule,
                                      jnp.float64(sigma2)))  # fmt: skip
    atoms = np.asarray(prior.atoms)
    logs = np.concatenate([np.log(atoms)[None, :] + np.asarray(rule.log_vertex),
                           np.log(prior.continuous_weight) + cont[:, None]], axis=1)  # fmt: skip
    r = np.exp(logs - logs.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    k = atoms.size
    ra, rc = r[:, :k], r[:, k:]
    mean = ra + rc * fit_c.mean
    ex2 = ra + rc * (fit_c.sd**2 + fit_c.mean**2)
    sd = np.sqrt(np.maximum(ex2 - mean**2, 0.0))
    # Each weight's quantiles: atoms at 0 (mass p0) and 1 (mass ra), the continuous part's
    # quantile function between, on the uniform grid 0, FINE_STEP, ..., 1.
    qs = np.asarray(FINE_LEVELS)
    grid = np.concatenate([np.zeros((*fit_c.mean.shape, 1)), fit_c.quantiles,
                           np.ones((*fit_c.mean.shape, 1))], axis=-1)  # fmt: skip
    p0 = (1.0 - ra - rc)[..., None]
    u = np.clip((qs - p0) / np.maximum(rc[..., None], 1e-300), 0.0, 1.0) / FINE_STEP
    j = np.minimum(np.floor(u).astype(int), grid.shape[-1] - 2)
    frac = u - j
    cont_q = (np.take_along_axis(grid, j, -1) * (1.0 - frac)
              + np.take_along_axis(grid, j + 1, -1) * frac)  # fmt: skip
    quant = np.where(qs <= p0, 0.0, np.where(qs >= 1.0 - ra[..., None], 1.0, cont_q))
    best = np.argmax(r, axis=1)
    pure = best < k
    x = np.where(pure[:, None], np.eye(k)[np.minimum(best, k - 1)], fit_c.x)
    return SimplexFit(x=x, at_bound=pure | fit_c.at_bound, mean=mean, sd=sd, quantiles=quant,
                      qs=FINE_LEVELS, mc_se=rc * fit_c.mc_se, sampled=fit_c.sampled,
                      sigma2=float(sigma2), sampler=fit_c.sampler, p_pure=ra)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Families: how the unconstrained vector theta makes a prior, and what it is called.


def _sigmoid(t):
    return 1.0 / (1.0 + jnp.exp(-t))


def _moments(stats: Any, sigma2: float) -> tuple[float, float]:
    """Mean and variance of the population of x from the frames' least squares, the
    likelihood's own spread taken out (a start for the iteration); with a gain, from each
    frame's posterior under a flat prior (its grid rule)."""
    if isinstance(stats, GridRule):
        p = np.asarray(jax.nn.softmax(stats.logw, axis=1))
        x = np.asarray(stats.x)
        means = np.sum(p * x, axis=1)
        noise = float(np.mean(np.sum(p * (x - means[:, None]) ** 2, axis=1)))
        m, v = float(np.mean(means)), float(np.var(means)) - noise
    else:
        xh = np.clip(np.asarray(stats.xhat, np.float64), 0.0, 1.0)
        noise = float(np.mean(sigma2 / np.asarray(stats.dd, np.float64)))
        m, v = float(np.mean(xh)), float(np.var(xh)) - noise
    # Start broad (at least a third of a flat prior's variance): from a narrow start the
    # iteration would first have to climb out of a prior that contradicts most frames.
    return m, max(v, 1.0 / 36.0)


class TruncNormalFamily:
    """Truncated normal on [0, 1]: ``loc = sigmoid(t0)``, ``scale = exp(t1)``."""

    name = "truncnormal"
    #: The natural parameter each coordinate of theta sets.
    controls = ("loc", "scale")

    @staticmethod
    def init(stats: FrameStats, sigma2: float) -> np.ndarray:
        m, v = _moments(stats, sigma2)
        m = min(max(m, 0.02), 0.98)
        return np.array([math.log(m / (1.0 - m)), 0.5 * math.log(v)])

    @staticmethod
    def prior(theta):
        return _unvalidated(TruncatedNormal, _sigmoid(theta[0]), jnp.exp(theta[1]), 0.0, 1.0)

    @classmethod
    def natural(cls, theta) -> dict:
        p = cls.prior(theta)
        mean, sd = tn_moments(p.loc, p.scale, 0.0, 1.0)
        return {"loc": p.loc, "scale": p.scale, "mean": mean, "sd": sd}

    @staticmethod
    def concrete(params: dict) -> TruncatedNormal:
        return TruncatedNormal(params["loc"], params["scale"], 0.0, 1.0)


class BetaFamily:
    """Beta(a, b) with a, b >= 1: ``a = 1 + exp(t0)``, ``b = 1 + exp(t1)``."""

    name = "beta"
    #: The natural parameter each coordinate of theta sets.
    controls = ("a", "b")

    @staticmethod
    def init(stats: FrameStats, sigma2: float) -> np.ndarray:
        m, v = _moments(stats, sigma2)
        m = min(max(m, 0.02), 0.98)
        total = max(m * (1.0 - m) / v - 1.0, 2.5)
        a, b = max(m * total, 1.1), max((1.0 - m) * total, 1.1)
        return np.log([a - 1.0, b - 1.0])

    @staticmethod
    def prior(theta):
        return _unvalidated(Beta, 1.0 + jnp.exp(theta[0]), 1.0 + jnp.exp(theta[1]))

    @classmethod
    def natural(cls, theta) -> dict:
        p = cls.prior(theta)
        tot = p.a + p.b
        return {"a": p.a, "b": p.b, "mean": p.a / tot,
                "sd": jnp.sqrt(p.a * p.b / (tot**2 * (tot + 1.0)))}  # fmt: skip

    @staticmethod
    def concrete(params: dict) -> Beta:
        return Beta(params["a"], params["b"])


class PointMassFamily:
    """Pure A, pure B and a truncated normal: ``atoms = softmax(t0, t1, 0)[:2]``, the
    truncated normal as :class:`TruncNormalFamily` from ``t2, t3``."""

    name = "point_mass"
    #: The natural parameter each coordinate of theta sets.
    controls = ("p_pure_a", "p_pure_b", "loc", "scale")

    @staticmethod
    def init(stats: FrameStats, sigma2: float) -> np.ndarray:
        return np.concatenate([np.log([0.1 / 0.8, 0.1 / 0.8]),
                               TruncNormalFamily.init(stats, sigma2)])  # fmt: skip

    @staticmethod
    def prior(theta):
        p = jax.nn.softmax(jnp.concatenate([theta[:2], jnp.zeros(1, theta.dtype)]))
        return _unvalidated(PointMassMixture, (p[0], p[1]), TruncNormalFamily.prior(theta[2:]))

    @classmethod
    def natural(cls, theta) -> dict:
        p = cls.prior(theta)
        mean_c, _ = tn_moments(p.continuous.loc, p.continuous.scale, 0.0, 1.0)
        pa, pb = p.atoms
        return {"p_pure_a": pa, "p_pure_b": pb, "loc": p.continuous.loc,
                "scale": p.continuous.scale, "mean": pa + (1.0 - pa - pb) * mean_c}  # fmt: skip

    @staticmethod
    def concrete(params: dict) -> PointMassMixture:
        return PointMassMixture((params["p_pure_a"], params["p_pure_b"]),
                                TruncatedNormal(params["loc"], params["scale"]))  # fmt: skip


class DirichletFamily:
    """Dirichlet(alpha) on three weights with every alpha_k >= 1: ``alpha = 1 + exp(t)``."""

    name = "dirichlet"
    #: The natural parameter each coordinate of theta sets.
    controls = ("alpha_0", "alpha_1", "alpha_2")

    @staticmethod
    def init(stats: SimplexStats, sigma2: float) -> np.ndarray:
        return np.zeros(3)  # alpha = 2: a mild pull to the middle, left by the data

    @staticmethod
    def prior(theta):
        return _unvalidated(Dirichlet, 1.0 + jnp.exp(theta))

    @classmethod
    def natural(cls, theta) -> dict:
        alpha = 1.0 + jnp.exp(theta)
        out = {f"alpha_{k}": alpha[k] for k in range(3)}
        out.update({f"mean_{k}": alpha[k] / jnp.sum(alpha) for k in range(3)})
        return out

    @staticmethod
    def concrete(params: dict) -> Dirichlet:
        return Dirichlet(tuple(params[f"alpha_{k}"] for k in range(3)))


class SimplexPointMassFamily:
    """Pure phases of three references and a flat Dirichlet between them:
    ``atoms = softmax(t0, t1, t2, 0)[:3]``."""

    name = "point_mass"
    #: The natural parameter each coordinate of theta sets.
    controls = ("p_pure_0", "p_pure_1", "p_pure_2")

    @staticmethod
    def init(stats: SimplexStats, sigma2: float) -> np.ndarray:
        return np.zeros(3)

    @staticmethod
    def prior(theta):
        p = jax.nn.softmax(jnp.concatenate([theta, jnp.zeros(1, theta.dtype)]))
        flat = _unvalidated(Dirichlet, jnp.ones(3, theta.dtype))
        return _unvalidated(PointMassMixture, (p[0], p[1], p[2]), flat)

    @classmethod
    def natural(cls, theta) -> dict:
        p = jax.nn.softmax(jnp.concatenate([theta, jnp.zeros(1, theta.dtype)]))
        return {f"p_pure_{k}": p[k] for k in range(3)}

    @staticmethod
    def concrete(params: dict) -> PointMassMixture:
        return PointMassMixture(tuple(params[f"p_pure_{k}"] for k in range(3)), Dirichlet(1.0))


#: family name -> (two references, three references)
FAMILIES: dict[str, tuple[type | None, type | None]] = {
    "truncnormal": (TruncNormalFamily, None),
    "beta": (BetaFamily, None),
    "dirichlet": (None, DirichletFamily),  # two references: Learn.resolve makes it 'beta'
    "point_mass": (PointMassFamily, SimplexPointMassFamily),
}


# ---------------------------------------------------------------------------------------------
# The objective and the fit.


@cache
def _objective(family: type, joint: bool, n_blocks: int):
    """Sum of the frames' log marginal likelihoods (plus sigma's log prior density when sigma
    is learned too), as a function of theta = ([log sigma / sigma0], family's parameters).
    Cached: one function (one compilation) per family."""

    def objective(theta, *, args):
        data, valid, ig, s0 = args
        if joint:
            sigma2 = s0**2 * jnp.exp(2.0 * theta[0])
            theta = theta[1:]
        else:
            sigma2 = s0**2
        prior = family.prior(theta)
        ev = _in_blocks(lambda d: (log_evidence(prior, d, sigma2),), data, n_blocks)[0]
        total = jnp.sum(jnp.where(valid, ev, 0.0))
        if joint:  # sigma's prior density (the mode in sigma, as the fast path's EM)
            total = total - (2.0 * ig[0] + 1.0) * 0.5 * jnp.log(sigma2) - ig[1] / sigma2
        return total

    objective.__name__ = f"learn_{family.name}"
    return objective


@cache
def _natural(family: type, joint: bool):
    """The family's natural parameters and their Jacobian in theta, jitted once per family."""

    def natural(theta):
        return family.natural(theta[1:] if joint else theta)

    return jax.jit(lambda theta: (natural(theta), jax.jacobian(natural)(theta)))


def learn_prior(
    stats: Any, spec: Learn, *, sigma2: float, sigma_fixed: bool, ig: tuple[float, float],
    max_iter: int = 200,
) -> tuple[Any, float, PopulationFit]:  # fmt: skip
    """Learn ``spec``'s family from every frame (see the module's notes).

    Parameters
    ----------
    stats : FrameStats or SimplexStats
        The frames' statistics (two or three references).
    spec : Learn
        The family (resolved for the number of references).
    sigma2 : float
        The start (two references) or the value (three, or ``sigma_fixed``) of sigma^2.
    sigma_fixed : bool
        sigma was given by the user: learn the prior only.
    ig : (float, float)
        The sigma prior's inverse-gamma parameters.

    Returns
    -------
    prior, sigma2, PopulationFit
        The learned prior (validated, plain numbers), sigma^2 (learned jointly with two
        references), and the fit with the hyperparameters' uncertainty.
    """
    simplex = isinstance(stats, SimplexStats)
    gained = isinstance(stats, GainStats)
    family = FAMILIES[spec.family][1 if simplex else 0]
    if family is None:  # resolve() refuses these first; kept for direct callers
        raise InputError(f"learn({spec.family!r}) is not available with {stats.n_refs} references")
    joint = not (simplex or gained or sigma_fixed)
    n = stats.n_frames
    size = bucket_size(n)
    with x64():
        if simplex or gained:
            data = simplex_rule(stats, sigma2) if simplex else gain_rule(stats, sigma2)
            valid = np.ones(n, bool)
            size = n
        else:
            data, valid = pad_stats(stats, size)
            data = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), data)
        theta0 = family.init(data if gained else stats, sigma2)
        if joint:
            theta0 = np.concatenate([[0.0], theta0])
        args = (data, jnp.asarray(valid), jnp.asarray(ig, jnp.float64),
                jnp.float64(math.sqrt(sigma2)))  # fmt: skip
        obj = _objective(family, joint, 1 if simplex or gained else _n_blocks(size))
        may_edge = np.r_[[False] * joint, [True] * (theta0.size - joint)]
        theta, value, cov, at_edge, it, ok = maximize(obj, theta0, args, max_iter=max_iter,
                                                      may_edge=may_edge)  # fmt: skip
        values, jac = jax.device_get(_natural(family, joint)(jnp.asarray(theta)))
        params = {k: float(v) for k, v in values.items()}
        sds = natural_sd(jac, cov)
        edge_names = tuple(name for name, hit in zip(family.controls, at_edge[joint:],
                                                     strict=True) if hit)  # fmt: skip
        sds.update({name: float("nan") for name in edge_names})
    if joint:
        sigma2 = sigma2 * math.exp(2.0 * float(theta[0]))
    fit = PopulationFit(family=family.name, params=params, sd=sds, theta=theta, cov=cov,
                        log_evidence=value, n_iter=it, converged=ok,
                        at_edge=edge_names)  # fmt: skip
    return family.concrete(params), float(sigma2), fit
