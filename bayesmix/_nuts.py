"""The full path: NUTS (NumPyro) on the per-frame statistics, for the joint posterior.

The model samples every weight ``x_i`` and the noise scale jointly. Its likelihood is the exact
all-pixel likelihood written on the statistics (:func:`bayesmix._likelihood.centred_loglik`), so a
gradient costs O(N), not O(N x pixels), and the float32-safe centred form keeps HMC's energy
error meaningful with millions of pixels. Chains start at draws from the analytic posterior
around the MAP (the typical set), with the mass matrix initialised from its variances.

Noise models: a variance map weights the statistics (one weighted pass) and runs the same
model; per-frame noise scales are sampled on the statistics with a non-centred hierarchical
prior (:func:`_per_frame_model`); Poisson and Student-t pixels are sampled on the pixel-level
likelihood (:func:`_pixel_model`), which needs the pixels in memory (a size guard,
:data:`MAX_PIXEL_VALUES`).

A learned prior (``prior='learn'``, two references, truncated-normal family) is sampled as a
hierarchical model: the population's (loc, scale) with every weight and sigma, each weight
centred or non-centred according to how well its frame pins it down (:func:`_learn_model`).

A random walk along the frames (``temporal='random_walk'``) is sampled on the statistics too,
in non-centred coordinates that are exact within the bounds and whitened given the walk's step q
(:func:`_walk_model`); q and sigma are sampled with the weights.

Every model runs through :func:`bayesmix._hmc.run_nuts`: one program per model, options and
shape, compiled once and reused by later calls on new data.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._devices import on_device
from bayesmix._errors import InputError
from bayesmix._hmc import run_nuts
from bayesmix._io import prepare, spectral_frames
from bayesmix._likelihood import centred_reference, centred_total, gain_terms
from bayesmix._likelihood import loglik as loglik_fn
from bayesmix._map import _check_options, _check_sequence_options, _fit, _leading, _stats_for
from bayesmix._model import MixingModel, check_nuts, make_model
from bayesmix._precision import x64
from bayesmix._results import MapResult
from bayesmix._stats import BasisStats, FrameStats, GainStats, SimplexStats
from bayesmix.noise import PerFrame, PoissonGaussian, StudentT, check_noise, noise_spec
from bayesmix.priors import Dirichlet, Learn, SigmaPrior, XPrior, _unvalidated
from bayesmix.temporal import Independent, check_temporal, temporal_spec

__all__ = ["sample", "sample_stats"]

_CHAIN_METHODS = ("auto", "vectorized", "parallel", "sequential")
_DTYPES = ("float32", "float64")


class _Frame(NamedTuple):
    """Per-frame affine map of the sampler's coordinates: t = loc + scale * w, in logit space."""

    loc: jnp.ndarray
    scale: jnp.ndarray


def _log_prior_x(prior: XPrior, x):
    """The prior's own ``log_prob``, evaluated a rounding step inside its bounds: in float32
    ``lo + span * sigmoid(t)`` reaches a bound for |t| > 17, where a Beta density is 0 or
    infinite; the step inside keeps it finite (the mass out there is below 1e-7)."""
    lo, hi = prior.bounds
    eps = (hi - lo) * jnp.finfo(x.dtype).eps
    return prior.log_prob(jnp.clip(x, lo + eps, hi - eps))


def _model(stats, x_ref, sse_ref, ig, affine, u_scale, prior):
    """NumPyro model on the statistics, in standardised coordinates.

    ``w`` (one per frame) and ``v`` are the sampled coordinates; the weights are
    ``x = lo + span * sigmoid(loc + scale * w)`` and the noise scale
    ``sigma = sigma_ref * exp(u_scale * v)``, sampled in units of sigma_ref (``stats``,
    ``sse_ref`` and the inverse-gamma's beta ``ig[1]`` divided by it: O(1) numbers in float32
    whatever the data's units). ``loc``/``scale`` come from the analytic posterior
    at the MAP and ``u_scale = 1 / sqrt(2 n)``, so the posterior is close to a standard normal in
    every coordinate: NUTS then needs few leapfrog steps, and the mass matrix adaptation starts
    from the right scale (a regularised diagonal estimate cannot resolve sigma's relative width
    of 1e-4 on its own). The Jacobian of the map is included, so the posterior of (x, sigma) is
    exactly the model's.
    """
    import numpyro
    import numpyro.distributions as dist

    lo, hi = prior.bounds
    w = numpyro.sample("w", dist.ImproperUniform(dist.constraints.real, (), affine.loc.shape))
    v = numpyro.sample("v", dist.ImproperUniform(dist.constraints.real, (), ()))
    t = affine.loc + affine.scale * w
    log_s = jax.nn.log_sigmoid(t)
    log_1ms = log_s - t  # log sigmoid(-t), without a second log_sigmoid
    x = numpyro.deterministic("x", lo + (hi - lo) * jnp.exp(log_s))
    u = u_scale * v
    # log |dx/dw| = log(span * scale) + log_s + log_1ms; the first term is constant.
    numpyro.factor("prior_x", jnp.sum(_log_prior_x(prior, x) + log_s + log_1ms))
    # Jeffreys on sigma is flat in u = log(sigma / sigma_ref); the inverse-gamma on sigma^2 adds
    # -2 alpha u - beta / sigma^2 (the Jacobian included).
    numpyro.factor("sigma_prior", -2.0 * ig[0] * u - ig[1] * jnp.exp(-2.0 * u))
    numpyro.deterministic("sigma", jnp.exp(u))  # in units of sigma_ref
    numpyro.factor("loglik", centred_total(stats, x, u, x_ref, sse_ref))


def _stick_log_x(t):
    """Stick-breaking map of ``t`` (..., K-1) to log weights (..., K) on the simplex, and the log
    Jacobian (...,) of x_{1..K-1} in t, all in log space (exact at any float precision).

    As NumPyro's ``StickBreakingTransform`` (t = 0 maps to the centre 1/K): with
    ``s_k = t_k - log(K - 1 - k)`` and ``z_k = sigmoid(s_k)``, ``x_k = z_k prod_{j<k} (1 - z_j)``;
    ``log |J| = sum_{k<K-1} (log x_k + log(1 - z_k))`` (Stan's simplex transform).
    """
    km1 = t.shape[-1]
    s = t - jnp.log(km1 - jnp.arange(km1, dtype=t.dtype))
    log_z = jax.nn.log_sigmoid(s)
    log_1mz = log_z - s  # log sigmoid(-s)
    rest = jnp.cumsum(log_1mz, axis=-1)
    shifted = jnp.concatenate([jnp.zeros_like(rest[..., :1]), rest[..., :-1]], axis=-1)
    log_x = jnp.concatenate([log_z + shifted, rest[..., -1:]], axis=-1)
    log_jac = jnp.sum(log_x[..., :-1] + log_1mz, axis=-1)
    return log_x, log_jac


def _stick_inverse(x: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_stick_log_x` for weights strictly inside the simplex, (N, K-1)."""
    k = x.shape[-1]
    rest = 1.0 - np.concatenate([np.zeros_like(x[..., :1]), np.cumsum(x[..., :-2], axis=-1)], -1)
    z = np.clip(x[..., :-1] / rest, 1e-300, 1.0 - 1e-16)
    return np.log(z) - np.log1p(-z) + np.log(k - 1 - np.arange(k - 1))


class _SimplexFrame(NamedTuple):
    """Per-frame affine map of the sampler's coordinates: t = loc + w @ root, root (N, K-1, K-1)
    the symmetric inverse square root of the posterior's precision in t at loc."""

    loc: jnp.ndarray
    root: jnp.ndarray


def _simplex_centred(stats: SimplexStats, x, u, x_ref, sse_ref):
    """The K >= 3 total log-likelihood in a float32-safe centred form (up to a constant).

    ``stats.chol`` is in units of sigma_ref (M / sigma_ref) and ``sse_ref`` the total squared
    error at ``x_ref`` (the MAP) in those units, summed in float64. With ``a = x - w``,
    ``b = x_ref - w``, ``q(x) - q(x_ref) = (M (a - b)) . (M (a + b))``: O(1) numbers, no
    cancellation of n-sized terms (as :func:`bayesmix._likelihood.centred_loglik`).
    """
    d = jnp.einsum("nij,nj->ni", stats.chol, x - x_ref)
    s = jnp.einsum("nij,nj->ni", stats.chol, x + x_ref - 2.0 * stats.w)
    ds = jnp.sum(d * s)
    n = jnp.sum(stats.n)
    return -0.5 * sse_ref * jnp.expm1(-2.0 * u) - 0.5 * ds * jnp.exp(-2.0 * u) - n * u


def _simplex_model(stats, x_ref, sse_ref, ig, affine, u_scale, prior):
    """NumPyro model for K >= 3 references, in standardised coordinates.

    ``w`` (N, K-1) and ``v`` are sampled; the weights are the stick-breaking image of
    ``t = loc + w @ root`` (NumPyro's simplex transform for ``Dirichlet``, written in log space so
    that the Dirichlet density (``prior.log_prob_log``) and the Jacobian are exact even where a
    weight underflows), ``sigma = sigma_ref * exp(u_scale * v)`` as in :func:`_model`. ``loc`` is
    the MAP nudged inside the simplex and ``root`` whitens the posterior there, so each frame's
    posterior is close to a standard normal in ``w``.
    """
    import numpyro
    import numpyro.distributions as dist

    shape = affine.loc.shape
    w = numpyro.sample("w", dist.ImproperUniform(dist.constraints.real, (), shape))
    v = numpyro.sample("v", dist.ImproperUniform(dist.constraints.real, (), ()))
    t = affine.loc + jnp.einsum("nj,nji->ni", w, affine.root)
    log_x, log_jac = _stick_log_x(t)
    x = numpyro.deterministic("x", jnp.exp(log_x))
    u = u_scale * v
    # The Dirichlet, plus the Jacobian of x in t (that of t in w is constant).
    numpyro.factor("prior_x", jnp.sum(prior.log_prob_log(log_x)) + jnp.sum(log_jac))
    numpyro.factor("sigma_prior", -2.0 * ig[0] * u - ig[1] * jnp.exp(-2.0 * u))
    numpyro.deterministic("sigma", jnp.exp(u))  # in units of sigma_ref
    numpyro.factor("loglik", _simplex_centred(stats, x, u, x_ref, sse_ref))


@jax.jit
def _stick_derivatives(loc, prior):
    """At ``loc`` (N, K-1): the Jacobian of the weights in t (N, K, K-1) and the Hessian of the
    prior and Jacobian terms (N, K-1, K-1); one compiled program."""

    def x_of(t):
        return jnp.exp(_stick_log_x(t)[0])

    def prior_terms(t):
        log_x, log_jac = _stick_log_x(t)
        return prior.log_prob_log(log_x) + log_jac

    return jax.vmap(jax.jacfwd(x_of))(loc), jax.vmap(jax.hessian(prior_terms))(loc)


def _simplex_start(stats: SimplexStats, prior: Dirichlet, s2: float, x_map: np.ndarray,
                   sd: np.ndarray):  # fmt: skip
    """``(loc, root)`` of the standardised coordinates (float64).

    ``x_map`` is the fast path's exact MAP (:func:`bayesmix._simplex.simplex_mode`, at the same
    sigma^2 ``s2``); ``loc`` its stick-breaking coordinates after nudging it inside the simplex
    by about the posterior sd (a weight exactly 0 has no finite coordinate). ``root`` comes from
    the Gauss-Newton precision of the log posterior in t at ``loc`` (likelihood
    J^T H J / sigma^2, plus the exact Hessian of the prior and Jacobian terms), so the sampler's
    coordinates are whitened up to the curvature the Gaussian approximation misses. Its
    eigenvalues are floored at 1/3 (an sd in t of at most ~1.7, that of a flat Dirichlet's own
    stick-breaking coordinates): near a face, where x_k is ~exp(t_k), the curvature at the
    nudged point says little about the posterior's width.
    """
    chol = np.asarray(stats.chol, np.float64)
    k = chol.shape[-1]
    x_map = np.asarray(x_map, np.float64)
    eps = np.clip(np.min(sd, axis=1), 1e-8, 1e-2)[:, None]
    x0 = (1.0 - eps) * x_map + eps / k
    loc = _stick_inverse(x0)
    h = np.einsum("nji,njk->nik", chol, chol) / s2
    with x64():
        jac, hp = jax.device_get(_stick_derivatives(jnp.asarray(loc), prior))
    prec = np.einsum("nki,nkl,nlj->nij", jac, h, jac) - hp
    prec = 0.5 * (prec + np.swapaxes(prec, 1, 2))
    val, vec = np.linalg.eigh(prec)
    val = np.clip(val, 1.0 / 3.0, 1e12)
    # root = prec^{-1/2} (symmetric): t - loc = w @ root has covariance root^T root = prec^-1.
    root = np.einsum("nij,nj,nkj->nik", vec, 1.0 / np.sqrt(val), vec)
    return loc, root


def _simplex_loglik(stats: SimplexStats, x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per-frame log p(y_i | x_i, sigma) for K >= 3 references (float64), shape (chain, draw, N)."""
    w = np.asarray(stats.w, np.float64)
    chol = np.asarray(stats.chol, np.float64)
    r = np.einsum("nij,cdnj->cdni", chol, x - w)
    sse = np.asarray(stats.rss, np.float64) + np.sum(r * r, axis=-1)
    s = sigma[..., None]
    n = np.asarray(stats.n, np.float64)
    return -n * (np.log(s) + 0.5 * math.log(2.0 * math.pi)) - 0.5 * sse / s**2


def _chain_method(method: str, num_chains: int, n_devices: int) -> str:
    if method not in _CHAIN_METHODS:
        raise InputError(f"chain_method must be one of {_CHAIN_METHODS}, got {method!r}")
    if method != "auto":
        return method
    # Parallel chains need one device each: several GPUs, or CPU host devices set up before JAX
    # starts (the CLI does; a library must not). Otherwise vectorise the chains on one device.
    return "parallel" if n_devices >= num_chains > 1 else "vectorized"


def _check_counts(**counts: Any) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")


def _standardise(fit: MapResult) -> tuple[np.ndarray, np.ndarray]:
    """Logit-space location and scale of each frame's analytic posterior (given sigma)."""
    from scipy.special import logit

    lo, hi = fit.prior.bounds
    span = hi - lo
    eps = 1e-6 * span  # strictly inside the bounds, where the logit is finite
    xm = np.clip(fit.mean, lo + eps, hi - eps)
    jac = span / ((xm - lo) * (hi - xm))
    return logit((xm - lo) / span), np.clip(fit.sd * jac, 1e-3, 1e3)


# --------------------------------------------------------------------------------------------
# The random walk along the frames (temporal='random_walk'): a non-centred, exact sampler.


class _WalkData(NamedTuple):
    """The walk's inputs in (sequence, time) order: the walk itself (the start's Gaussian
    factor ``(mu0, s0)``; a flat start has ``s0 = 0`` and the logistic map for its first
    frames) and the terms of the whitening (:func:`_walk_w_of`)."""

    reset: jnp.ndarray  #: 1 at the first frame of a sequence
    gap: jnp.ndarray  #: the time since the previous frame (normalised time; 1 at a start)
    lo: jnp.ndarray
    hi: jnp.ndarray
    mu0: jnp.ndarray
    s0: jnp.ndarray
    p_lik: jnp.ndarray  #: each frame's likelihood precision dd / sigma_hat^2
    rhs: jnp.ndarray  #: p_lik * xhat + start_prec * start_centre
    start_prec: jnp.ndarray  #: the start's precision in x (0 after a start)
    start_centre: jnp.ndarray  #: w at a start is (x_lin - start_centre) / start_scale
    start_scale: jnp.ndarray  #: (1 after a start)


class _QScale(NamedTuple):
    """log q (normalised time) = lq_lo + (lq_hi - lq_lo) * sigmoid(t0 + t_scale * v_q); with
    q fixed, log q = t0 (and the rest is unused)."""

    t0: jnp.ndarray
    t_scale: jnp.ndarray
    lq_lo: jnp.ndarray
    lq_hi: jnp.ndarray


@jax.custom_jvp
def _tn_quantile(w, a, b, logs):
    """``d = F^-1(Phi(w))``, F the CDF of N(0, 1) truncated to (a, b) (a <= 0 <= b), in the
    lower tail of w (the upper reflected), so neither tail loses precision: the probability
    inverted is at most 3/4 and, in float64, above 1e-300 for |w| < 37 (Z >= Phi(0.005) - 1/2
    over q's range). ``logs`` = (log Phi(a), log Phi(-b), log Phi(-|w|), log Z), computed once
    by the caller; their tangents are not used (d's derivatives in w, a, b are complete)."""
    from jax.scipy.special import ndtri

    la, lnb, lw, log_z = logs
    upper = w >= 0
    near = jnp.where(upper, lnb, la)  # the bound on w's side, reflected for w >= 0
    dd = ndtri(jnp.exp(jnp.logaddexp(near, log_z + lw)))
    return jnp.clip(jnp.where(upper, -dd, dd), a, b)


@_tn_quantile.defjvp
def _tn_quantile_jvp(primals, tangents):
    # From Phi(d) = Phi(a) (1 - Phi(w)) + Phi(b) Phi(w), in logs (the inverse's own
    # operations are not differentiated).
    from bayesmix._truncnorm import _log1mexp

    w, a, b, logs = primals
    dw, da, db, _ = tangents
    _, _, lw, log_z = logs
    d = _tn_quantile(w, a, b, logs)
    lw_other = _log1mexp(lw)  # log Phi(|w|)
    upper = w >= 0
    log_lower = jnp.where(upper, lw_other, lw)  # log Phi(w)
    log_upper = jnp.where(upper, lw, lw_other)  # log Phi(-w)
    h = 0.5 * d * d
    gw = jnp.exp(log_z - 0.5 * w * w + h)
    ga = jnp.exp(-0.5 * a * a + log_upper + h)
    gb = jnp.exp(-0.5 * b * b + log_lower + h)
    return d, gw * dw + ga * da + gb * db


def _tn_step(w, a, b):
    """The step ``d`` in (a, b) (a <= 0 <= b) of the standard coordinate ``w``:
    ``d = F^-1(Phi(w))`` with F the CDF of N(0, 1) truncated to (a, b), and ``log Z``,
    ``Z = Phi(b) - Phi(a)``.

    A standard-normal w maps to the truncated normal, so the density of w that gives d the
    un-normalised density ``phi(d) 1[a < d < b]`` is ``phi(w) Z``: smooth in (a, b), with w's
    scale 1 even when the previous weight sits at a bound (a -> 0), where a map with
    ``f'(0) = 1`` (``c tanh(w / c)``, ``c = -a``) squeezes w's range on that side to the
    width |a| and makes a funnel (measured: hundreds of divergences near a bound). Far from
    the bounds d = w.
    """
    from bayesmix._truncnorm import log_ndtr

    la, lnb = log_ndtr(a), log_ndtr(-b)
    # Z = 1 - Phi(a) - Phi(-b), both at most 1/2: Z >= 0.004 over q's range, no cancellation.
    log_z = jnp.log1p(-(jnp.exp(la) + jnp.exp(lnb)))
    lw = log_ndtr(-jnp.abs(w))
    return _tn_quantile(w, a, b, (la, lnb, lw, log_z)), log_z


def _walk_w_of(z, q, data: _WalkData):
    """The standard coordinates ``w`` of the sampler's ``z`` (sorted order) at step sd ``q``,
    and the log Jacobian ``log |det dw/dz|`` (up to a constant).

    ``x_lin = m(q) + R(q)^-1 z`` with ``Q(q) = R^T R`` (``R`` lower bidiagonal) the precision
    of x in the walk's Gaussian posterior without the bounds (at the fast path's sigma) and
    ``m(q)`` its mean; w are the steps of ``x_lin`` in standard units,
    ``w_t = (x_lin_t - x_lin_{t-1}) / (q sqrt(gap_t))`` (``(x_lin_t - centre) / scale`` at a
    sequence's start). Without the bounds this is the exact posterior of w given q whitened:
    z is then a standard normal independent of q, so neither the strong correlation of w
    along a sequence (each x_t is a sum of them, and the frames pin slow drifts far better
    than the walk does) nor q's scale of them slows the sampler. The map is affine in z given
    q; its Jacobian depends on q and is included.

    ``Q`` is tridiagonal; one backward pass factors it and solves ``R^T u = rhs``, one forward
    pass ``x_lin = R^-1 (u + z)``.
    """
    k = jnp.where(data.reset > 0, 0.0, 1.0 / (q * q * data.gap))
    k_next = jnp.concatenate([k[1:], jnp.zeros_like(k[:1])])
    diag = data.p_lik + data.start_prec + k + k_next
    tiny = jnp.finfo(z.dtype).tiny

    def back(carry, inp):
        a_next, u_next = carry
        d, e, r = inp  # e = Q[i + 1, i]
        b_next = e / a_next
        a = jnp.sqrt(jnp.maximum(d - b_next * b_next, tiny))
        u = (r - b_next * u_next) / a
        return (a, u), (a, b_next, u)

    one = jnp.ones((), z.dtype)
    _, (a, b_next, u) = jax.lax.scan(back, (one, 0.0 * one), (diag, -k_next, data.rhs),
                                     reverse=True)  # fmt: skip
    b = jnp.concatenate([jnp.zeros_like(b_next[:1]), b_next[:-1]])  # R[i, i - 1]

    def fwd(y_prev, inp):
        zt, at, bt, ut = inp
        y = (ut + zt - bt * y_prev) / at
        return y, (y, y - y_prev)

    _, (y, dy) = jax.lax.scan(fwd, 0.0 * one, (z, a, b, u))
    first = data.reset > 0
    step = jnp.where(first, data.start_scale, q * jnp.sqrt(data.gap))
    w = jnp.where(first, y - data.start_centre, dy) / step
    return w, -jnp.sum(jnp.log(a)) - jnp.sum(jnp.log(step))


def _walk_x(w, q, data: _WalkData, *, flat_start: bool):
    """The weights (sorted order) of the standard coordinates ``w`` at step sd ``q`` (per unit
    normalised time), and the log density of ``w`` summed: exactly the globally truncated walk
    in x, mapped to w (see :func:`_walk_model`).

    Each step: ``x_t = centre + scale * d_t`` with ``d_t`` the image of ``w_t`` in
    ``((lo - centre) / scale, (hi - centre) / scale)`` (:func:`_tn_step`), ``(centre, scale)``
    the previous weight and ``q sqrt(gap)`` along a sequence, the prior's ``(mu0, s0)`` at its
    start; the density of ``w_t`` is ``phi(w_t) Z_t``. A flat start is
    ``x = lo + (hi - lo) sigmoid(w)`` with its log Jacobian.
    """
    lo, hi = data.lo, data.hi

    def step(x_prev, inp):
        wt, reset, sg = inp
        first = reset > 0
        if flat_start:
            centre = jnp.where(first, 0.5 * (lo + hi), x_prev)
            scale = jnp.where(first, 1.0, q * sg)
        else:
            centre = jnp.where(first, data.mu0, x_prev)
            scale = jnp.where(first, data.s0, q * sg)
        d, log_z = _tn_step(wt, (lo - centre) / scale, (hi - centre) / scale)
        x = centre + scale * d
        ld = -0.5 * wt * wt + log_z
        if flat_start:
            log_s = jax.nn.log_sigmoid(wt)
            x = jnp.where(first, lo + (hi - lo) * jnp.exp(log_s), x)
            ld = jnp.where(first, log_s + (log_s - wt), ld)  # log s + log(1 - s)
        # Round-off cannot leave the interval (the next step's room stays >= 0).
        x = jnp.clip(x, lo, hi)
        return x, (x, ld)

    init = jnp.asarray(0.5, w.dtype) * (lo + hi)
    _, (x, ld) = jax.lax.scan(step, init, (w, data.reset, jnp.sqrt(data.gap)))
    return x, jnp.sum(ld)


def _flat_start_w(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The standard coordinate of a flat start's weight ``x = lo + (hi - lo) sigmoid(w)``."""
    from scipy.special import logit

    return logit(np.clip((x - lo) / (hi - lo), 1e-12, 1.0 - 1e-12))


def _ig_in_units(fit: MapResult, sigma_ref: float) -> np.ndarray:
    """The inverse-gamma's (alpha, beta) on sigma^2 in units of sigma_ref^2 (Jeffreys: 0, 0)."""
    alpha, beta = np.asarray(fit.sigma_prior.ig_params, np.float64)
    return np.array([alpha, beta / float(sigma_ref) ** 2])


def _walk_model(stats, x_ref, sse_ref, ig, u_scale, data, qs, *, flat_start: bool,
                learn_q: bool, learn_sigma: bool):  # fmt: skip
    """NumPyro model of the random walk, non-centred and exact within the bounds.

    The walk's standard coordinates ``w`` (one per frame, in (sequence, time) order;
    :func:`_walk_x`): each step ``d_t = (x_t - x_{t-1}) / (q sqrt(gap_t))`` is the image of
    ``w_t`` under the truncated normal's quantile map onto the range that keeps ``x_t`` within
    the bounds, and the density of ``w`` is ``prod_t phi(w_t) Z_t``, ``Z_t`` the mass of that
    range: mapped to x (the Jacobian ``q sqrt(gap_t) Z_t phi(w_t) / phi(d_t)`` of each step),
    it is the walk ``N(x_1; mu0, s0^2) prod_t N(x_t; x_{t-1}, q^2 gap_t)`` times the
    indicator of the bounds, with no per-step normaliser (the ``Z_t`` cancel them). q enters
    only the map, not the density: the coordinates are non-centred. The sampler's ``z`` whiten
    w given q (:func:`_walk_w_of`, an affine map given q with its Jacobian).

    q has a log-uniform prior on the fast path's search range (``lq_lo, lq_hi``), sampled
    through ``log q = lq_lo + (lq_hi - lq_lo) sigmoid(t0 + t_scale v_q)`` (its Jacobian
    included) centred on the fast path's estimate; the normaliser of the truncation,
    ``P(walk within the bounds | q)``, is not divided out: the bounds condition (q, x) jointly,
    and q's posterior is that of the fast path's marginal likelihood (which leaves the bounds
    out) wherever the trajectory does not press against them. sigma as in :func:`_model`.
    """
    import numpyro
    import numpyro.distributions as dist

    z = numpyro.sample("z", dist.ImproperUniform(dist.constraints.real, (), data.reset.shape))
    if learn_q:
        vq = numpyro.sample("v_q", dist.ImproperUniform(dist.constraints.real, (), ()))
        t = qs.t0 + qs.t_scale * vq
        log_s = jax.nn.log_sigmoid(t)
        log_q = qs.lq_lo + (qs.lq_hi - qs.lq_lo) * jnp.exp(log_s)
        # Flat in log q; the Jacobian of log q in t (its constant factor dropped).
        numpyro.factor("q_prior", log_s + (log_s - t))
    else:
        log_q = qs.t0
    q = jnp.exp(log_q)
    numpyro.deterministic("q", q)
    # (z, v_q) -> (w, t) is triangular: the Jacobian is that of z -> w given q.
    w, log_jac = _walk_w_of(z, q, data)
    x, log_w = _walk_x(w, q, data, flat_start=flat_start)
    numpyro.deterministic("x", x)
    numpyro.factor("walk", log_w + log_jac)
    if learn_sigma:
        v = numpyro.sample("v", dist.ImproperUniform(dist.constraints.real, (), ()))
        u = u_scale * v
        numpyro.factor("sigma_prior", -2.0 * ig[0] * u - ig[1] * jnp.exp(-2.0 * u))
    else:
        u = jnp.zeros((), w.dtype)
    numpyro.deterministic("sigma", jnp.exp(u))  # in units of sigma_ref
    numpyro.factor("loglik", centred_total(stats, x, u, x_ref, sse_ref))


#: Bounds of the sd of log q that scales q's sampled coordinate (the fast path's curvature
#: estimate, which is infinite when the marginal likelihood is flat in q).
_LOG_Q_SD = (0.02, 1.0)


def _walk_setup(fit: MapResult, times: Any, sequence_id: Any):
    """From the fast path's fit: the frame order, the walk's inputs with the sampler's
    whitening (:func:`_walk_w_of`), q's scaling and the sorted statistics."""
    from scipy.special import logit

    from bayesmix._temporal import _LOG_Q_RANGE, _order
    from bayesmix.priors import Uniform

    red = fit.stats
    if not isinstance(red, FrameStats):  # make_model refuses the other models already
        raise InputError("temporal='random_walk' on the NUTS path needs two references")
    n = fit.n_frames
    od = _order(n, times, sequence_id)
    prior = fit.prior
    lo, hi = (float(b) for b in prior.bounds)
    span = hi - lo
    flat = isinstance(prior, Uniform)
    mu0, prec = prior.gaussian_params()
    mu0 = 0.5 * (lo + hi) if flat else float(mu0)
    s0 = 0.0 if flat else 1.0 / math.sqrt(prec)
    seq = fit.temporal
    root_unit = math.sqrt(od.unit)
    q_hat = float(seq.q) * root_unit  # per unit normalised time
    lq_lo, lq_hi = (v + math.log(span) for v in _LOG_Q_RANGE)
    p = min(max((math.log(q_hat) - lq_lo) / (lq_hi - lq_lo), 1e-4), 1.0 - 1e-4)
    lq_slope = (lq_hi - lq_lo) * p * (1.0 - p)  # d log q / dt at t0
    if seq.q_fixed:
        qs = _QScale(math.log(q_hat), 1.0, lq_lo, lq_hi)
    else:
        rel = float(seq.q_sd) / float(seq.q) if seq.q > 0 else math.inf
        sd = min(max(rel, _LOG_Q_SD[0]), _LOG_Q_SD[1]) if math.isfinite(rel) else _LOG_Q_SD[1]
        qs = _QScale(float(logit(p)), sd / lq_slope, lq_lo, lq_hi)
    qs = _QScale(*(np.float64(v) for v in qs))
    o = od.order
    st = FrameStats(*(np.asarray(a, np.float64)[o] for a in red))
    eps = 1e-6 * span
    x0 = np.clip(np.asarray(fit.mean, np.float64)[o], lo + eps, hi - eps)
    reset = od.reset
    # The whitening: the walk's Gaussian posterior in x without the bounds, at sigma_hat. A
    # flat start is linearised at the fast path's mean: the logistic map's slope there, and
    # the curvature of its log Jacobian as the start's precision.
    p_lik = np.asarray(st.dd) / float(fit.sigma) ** 2
    xhat = np.where(p_lik > 0, np.asarray(st.xhat), 0.0)
    if flat:
        ps = (x0 - lo) / span
        scale = span * ps * (1.0 - ps)
        w_start = _flat_start_w(x0, lo, hi)
        centre = x0 - scale * w_start
        prec = 2.0 * ps * (1.0 - ps) / scale**2
        mean = x0
    else:
        scale, centre, prec, mean = s0, mu0, 1.0 / s0**2, mu0
    start_prec = np.where(reset, prec, 0.0)
    data = _WalkData(
        reset=reset.astype(np.float64), gap=np.where(reset, 1.0, od.gap), lo=np.float64(lo),
        hi=np.float64(hi), mu0=np.float64(mu0), s0=np.float64(s0), p_lik=p_lik,
        rhs=p_lik * xhat + start_prec * mean, start_prec=start_prec,
        start_centre=np.where(reset, centre, 0.0), start_scale=np.where(reset, scale, 1.0),
    )  # fmt: skip
    return od, data, qs, st, x0, flat, root_unit


#: Precision of the random walk's sampler, whatever ``dtype`` asks (see :func:`_sample_walk`).
WALK_DTYPE = "float64"

#: The chains start at draws of the whitened coordinates' approximation, N(0, JITTER^2).
_WALK_JITTER = 1.0


def _sample_walk(fit: MapResult, *, times, sequence_id, num_chains, num_warmup, num_samples,
                 seed, progress, method, dtype, target_accept, log_likelihood, offset,
                 stats):  # fmt: skip
    """NUTS for ``temporal='random_walk'`` (:func:`_walk_model`), started from the fast path's
    fit (its sigma, q and smoothed means). sigma is held at the fit's when the fit held it
    (``fit.sigma_fixed``), q when the temporal model gives it. ``dtype`` is not used: the walk
    runs in :data:`WALK_DTYPE`."""
    from bayesmix._arviz import to_inference_data

    od, data, qs, st, x0, flat, root_unit = _walk_setup(fit, times, sequence_id)
    n = fit.n_frames
    sigma_ref = float(fit.sigma)
    st_c, ref, sse_ref = centred_reference(st, x0, sigma_ref)
    u_scale = 1.0 / math.sqrt(2.0 * float(np.sum(st.n)))
    learn_q = not fit.temporal.q_fixed
    learn_sigma = not fit.sigma_fixed
    rng = np.random.default_rng(seed)
    init = {"z": _WALK_JITTER * rng.standard_normal((num_chains, n))}
    if learn_sigma:
        init["v"] = 0.5 * rng.standard_normal(num_chains)
    if learn_q:
        init["v_q"] = 0.5 * rng.standard_normal(num_chains)
    args = (st_c, ref, np.float64(sse_ref), _ig_in_units(fit, sigma_ref), np.float64(u_scale),
            data, qs)  # fmt: skip
    model_fn = partial(_walk_model, flat_start=flat, learn_q=learn_q, learn_sigma=learn_sigma)
    # Always float64 (WALK_DTYPE): the whitening factors Q(q), whose walk part (1 / q^2) dwarfs
    # the frames' precision at small q; float32 loses it there (measured: a chain stuck with a
    # step size of 1e-7 at q = 1e-4 on 60 frames), for ~20% more time at 300 frames.
    draws, extra, seconds = run_nuts(
        model_fn, args, init, num_chains=num_chains, num_warmup=num_warmup,
        num_samples=num_samples, method=method, dtype=WALK_DTYPE, target_accept=target_accept,
        progress=progress, seed=seed,
    )  # fmt: skip
    back = np.empty(n, np.int64)
    back[od.order] = np.arange(n)
    x = draws["x"][..., back]  # input order
    sigma = sigma_ref * np.asarray(draws["sigma"], np.float64)
    q = draws["q"] / root_unit  # per unit of the caller's time
    loglik = None
    if log_likelihood:
        with x64():
            ll = jax.jit(loglik_fn)(_as_f64(fit.stats), jnp.asarray(x),
                                    jnp.asarray(sigma)[..., None])  # fmt: skip
            loglik = np.asarray(ll)
        if offset is not None:
            loglik = loglik + np.asarray(offset, np.float64)
    background = _background_at_mean(stats, x)
    return to_inference_data(
        x=x, sigma=sigma, extra=extra, log_likelihood=loglik, fit=fit, background=background,
        q=q,
        attrs={
            "sampling_time": seconds, "num_warmup": int(num_warmup), "seed": int(seed),
            "chain_method": method, "dtype": WALK_DTYPE, "target_accept": float(target_accept),
            "q_prior": (f"fixed({float(fit.temporal.q):.6g})" if not learn_q else
                        f"log_uniform({math.exp(float(qs.lq_lo)) / root_unit:.6g}, "
                        f"{math.exp(float(qs.lq_hi)) / root_unit:.6g})"),
            "q_map": float(fit.temporal.q), "q_map_sd": float(fit.temporal.q_sd),
            "sigma_fixed": bool(fit.sigma_fixed),
        },
    )  # fmt: skip


def sample_stats(
    stats: FrameStats | BasisStats,
    *,
    prior: XPrior | None = None,
    sigma_prior: SigmaPrior | None = None,
    gain: bool = False,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    progress: bool = True,
    chain_method: str = "auto",
    dtype: str = "float32",
    target_accept: float = 0.8,
    log_likelihood: bool = True,
    frame: Any = None,
    device: str | None = None,
    model: MixingModel | None = None,
    map_shape: tuple[int, ...] | None = None,
    ref_names: Any = None,
    noise: Any = "gaussian",
    temporal: Any = None,
    times: Any = None,
    sequence_id: Any = None,
):
    """:func:`sample` on precomputed per-frame statistics (see :func:`bayesmix.frame_stats`,
    and :func:`bayesmix.fit_map_stats` for the :class:`BasisStats` of a model with background or
    gain, or K >= 3 references; :class:`SimplexStats` are taken as they are).

    ``noise`` may be 'gaussian' or 'per_frame' (the models whose likelihood the statistics
    hold; see :func:`sample`); Poisson and Student-t noise need the pixels: call
    :func:`sample` on the frames. ``temporal``, ``times`` and ``sequence_id`` relate the frames
    along sequences, as in :func:`sample` (one entry per frame of ``stats``)."""
    if model is None:
        k = int(np.shape(stats.w)[1]) if isinstance(stats, (BasisStats, SimplexStats)) else 2
        _learn_refusal(prior, n_refs=k, gain=gain, noise=noise, temporal=temporal)
        model = make_model(prior=prior, sigma_prior=sigma_prior, gain=gain, n_refs=k,
                           ref_names=ref_names, noise=noise, temporal=temporal)  # fmt: skip
    elif temporal is not None and check_temporal(temporal) != model.temporal:
        raise InputError(
            f"temporal={temporal!r} differs from the model's temporal="
            f"{temporal_spec(model.temporal)!r}; give it in one place"
        )
    check_nuts(model)
    _learn_refusal(model.prior, n_refs=model.n_refs, gain=model.gain, noise=model.noise,
                   temporal=model.temporal)  # fmt: skip
    if model.noise.reweights:
        raise InputError(
            f"noise={noise_spec(model.noise)!r} has a pixel-level likelihood, which the "
            "per-frame statistics do not hold: call bayesmix.sample(frames, ref_a, ref_b, "
            "noise=...) instead"
        )
    times, sequence_id = _check_sequence_options(model, times, sequence_id,
                                                 int(np.shape(stats.n)[0]))  # fmt: skip
    _check_run(num_chains, num_warmup, num_samples, dtype, target_accept, seed)
    return _sample_stats(stats, model=model, num_chains=num_chains, num_warmup=num_warmup,
                         num_samples=num_samples, seed=seed, progress=progress,
                         chain_method=chain_method, dtype=dtype, target_accept=target_accept,
                         log_likelihood=log_likelihood, frame=frame, device=device,
                         map_shape=map_shape, times=times, sequence_id=sequence_id)  # fmt: skip


def _check_run(num_chains, num_warmup, num_samples, dtype, target_accept, seed) -> None:
    """The sampler's options, checked before any work."""
    _check_counts(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples)
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if not 0.0 < target_accept < 1.0:
        raise InputError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= seed < 2**63:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")


def _sample_stats(stats, *, model, num_chains, num_warmup, num_samples, seed, progress,
                  chain_method, dtype, target_accept, log_likelihood, frame, device, map_shape,
                  offset=None, times=None, sequence_id=None):  # fmt: skip
    """NUTS on the statistics; ``offset`` (per frame) is added to the pointwise
    log-likelihood: the whitening's Jacobian of a weighted (variance map) pass."""
    from bayesmix._arviz import to_inference_data

    with on_device(device) as devices:
        method = _chain_method(chain_method, num_chains, len(devices))

        fit = _fit(stats, model=model, sigma=None, sigma_method="marginal", max_iter=1000,
                   tol=1e-8, frame=frame, device=device, map_shape=map_shape, times=times,
                   sequence_id=sequence_id)  # fmt: skip
        if isinstance(model.prior, Learn):
            return _sample_learn(
                fit, num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                seed=seed, progress=progress, method=method, dtype=dtype,
                target_accept=target_accept, log_likelihood=log_likelihood, offset=offset,
                stats=stats,
            )  # fmt: skip
        if not isinstance(model.temporal, Independent):
            return _sample_walk(
                fit, times=times, sequence_id=sequence_id, num_chains=num_chains,
                num_warmup=num_warmup, num_samples=num_samples, seed=seed, progress=progress,
                method=method, dtype=dtype, target_accept=target_accept,
                log_likelihood=log_likelihood, offset=offset, stats=stats,
            )  # fmt: skip
        if isinstance(model.noise, PerFrame):
            return _sample_per_frame(
                fit, num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                seed=seed, progress=progress, method=method, dtype=dtype,
                target_accept=target_accept, log_likelihood=log_likelihood, offset=offset,
                stats=stats,
            )  # fmt: skip
        red = fit.stats
        n = fit.n_frames
        sigma_ref = fit.sigma
        simplex = isinstance(red, SimplexStats)
        u_scale = 1.0 / math.sqrt(2.0 * float(np.sum(red.n)))
        rng = np.random.default_rng(seed)
        if simplex:
            x_ref = np.asarray(fit.x, np.float64)
            loc, root = _simplex_start(red, fit.prior, sigma_ref**2, x_ref, fit.sd)
            # In units of sigma_ref: every number the sampler sees is O(1).
            st_c = SimplexStats(w=np.asarray(red.w, np.float64),
                                chol=np.asarray(red.chol, np.float64) / sigma_ref,
                                rss=np.asarray(red.rss, np.float64) / sigma_ref**2,
                                n=np.asarray(red.n, np.float64))  # fmt: skip
            r = np.einsum("nij,nj->ni", st_c.chol, x_ref - st_c.w)
            sse_ref = float(np.sum(st_c.rss) + np.sum(r * r))
            # Chains start around the MAP (nudged inside): draws of the whitened Gaussian.
            w0 = rng.standard_normal((num_chains, n, red.n_refs - 1))
            init = {"w": w0, "v": rng.standard_normal(num_chains)}
        else:
            # The reference point of the centred likelihood: the MAP, with the squared error
            # there in float64.
            st_c, ref, sse_ref = centred_reference(red, fit.x, sigma_ref)
            loc, scale = _standardise(fit)
            # Chains start at independent draws of the standardised posterior: the typical set.
            init = {"w": rng.standard_normal((num_chains, n)), "v": rng.standard_normal(num_chains)}
        # The sampler works in units of sigma_ref (the data, sse_ref, the sigma prior's scale,
        # its sigma): O(1) numbers in float32 whatever the data's units. The data, the starting
        # point and the prior's parameters are all traced.
        model_fn = _simplex_model if simplex else _model
        args = (st_c, x_ref if simplex else ref, np.float64(sse_ref), _ig_in_units(fit, sigma_ref),
                _SimplexFrame(loc, root) if simplex else _Frame(loc, scale), np.float64(u_scale),
                fit.prior)  # fmt: skip
        draws, extra, seconds = run_nuts(
            model_fn, args, init, num_chains=num_chains, num_warmup=num_warmup,
            num_samples=num_samples, method=method, dtype=dtype, target_accept=target_accept,
            progress=progress, seed=seed,
        )  # fmt: skip
        x = draws["x"]
        sigma = sigma_ref * np.asarray(draws["sigma"], np.float64)
        loglik = None
        if log_likelihood and simplex:
            loglik = _simplex_loglik(red, x, sigma)
        elif log_likelihood:
            # Per frame, from the one likelihood, in float64 (LOO needs differences of O(1)).
            with x64():
                ll = jax.jit(loglik_fn)(_as_f64(red), jnp.asarray(x), jnp.asarray(sigma)[..., None])
                loglik = np.asarray(ll)
        if loglik is not None and offset is not None:
            loglik = loglik + np.asarray(offset, np.float64)
    gain_draws = _gain_draws(red, x, sigma, seed) if isinstance(red, GainStats) else None
    background = _background_at_mean(stats, x, gain=gain_draws, simplex=simplex)

    return to_inference_data(
        x=x,
        sigma=sigma,
        extra=extra,
        log_likelihood=loglik,
        fit=fit,
        gain=gain_draws,
        background=background,
        attrs={
            "sampling_time": seconds,
            "num_warmup": int(num_warmup),
            "seed": int(seed),
            "chain_method": method,
            "dtype": dtype,
            "target_accept": float(target_accept),
        },
    )


def _background_at_mean(
    stats: Any, x: np.ndarray, *, gain: np.ndarray | None = None, simplex: bool = False
) -> np.ndarray | None:
    """Each frame's background coefficients at the posterior-mean weights (None without one).

    The background is profiled out of the statistics; it is linear in the (gain-scaled) weights,
    so its value at their posterior mean is its posterior mean.
    """
    if not (isinstance(stats, BasisStats) and stats.n_background):
        return None
    if simplex:
        ew = x.mean(axis=(0, 1))
    else:
        g = np.ones_like(x) if gain is None else gain
        ew = np.stack([(g * x).mean(axis=(0, 1)), (g * (1.0 - x)).mean(axis=(0, 1))], axis=1)
    return stats.background_at(ew)


def _gain_draws(stats: GainStats, x: np.ndarray, sigma: np.ndarray, seed: int) -> np.ndarray:
    """A draw of each frame's gain from its exact conditional posterior given each draw of x
    and sigma: Normal(b / a, sigma^2 / a) truncated to g > 0 (the sampler integrated g out)."""
    from scipy.stats import truncnorm

    with x64():
        a, b, _ = (np.asarray(v) for v in gain_terms(jnp.asarray(x), _as_f64(stats)))
    mu = b / a
    s = sigma[..., None] / np.sqrt(a)
    rng = np.random.default_rng([int(seed), 1])
    return truncnorm.rvs(-mu / s, np.inf, loc=mu, scale=s, random_state=rng)


def _as_f64(stats: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), stats)


def _x_of(w, affine, prior):
    """The weights ``x = lo + span * sigmoid(loc + scale * w)`` and the log prior of x plus the
    log Jacobian of the map (up to a constant), summed over frames (as in :func:`_model`)."""
    lo, hi = prior.bounds
    t = affine.loc + affine.scale * w
    log_s = jax.nn.log_sigmoid(t)
    log_1ms = log_s - t
    x = lo + (hi - lo) * jnp.exp(log_s)
    return x, jnp.sum(_log_prior_x(prior, x) + log_s + log_1ms)


class _PerFrameData(NamedTuple):
    """Per-frame statistics in units of each frame's reference scale ``exp(s_ref)``."""

    xhat: jnp.ndarray  #: least-squares weight
    dd: jnp.ndarray  #: dd / sigma_ref_i^2
    sse_ref: jnp.ndarray  #: squared error at x_ref over sigma_ref_i^2
    x_ref: jnp.ndarray  #: the fast path's posterior mean
    n: jnp.ndarray  #: degrees of freedom of the frame
    s_ref: jnp.ndarray  #: log sigma_ref_i
    width: jnp.ndarray  #: the frame's own posterior sd of log sigma_i, about 1 / sqrt(2 n)
    centred: jnp.ndarray  #: 1 where log sigma_i is sampled centred (see PER_FRAME_CENTRING)


class _PopScale(NamedTuple):
    """Standardisation of the hyperparameters: ``mu = mu0 + mu_sd * v_mu``,
    ``log tau = log_tau0 + log_tau_sd * v_tau``; ``mu_loc`` the centre of mu's prior."""

    mu0: jnp.ndarray
    mu_sd: jnp.ndarray
    log_tau0: jnp.ndarray
    log_tau_sd: jnp.ndarray
    mu_loc: jnp.ndarray


#: How the per-frame log sigma_i are sampled: 'auto' (default): centred for the frames whose own
#: data pin log sigma_i down better than the population does (width_i < tau), non-centred
#: (``log sigma_i = mu + tau z_i``) for the others; or 'noncentred' for every frame, which
#: couples tau to every z_i and mixes slowly when the data pin the sigmas (measured: population
#: sd tau = 1 with 64 pixels per frame gives an ESS of tau of about 20 in 600 draws
#: non-centred, about 800 with 'auto'; at tau = 0.3, 114 against 919).
PER_FRAME_CENTRING = "auto"

#: Hyperpriors of the per-frame noise model on the NUTS path: mu ~ Normal(data-scale guess,
#: MU_PRIOR_SD) (nearly flat: log sigma is known to far better than +-10 from the data) and
#: tau ~ HalfNormal(TAU_PRIOR_SD) (a spread of sigmas by a factor e between frames is 1 sd).
MU_PRIOR_SD = 10.0
TAU_PRIOR_SD = 1.0


def _per_frame_model(data, affine, pop, prior):
    """NumPyro model of per-frame noise scales with a non-centred hierarchical prior.

    ``log sigma_i = mu + tau * z_i`` with ``z_i ~ N(0, 1)``, ``mu ~ N(mu_loc, 10)``,
    ``tau ~ HalfNormal(1)``; x as in :func:`_model`. The frame likelihood is the Gaussian
    likelihood of the statistics (:func:`bayesmix._likelihood.frame_loglik`), written per frame
    in a centred form at ``(x_ref, sigma_ref_i)`` so that float32 keeps it accurate: with
    ``u_i = log sigma_i - s_ref_i``,
    ``-S_i expm1(-2 u_i) / 2 - dS_i(x) exp(-2 u_i) / 2 - n_i u_i`` (a constant per frame
    dropped).
    """
    import numpyro
    import numpyro.distributions as dist

    n_frames = affine.loc.shape
    w = numpyro.sample("w", dist.ImproperUniform(dist.constraints.real, (), n_frames))
    z = numpyro.sample("z", dist.ImproperUniform(dist.constraints.real, (), n_frames))
    v_mu = numpyro.sample("v_mu", dist.ImproperUniform(dist.constraints.real, (), ()))
    v_tau = numpyro.sample("v_tau", dist.ImproperUniform(dist.constraints.real, (), ()))
    x, prior_terms = _x_of(w, affine, prior)
    numpyro.deterministic("x", x)
    numpyro.factor("prior_x", prior_terms)
    mu = pop.mu0 + pop.mu_sd * v_mu
    log_tau = pop.log_tau0 + pop.log_tau_sd * v_tau
    tau = jnp.exp(log_tau)
    # mu ~ Normal(mu_loc, 10); tau ~ HalfNormal(1) with the Jacobian of tau in log tau.
    numpyro.factor("hyper", -0.5 * ((mu - pop.mu_loc) / MU_PRIOR_SD) ** 2
                   - 0.5 * (tau / TAU_PRIOR_SD) ** 2 + log_tau)  # fmt: skip
    numpyro.deterministic("log_sigma_mu", mu)
    numpyro.deterministic("log_sigma_tau", tau)
    # Non-centred: log sigma_i = mu + tau z_i, z_i ~ N(0, 1). A frame marked centred (only
    # with PER_FRAME_CENTRING = 'auto') has log sigma_i = s_ref_i + width_i z_i instead, and the
    # population density N(log sigma_i; mu, tau) (the map from z_i has a constant Jacobian).
    c = data.centred > 0
    u = jnp.where(c, data.width * z, (mu - data.s_ref) + tau * z)
    zc = (u + data.s_ref - mu) / tau
    numpyro.factor("prior_log_sigma", jnp.sum(jnp.where(c, -0.5 * zc * zc - log_tau,
                                                        -0.5 * z * z)))  # fmt: skip
    numpyro.deterministic("sigma_frame", jnp.exp(data.s_ref + u))
    numpyro.deterministic("sigma", jnp.exp(mu))
    a = x - data.xhat
    b = data.x_ref - data.xhat
    ds = data.dd * (a - b) * (a + b)
    ll = -0.5 * data.sse_ref * jnp.expm1(-2.0 * u) - 0.5 * ds * jnp.exp(-2.0 * u) - data.n * u
    numpyro.factor("loglik", jnp.sum(ll))


def _sample_per_frame(fit: MapResult, *, num_chains, num_warmup, num_samples, seed, progress,
                      method, dtype, target_accept, log_likelihood, offset, stats,
                      centring=None):  # fmt: skip
    """NUTS for ``noise='per_frame'``: every x_i and log sigma_i, and the population (mu, tau),
    from the fast path's fit (its population and per-frame sigma_i posterior means)."""
    from bayesmix._arviz import to_inference_data
    from bayesmix._likelihood import frame_loglik

    centring = PER_FRAME_CENTRING if centring is None else centring
    red = fit.stats
    if not isinstance(red, FrameStats):  # make_model refuses the other cases already
        raise InputError("noise='per_frame' needs the two-reference statistics (FrameStats)")
    n = fit.n_frames
    rng = np.random.default_rng(seed)
    xhat = np.asarray(red.xhat, np.float64)
    dd = np.asarray(red.dd, np.float64)
    rss = np.asarray(red.rss, np.float64)
    nn = np.asarray(red.n, np.float64)
    x_ref = np.asarray(fit.mean, np.float64)
    s_ref = np.log(np.asarray(fit.sigma_frame, np.float64))
    s2 = np.exp(2.0 * s_ref)
    # log sigma in units of the population's typical sigma: O(1) numbers in float32, whose
    # exp(log sigma) would under- or overflow for data in units far from 1.
    log_unit = float(fit.noise_params["log_sigma_mu"])
    s_ref = s_ref - log_unit
    mu0 = 0.0
    tau0 = float(fit.noise_params["log_sigma_tau"])
    width = 1.0 / np.sqrt(2.0 * np.maximum(nn - 1.0, 0.5))  # a frame's sd of log sigma_i
    if centring not in ("noncentred", "auto"):
        raise InputError(f"centring must be 'noncentred' or 'auto', got {centring!r}")
    centred = (width < tau0) if centring == "auto" else np.zeros(n, bool)
    data = _PerFrameData(xhat=xhat, dd=dd / s2, sse_ref=(rss + dd * (x_ref - xhat) ** 2) / s2,
                         x_ref=x_ref, n=nn, s_ref=s_ref, width=width,
                         centred=centred.astype(np.float64))  # fmt: skip
    wbar = float(np.mean(width))
    pop = _PopScale(
        mu0=mu0, mu_sd=math.sqrt((tau0**2 + wbar**2) / n), log_tau0=math.log(tau0),
        log_tau_sd=min(1.0, math.sqrt(1.0 / (2.0 * n)) * (1.0 + (wbar / tau0) ** 2)),
        mu_loc=mu0,
    )  # fmt: skip
    loc, scale = _standardise(fit)
    # Chains start in the typical set: x around the fast path's posterior, z_i at the frame's
    # own estimate of log sigma_i (standardised), jittered by its posterior width.
    z0 = (s_ref - mu0) / tau0
    zj = np.minimum(width / tau0, 1.0)
    init = {
        "w": rng.standard_normal((num_chains, n)),
        "z": np.where(
            centred,
            0.5 * rng.standard_normal((num_chains, n)),
            np.clip(z0 + 0.5 * zj * rng.standard_normal((num_chains, n)), -5.0, 5.0),
        ),
        "v_mu": 0.5 * rng.standard_normal(num_chains),
        "v_tau": 0.5 * rng.standard_normal(num_chains),
    }
    args = (data, _Frame(loc, scale), pop, fit.prior)
    draws, extra, seconds = run_nuts(
        _per_frame_model, args, init, num_chains=num_chains, num_warmup=num_warmup,
        num_samples=num_samples, method=method, dtype=dtype, target_accept=target_accept,
        progress=progress, seed=seed,
    )  # fmt: skip
    x = draws["x"]
    sigma_frame = math.exp(log_unit) * np.asarray(draws["sigma_frame"], np.float64)
    loglik = None
    if log_likelihood:
        with x64():
            ll = jax.jit(frame_loglik)(jnp.asarray(x), jnp.asarray(sigma_frame), _as_f64(red))
            loglik = np.asarray(ll)
        if offset is not None:
            loglik = loglik + np.asarray(offset, np.float64)
    background = _background_at_mean(stats, x)
    idata = to_inference_data(
        x=x, sigma=math.exp(log_unit) * np.asarray(draws["sigma"], np.float64), extra=extra,
        log_likelihood=loglik, fit=fit, background=background,
        attrs={
            "sampling_time": seconds, "num_warmup": int(num_warmup), "seed": int(seed),
            "chain_method": method, "dtype": dtype, "target_accept": float(target_accept),
            "log_sigma_mu_prior": f"normal({log_unit:.6g}, {MU_PRIOR_SD:g})",
            "log_sigma_tau_prior": f"half_normal({TAU_PRIOR_SD:g})",
        },
    )  # fmt: skip
    return _add_posterior(idata, {
        "sigma_frame": (sigma_frame, ("frame",)),
        "log_sigma_mu": (log_unit + np.asarray(draws["log_sigma_mu"], np.float64), ()),
        "log_sigma_tau": (draws["log_sigma_tau"], ()),
    })  # fmt: skip


def _add_posterior(idata, variables: dict[str, tuple[np.ndarray, tuple[str, ...]]]):
    """Add variables (chain, draw, *dims) to the posterior group, on its coordinates."""
    import xarray as xr

    post = idata.posterior
    for name, (values, dims) in variables.items():
        coords = {d: post.coords[d] if d in post.coords else np.arange(values.shape[2 + k])
                  for k, d in enumerate(dims)}  # fmt: skip
        post[name] = xr.DataArray(values, dims=("chain", "draw", *dims), coords=coords)
    return idata


# --------------------------------------------------------------------------------------------
# A learned prior (prior='learn'): the truncated-normal population of the weights, sampled.

#: Hyperpriors of the learned truncated-normal population on the NUTS path (``prior='learn'``):
#: ``loc ~ Uniform(low, high)`` (the prior's own bounds; a truncated normal's loc lies within
#: them) and ``scale ~ HalfNormal(LEARN_SCALE_PRIOR_SD * (high - low))``: weakly informative
#: (a population as wide as the bounds is 1 sd); with hundreds of frames the frames decide.
LEARN_SCALE_PRIOR_SD = 1.0

#: How each weight is sampled under a learned population: 'auto' (default) samples a frame
#: centred (x_i itself, standardised around the fast path's posterior, with the population's
#: log density) when its own likelihood pins x_i down better than the population does
#: (``sigma / sqrt(dd_i) < LEARN_CENTRED_BELOW * scale``, at the fast path's sigma and scale),
#: non-centred (``x_i = Q(Phi(w_i); loc, scale)``, the truncated normal's quantile of a
#: standard normal w_i) otherwise; 'centred' or 'noncentred' for every frame. The
#: non-centred form couples every w_i to (loc, scale) when the frames are informative, the
#: centred one makes a funnel in scale when they are not. Measured (600 frames from
#: TruncatedNormal(0.25, 0.1), 2 chains x 400 draws, (loc, scale) whitened by their sds
#: alone; bulk ESS of loc / scale at sigma / sqrt(dd) / scale = 0.19, 0.54, 0.70, 0.84,
#: 1.12, 1.36): centred 940/854, 1048/665, 433/250, 354/204, 106/46 (BFMI 0.25), 100/83
#: (3 divergences); non-centred 75/78, 237/186, 297/195, 365/257, 316/250, 594/521
#: (leapfrog steps a draw: centred 15, 30, 26, 31, 31, 47; non-centred 31, 15, 15, 15, 15,
#: 31). Frames whose widths spread over 0.17 to 2.7 scales: centred 450/257, non-centred
#: 99/138, 'auto' 843/775.
LEARN_CENTRING = "auto"
LEARN_CENTRED_BELOW = 0.7

_LEARN_CENTRINGS = ("auto", "centred", "noncentred")


class _LearnFrame(NamedTuple):
    """Per-frame standardisation under a learned population: centred frames
    ``t = loc + scale * w`` in logit space (as :class:`_Frame`), non-centred frames
    ``w' = w_loc + w_scale * w`` in the population's standard-normal coordinate; ``centred``
    1 for the first kind. Each frame's unused pair is (0, 1): both branches stay finite."""

    loc: jnp.ndarray
    scale: jnp.ndarray
    w_loc: jnp.ndarray
    w_scale: jnp.ndarray
    centred: jnp.ndarray


class _PopulationScale(NamedTuple):
    """The population's coordinates: ``loc = low + (high - low) sigmoid(t)``, ``(t, log
    scale) = (t0, ls0) + root @ (v_loc, v_scale)``: centred on the fast path's estimate and
    whitened by its covariance (``root`` lower triangular: sds and correlation);
    ``scale_prior_sd`` the half-normal's sd."""

    t0: jnp.ndarray
    ls0: jnp.ndarray
    root: jnp.ndarray
    scale_prior_sd: jnp.ndarray


def _learn_model(stats, x_ref, sse_ref, ig, affine, u_scale, pop, prior):
    """NumPyro model of the weights under a learned truncated-normal population.

    ``x_i ~ TruncatedNormal(loc, scale, low, high)`` independently given (loc, scale),
    ``loc ~ Uniform(low, high)``, ``scale ~ HalfNormal(LEARN_SCALE_PRIOR_SD (high - low))``;
    sigma and the likelihood as in :func:`_model`. ``prior`` is the fast path's learned prior:
    its bounds, and its type, rebuilt with the sampled (loc, scale) as traced leaves
    (``priors._unvalidated``: no validation), so that the population's density is the prior's own
    ``log_prob``.

    Each frame is either centred (``affine.centred``): x_i from its logit coordinate as in
    :func:`_model`, with ``log_prob(x_i)`` and the map's Jacobian; or non-centred:
    ``x_i = loc + scale F^-1(Phi(w'_i))``, F the standard normal's CDF truncated to
    ``((low - loc) / scale, (high - loc) / scale)`` (:func:`_tn_step`), which maps a standard
    normal w'_i to the truncated normal exactly: its density is ``phi(w'_i)``, and (loc, scale)
    enter the map only.
    """
    import numpyro
    import numpyro.distributions as dist

    shape = affine.loc.shape
    real = dist.constraints.real
    w = numpyro.sample("w", dist.ImproperUniform(real, (), shape))
    v = numpyro.sample("v", dist.ImproperUniform(real, (), ()))
    v_loc = numpyro.sample("v_loc", dist.ImproperUniform(real, (), ()))
    v_scale = numpyro.sample("v_scale", dist.ImproperUniform(real, (), ()))
    lo, hi = prior.bounds
    span = hi - lo
    t = pop.t0 + pop.root[0, 0] * v_loc
    log_p = jax.nn.log_sigmoid(t)
    loc = lo + span * jnp.exp(log_p)
    log_scale = pop.ls0 + pop.root[1, 0] * v_loc + pop.root[1, 1] * v_scale
    scale = jnp.exp(log_scale)
    # loc flat on (lo, hi), with the Jacobian of the logistic map; scale half-normal, with
    # the Jacobian of scale in log scale.
    numpyro.factor("hyper", log_p + (log_p - t) - 0.5 * (scale / pop.scale_prior_sd) ** 2
                   + log_scale)  # fmt: skip
    numpyro.deterministic("prior_loc", loc)
    numpyro.deterministic("prior_scale", scale)
    population = _unvalidated(type(prior), loc, scale, lo, hi)
    # Centred frames.
    tc = affine.loc + affine.scale * w
    log_s = jax.nn.log_sigmoid(tc)
    log_1ms = log_s - tc
    x_c = lo + span * jnp.exp(log_s)
    term_c = _log_prior_x(population, x_c) + log_s + log_1ms
    # Non-centred frames.
    wn = affine.w_loc + affine.w_scale * w
    d, _ = _tn_step(wn, (lo - loc) / scale, (hi - loc) / scale)
    x_n = jnp.clip(loc + scale * d, lo, hi)
    term_n = -0.5 * wn * wn
    c = affine.centred > 0
    x = numpyro.deterministic("x", jnp.where(c, x_c, x_n))
    numpyro.factor("prior_x", jnp.sum(jnp.where(c, term_c, term_n)))
    u = u_scale * v
    numpyro.factor("sigma_prior", -2.0 * ig[0] * u - ig[1] * jnp.exp(-2.0 * u))
    numpyro.deterministic("sigma", jnp.exp(u))  # in units of sigma_ref
    numpyro.factor("loglik", centred_total(stats, x, u, x_ref, sse_ref))


def _learn_refusal(prior: Any, *, n_refs: int, gain: bool, noise: Any, temporal: Any) -> None:
    """Refuse, before any work, what ``sample(..., prior='learn')`` does not sample: it samples
    the truncated-normal population with two references, one Gaussian sigma (a variance map and
    a background allowed), no gain, independent frames. Nothing to do for a fixed prior."""
    from bayesmix.priors import check_prior

    if isinstance(prior, str) and prior.strip().lower() == "learn":
        prior = Learn()
    if not isinstance(prior, Learn):
        return
    spec = check_prior(prior, n_refs)  # the family resolved for K (and K checked)
    fam = spec.family
    # What the fast path learns too (sample then with its learned prior held fixed) ...
    learnable = []
    if fam != "truncnormal":
        learnable.append(f"the {fam!r} family")
    if n_refs > 2:
        learnable.append(f"{n_refs} references")
    noise = check_noise(noise)
    if noise.reweights:
        learnable.append(f"noise={noise_spec(noise)!r} (a pixel-level likelihood)")
    # ... and what needs a prior given in advance.
    fixed = []
    if gain:
        fixed.append("gain=True")
    if isinstance(noise, PerFrame):
        fixed.append("noise='per_frame'")
    temporal = check_temporal(temporal)
    if not isinstance(temporal, Independent):
        fixed.append(f"temporal={temporal_spec(temporal)!r}")
    if not (learnable or fixed):
        return
    text = "'learn'" if prior.family is None else f"bayesmix.priors.learn({fam!r})"
    if fixed:
        todo = (
            "give a fixed prior instead, e.g. the one the fast path learns without "
            f"{' and '.join(fixed)}: prior=bayesmix.fit_map(frames, ref_a, ref_b, "
            "prior='learn').prior"
        )
    elif fam == "point_mass":
        todo = f"use the fast path's exact posterior, bayesmix.fit_map(..., prior={text})"
    else:
        todo = (
            f"learn it with the fast path, fit = bayesmix.fit_map(..., prior={text}) with the "
            "same options, and sample with the learned prior held fixed (prior=fit.prior)"
        )
    raise InputError(
        "NUTS with prior='learn' samples the population (loc, scale) of a truncated-normal "
        "prior with every weight, for two references, Gaussian noise with one sigma (a "
        "background or variance= allowed), no gain and independent frames; not with "
        f"{', '.join(learnable + fixed)}: {todo}"
    )


def _population(fit: MapResult) -> Any:
    """The fast path's learned population (``family``, ``params``, ``sd``) of a prior='learn'
    fit."""
    from bayesmix.priors import TruncatedNormal

    pop = getattr(fit, "population", None)
    if pop is None or pop.family != "truncnormal" or not isinstance(fit.prior, TruncatedNormal):
        raise RuntimeError(
            f"the fast path returned no learned truncated-normal population (prior "
            f"{fit.prior!r}, population {pop!r}): a bug in bayesmix"
        )
    return pop


def _finite_or(value: Any, default: float) -> float:
    v = float(value) if value is not None else math.nan
    return v if math.isfinite(v) else default


def _learn_setup(fit: MapResult, pop: Any, centring: str) -> tuple[_LearnFrame, _PopulationScale]:
    """The sampler's standardisation under a learned population, from the fast path's fit
    (its posterior of each weight under the learned prior, and the hyperparameters' estimate
    and sd), and the centred/non-centred choice of each frame (:data:`LEARN_CENTRING`)."""
    from scipy.special import logit, ndtri_exp
    from scipy.stats import norm, truncnorm

    prior = fit.prior
    lo, hi = (float(b) for b in prior.bounds)
    span = hi - lo
    loc0 = min(max(float(pop.params["loc"]), lo), hi)
    scale0 = float(pop.params["scale"])
    red = fit.stats
    n = fit.n_frames
    dd = np.asarray(red.dd, np.float64)
    with np.errstate(divide="ignore"):
        width = np.where(dd > 0, float(fit.sigma) / np.sqrt(np.where(dd > 0, dd, 1.0)), np.inf)
    if centring == "auto":
        centred = width < LEARN_CENTRED_BELOW * scale0
    else:
        centred = np.full(n, centring == "centred")
    loc, scale = _standardise(fit)
    # Non-centred frames: w' = Phi^-1(F(x)) at the fast path's population, centred on the
    # image of the posterior mean and scaled by its sd there (dw'/dx = f(x) / phi(w')).
    a, b = (lo - loc0) / scale0, (hi - loc0) / scale0
    eps = 1e-6 * span
    xm = np.clip(np.asarray(fit.mean, np.float64), lo + eps, hi - eps)
    lcdf = truncnorm.logcdf(xm, a, b, loc=loc0, scale=scale0)
    lsf = truncnorm.logsf(xm, a, b, loc=loc0, scale=scale0)
    wm = np.where(lcdf < lsf, ndtri_exp(lcdf), -ndtri_exp(lsf))
    wm = np.clip(wm, -8.0, 8.0)
    slope = np.exp(truncnorm.logpdf(xm, a, b, loc=loc0, scale=scale0) - norm.logpdf(wm))
    ws = np.clip(np.asarray(fit.sd, np.float64) * slope, 1e-2, 1.0)
    affine = _LearnFrame(
        loc=np.where(centred, loc, 0.0), scale=np.where(centred, scale, 1.0),
        w_loc=np.where(centred, 0.0, wm), w_scale=np.where(centred, 1.0, ws),
        centred=centred.astype(np.float64),
    )  # fmt: skip
    p = min(max((loc0 - lo) / span, 1e-3), 1.0 - 1e-3)
    # The sds of (t, log scale) by the delta method, bounded (a flat marginal likelihood has
    # none); their correlation from the fast path's covariance of its own unconstrained
    # coordinates (its last two: monotone maps of loc and scale each, whose correlation is
    # that of (t, log scale)). Strongly correlated when the frames say little (measured:
    # -0.85 at sigma / sqrt(dd) = 1.3 scale).
    t_sd = min(max(_finite_or(pop.sd.get("loc"), span) / (span * p * (1.0 - p)), 1e-2), 2.0)
    ls_sd = min(max(_finite_or(pop.sd.get("scale"), scale0) / scale0, 1e-2), 1.0)
    rho = _correlation(getattr(pop, "cov", None))
    root = np.array([[t_sd, 0.0], [rho * ls_sd, math.sqrt(1.0 - rho * rho) * ls_sd]])
    scale_pop = _PopulationScale(t0=float(logit(p)), ls0=math.log(scale0), root=root,
                                 scale_prior_sd=LEARN_SCALE_PRIOR_SD * span)  # fmt: skip
    return affine, scale_pop


def _correlation(cov: Any) -> float:
    """The correlation of the last two coordinates of a covariance matrix (0 when there is
    none to read), bounded by 0.95 in size."""
    c = np.asarray(cov if cov is not None else np.zeros((0, 0)), np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        return 0.0
    c = c[-2:, -2:]
    # A coordinate held at an edge of its range has no variance (PopulationFit.at_edge).
    if not (np.all(np.isfinite(c)) and c[0, 0] > 0 and c[1, 1] > 0):
        return 0.0
    rho = float(c[0, 1] / math.sqrt(c[0, 0] * c[1, 1]))
    return min(max(rho, -0.95), 0.95)


def _sample_learn(fit: MapResult, *, num_chains, num_warmup, num_samples, seed, progress,
                  method, dtype, target_accept, log_likelihood, offset, stats,
                  centring=None):  # fmt: skip
    """NUTS for ``prior='learn'`` (:func:`_learn_model`): every x_i, sigma and the population
    (loc, scale), started from the fast path's fit under its learned prior."""
    from bayesmix._arviz import to_inference_data
    from bayesmix._truncnorm import tn_moments

    centring = LEARN_CENTRING if centring is None else centring
    if centring not in _LEARN_CENTRINGS:
        raise InputError(f"centring must be one of {_LEARN_CENTRINGS}, got {centring!r}")
    pop = _population(fit)
    red = fit.stats
    if not isinstance(red, FrameStats):  # _learn_refusal refuses the other models already
        raise InputError("prior='learn' on the NUTS path needs the two-reference statistics")
    n = fit.n_frames
    sigma_ref = float(fit.sigma)
    st_c, ref, sse_ref = centred_reference(red, fit.x, sigma_ref)
    u_scale = 1.0 / math.sqrt(2.0 * float(np.sum(red.n)))
    affine, pop_scale = _learn_setup(fit, pop, centring)
    rng = np.random.default_rng(seed)
    # In the typical set: each frame's standardised posterior, the population around the fast
    # path's estimate (half its sd: the chains still start apart).
    init = {"w": rng.standard_normal((num_chains, n)), "v": rng.standard_normal(num_chains),
            "v_loc": 0.5 * rng.standard_normal(num_chains),
            "v_scale": 0.5 * rng.standard_normal(num_chains)}  # fmt: skip
    args = (st_c, ref, np.float64(sse_ref), _ig_in_units(fit, sigma_ref), affine,
            np.float64(u_scale), pop_scale, fit.prior)  # fmt: skip
    draws, extra, seconds = run_nuts(
        _learn_model, args, init, num_chains=num_chains, num_warmup=num_warmup,
        num_samples=num_samples, method=method, dtype=dtype, target_accept=target_accept,
        progress=progress, seed=seed,
    )  # fmt: skip
    x = draws["x"]
    sigma = sigma_ref * np.asarray(draws["sigma"], np.float64)
    loc = np.asarray(draws["prior_loc"], np.float64)
    scale = np.asarray(draws["prior_scale"], np.float64)
    lo, hi = (float(b) for b in fit.prior.bounds)
    with x64():
        pop_mean = np.asarray(jax.jit(tn_moments)(jnp.asarray(loc), jnp.asarray(scale),
                                                  jnp.float64(lo), jnp.float64(hi))[0])  # fmt: skip
    loglik = None
    if log_likelihood:
        with x64():
            ll = jax.jit(loglik_fn)(_as_f64(red), jnp.asarray(x), jnp.asarray(sigma)[..., None])
            loglik = np.asarray(ll)
        if offset is not None:
            loglik = loglik + np.asarray(offset, np.float64)
    background = _background_at_mean(stats, x)
    idata = to_inference_data(
        x=x, sigma=sigma, extra=extra, log_likelihood=loglik, fit=fit, background=background,
        attrs={
            "sampling_time": seconds, "num_warmup": int(num_warmup), "seed": int(seed),
            "chain_method": method, "dtype": dtype, "target_accept": float(target_accept),
            "prior_learned": "truncnormal",
            "prior_loc_prior": f"uniform({lo:.6g}, {hi:.6g})",
            "prior_scale_prior": f"half_normal({LEARN_SCALE_PRIOR_SD * (hi - lo):.6g})",
            "prior_loc_map": float(pop.params["loc"]),
            "prior_scale_map": float(pop.params["scale"]),
            "prior_loc_map_sd": float(pop.sd["loc"]),
            "prior_scale_map_sd": float(pop.sd["scale"]),
            "prior_centring": centring,
            "n_centred": int(np.sum(np.asarray(affine.centred) > 0)),
        },
    )  # fmt: skip
    return _add_posterior(idata, {
        "prior_loc": (loc, ()),
        "prior_scale": (scale, ()),
        "prior_mean": (pop_mean, ()),
    })  # fmt: skip


#: Most pixel values (frames x selected pixels) the pixel-level samplers (Poisson and Student-t
#: noise) hold: every gradient reads them all, so the cost grows with N x pixels.
MAX_PIXEL_VALUES = 2_000_000

#: Prior of the Student-t degrees of freedom when NUTS learns them: Gamma(2, rate 0.1)
#: (mean 20, mode 10; Juarez and Steel 2010).
DF_PRIOR = (2.0, 0.1)


class _PixelData(NamedTuple):
    """The pixels of every frame at the fast path's fit (float64 on the host, cast by the run).

    ``r0 = y - mu0`` (the residual at the reference fit), ``ok`` 1 for a pixel in the frame's
    likelihood, ``diff = A - B``, ``bg`` the background basis (P, n); ``cond`` and ``root``
    map the background coordinates: ``c = c0 - cond (x - x0) + root @ v`` per frame.
    """

    y: jnp.ndarray  #: (N, n)
    r0: jnp.ndarray  #: (N, n)
    ok: jnp.ndarray  #: (N, n)
    scale0: jnp.ndarray  #: (N, n): mu0 floored (Poisson), var0 (Gaussian), scale s0 (t)
    aux: jnp.ndarray  #: (N, n): floor - mu0 (Poisson-Gaussian), variance map (t)
    diff: jnp.ndarray  #: (n,)
    bg: jnp.ndarray  #: (P, n)
    x0: jnp.ndarray  #: (N,)
    c0: jnp.ndarray  #: (N, P)
    cond: jnp.ndarray  #: (N, P)
    root: jnp.ndarray  #: (N, P, P)
    const: jnp.ndarray  #: (N,) each frame's log-likelihood at the reference fit


def _delta(data: _PixelData, x, v):
    """The change of every pixel's mean from the reference fit, (N, n), and the background
    coefficients (N, P)."""
    dx = x - data.x0
    delta = dx[:, None] * data.diff
    c = data.c0
    if data.bg.shape[0]:
        dc = -data.cond * dx[:, None] + jnp.einsum("npq,nq->np", data.root, v)
        c = data.c0 + dc
        delta = delta + dc @ data.bg
    return delta, c


def _poisson_frames(data: _PixelData, delta, *, exact: bool, gain: float, read2: float):
    """Per-frame log-likelihood change from the reference fit, (N,).

    Exact Poisson: ``y log(mu) - mu = [y log mu0 - mu0] + [y log1p(d / mu0) - d]``.
    Otherwise the Gaussian with variance ``gain * max(mu, gain / 2) + read^2`` (the mean-dependent
    variance included), centred at the reference: every term is of the size of the change.
    """
    if exact:
        # scale0 is mu0 floored at half a count, aux = mu0 - floor (0 unless floored).
        d = delta + data.aux
        ratio = jnp.maximum(d / data.scale0, -1.0 + 1e-6)
        ll = data.y * jnp.log1p(ratio) - d
    else:
        var0 = data.scale0
        # max(mu0 + d, f) - max(mu0, f) = max(d, f - mu0) - max(0, f - mu0), f = gain / 2.
        dv = gain * (jnp.maximum(delta, data.aux) - jnp.maximum(0.0, data.aux))
        var = var0 + dv
        r0 = data.r0
        ll = -0.5 * jnp.log1p(dv / var0) - 0.5 * (
            (delta * delta - 2.0 * r0 * delta) / var - r0 * r0 * dv / (var * var0)
        )
    return jnp.sum(jnp.where(data.ok > 0, ll, 0.0), axis=1)


def _t_const(df):
    from jax.scipy.special import gammaln

    return gammaln(0.5 * (df + 1.0)) - gammaln(0.5 * df) - 0.5 * jnp.log(df * jnp.pi)


def _student_frames(data: _PixelData, delta, u, log_df, log_df0):
    """Per-frame log-likelihood change of Student-t pixels from the reference fit (scale
    ``s0 * exp(u)``, ``df = df0 * exp(log_df - log_df0)``), (N,), centred: with
    ``a = r^2 / (df s^2)``, ``log1p(a) = log1p(a0) + log1p((a - a0) / (1 + a0))``."""
    df0 = jnp.exp(log_df0)
    df = jnp.exp(log_df)
    k1 = jnp.expm1(log_df0 - log_df)  # df0 / df - 1
    e2 = jnp.expm1(-2.0 * u)
    r0 = data.r0
    q0 = r0 * r0 / (df0 * data.scale0**2)  # a0
    num = ((delta * delta - 2.0 * r0 * delta) * (1.0 + e2) + r0 * r0 * e2) * (1.0 + k1) / (
        df0 * data.scale0 ** 2) + q0 * k1  # fmt: skip
    dlog = jnp.log1p(num / (1.0 + q0))
    ddf = df0 * jnp.expm1(log_df - log_df0)
    dc = _t_const(df) - _t_const(df0)
    ll = dc - u - 0.5 * ddf * jnp.log1p(q0) - 0.5 * (df + 1.0) * dlog
    return jnp.sum(jnp.where(data.ok > 0, ll, 0.0), axis=1)


def _pixel_model(data, affine, hyper, prior, *, kind: str, gain: float = 1.0,
                 read2: float = 0.0, learn_df: bool = False):  # fmt: skip
    """NumPyro model on the pixels: x_i (as in :func:`_model`), the background coefficients
    c_i (flat prior; standardised per frame and conditioned on x at the fast path's fit) and,
    for Student-t pixels, the scale sigma (its prior as in :func:`_model`) and optionally df.

    ``hyper`` = (u_scale, ig_alpha, ig_beta / s0^2, log_df0, log_df_scale).
    """
    import numpyro
    import numpyro.distributions as dist

    n_frames = affine.loc.shape[0]
    n_bg = data.bg.shape[0]
    w = numpyro.sample("w", dist.ImproperUniform(dist.constraints.real, (), (n_frames,)))
    v = None
    if n_bg:
        # Flat prior on c; the map from v to c has a constant Jacobian.
        v = numpyro.sample("v_bg", dist.ImproperUniform(dist.constraints.real, (),
                                                        (n_frames, n_bg)))  # fmt: skip
    x, prior_terms = _x_of(w, affine, prior)
    numpyro.deterministic("x", x)
    numpyro.factor("prior_x", prior_terms)
    delta, c = _delta(data, x, v)
    if n_bg:
        numpyro.deterministic("background", c)
    if kind == "student_t":
        u_scale, ig_a, ig_b, log_df0, ld_scale = hyper
        vs = numpyro.sample("v", dist.ImproperUniform(dist.constraints.real, (), ()))
        u = u_scale * vs
        numpyro.factor("sigma_prior", -2.0 * ig_a * u - ig_b * jnp.exp(-2.0 * u))
        numpyro.deterministic("sigma_rel", jnp.exp(u))
        if learn_df:
            vd = numpyro.sample("v_df", dist.ImproperUniform(dist.constraints.real, (), ()))
            log_df = log_df0 + ld_scale * vd
            a, rate = DF_PRIOR
            numpyro.factor("df_prior", a * log_df - rate * jnp.exp(log_df))  # with Jacobian
        else:
            log_df = log_df0
        numpyro.deterministic("df", jnp.exp(log_df))
        frames = _student_frames(data, delta, u, log_df, log_df0)
    else:
        frames = _poisson_frames(data, delta, exact=kind == "poisson", gain=gain, read2=read2)
    numpyro.deterministic("frame_ll", frames)
    numpyro.factor("loglik", jnp.sum(frames))


def _pixel_values(frames_shape: tuple[int, ...], mask: Any) -> int:
    """N x pixels the pixel-level samplers would hold (from shapes only)."""
    n = int(frames_shape[0]) if frames_shape else 0
    if mask is not None:
        try:
            return n * int(np.count_nonzero(np.asarray(mask)))
        except (TypeError, ValueError):  # a bad mask is reported by prepare()
            pass
    return n * int(np.prod(frames_shape[1:], dtype=np.int64))


def _check_pixel_model(model: MixingModel, frames: Any, mask: Any) -> None:
    """Poisson / Student-t NUTS: the model it supports and the size guard, before any work."""
    spec = noise_spec(model.noise)
    if model.is_simplex:
        raise InputError(
            f"noise={spec!r} on the NUTS path samples the pixel-level likelihood for two "
            f"references only, got {model.n_refs}; use bayesmix.fit_map(..., noise={spec!r}) "
            "for K >= 3 references"
        )
    if model.gain:
        raise InputError(
            f"noise={spec!r} on the NUTS path does not support gain=True yet; use "
            f"bayesmix.fit_map(..., gain=True, noise={spec!r})"
        )
    values = _pixel_values(tuple(np.shape(frames)), mask)
    if values > MAX_PIXEL_VALUES:
        raise InputError(
            f"noise={spec!r} on the NUTS path samples the exact pixel-level likelihood, which "
            f"holds every pixel in memory and reads all of them at every gradient: "
            f"{values:,} frame x pixel values exceed the limit of {MAX_PIXEL_VALUES:,}. Use "
            f"bayesmix.fit_map(..., noise={spec!r}) (the re-weighted fast path, any size), or "
            "sample a subset of frames or pixels (frames[:k], or mask=)"
        )


def _sample_pixels(stack, model: MixingModel, variance: Any, *, num_chains, num_warmup,
                   num_samples, seed, progress, chain_method, dtype, target_accept,
                   log_likelihood, chunk_size, memory_limit, device, map_shape):  # fmt: skip
    """NUTS on the pixel-level likelihood of Poisson(-Gaussian) or Student-t noise, started at
    the fast path's re-weighted fit."""
    from scipy.special import gammaln

    from bayesmix._arviz import to_inference_data
    from bayesmix._io import _check_variance_values, level
    from bayesmix._map import _fit_noise
    from bayesmix._model import check_design
    from bayesmix._reweight import _t_const as t_const
    from bayesmix.noise import _MIN_COUNTS

    noise = model.noise
    fit_kw = {"sigma": None, "sigma_method": "marginal", "max_iter": 1000, "tol": 1e-8,
              "frame": None, "device": device, "map_shape": map_shape, "draws": 400,
              "seed": seed}  # fmt: skip
    design = check_design(model, stack.refs, stack.frame_shape, stack.pixels)
    n_bg = design.shape[0] - 2
    y = np.asarray(stack.frames, np.float64).reshape(np.shape(stack.frames)[0], -1)
    if stack.pixels is not None:
        y = y[:, stack.pixels]
    ok = np.isfinite(y)
    if isinstance(noise, PoissonGaussian) and noise.gain == 1.0 and noise.read_sd == 0.0:
        if np.any(y[ok] < 0):
            raise InputError(
                f"noise='poisson' takes counts, but {int(np.count_nonzero(y[ok] < 0))} pixel "
                "value(s) are negative; subtract no offset, or use "
                "PoissonGaussian(gain=..., read_sd=...) with read noise"
            )
    res = _fit_noise(stack, model, variance, fit_kw=fit_kw, chunk_size=chunk_size,
                     memory_limit=memory_limit)  # fmt: skip
    n = res.n_frames
    bg = design[:n_bg]
    diff = design[-2] - design[-1]
    x0 = np.asarray(res.mean, np.float64)
    c0 = (np.zeros((n, 0)) if res.background is None
          else np.asarray(res.background, np.float64).reshape(n, n_bg))  # fmt: skip
    mu0 = design[-1] + x0[:, None] * diff + c0 @ bg
    y = np.where(ok, y, 0.0)
    r0 = np.where(ok, y - mu0, 0.0)
    params = dict(res.noise_params)
    hyper: tuple = ()
    kw: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    if isinstance(noise, StudentT):
        kind = "student_t"
        if variance is None:
            vmap = np.ones_like(y)
        else:
            from bayesmix._io import check_variance

            vmap = check_variance(variance, stack)
            if vmap.ndim == 1:
                vmap = np.broadcast_to(vmap, y.shape)
            else:
                vmap = np.asarray(vmap, np.float64).reshape(n, -1)
                if stack.pixels is not None:
                    vmap = vmap[:, stack.pixels]
                _check_variance_values("variance", vmap)
            ok = ok & np.isfinite(vmap)
            vmap = np.where(ok, vmap, 1.0)
        s0 = float(params.get("noise_scale", res.sigma))
        df0 = float(params["noise_df"])
        scale0 = s0 * np.sqrt(vmap)
        aux = vmap
        q0 = r0 * r0 / (df0 * scale0**2)
        const_px = t_const(df0) - np.log(scale0) - 0.5 * (df0 + 1.0) * np.log1p(q0)
        info = (df0 + 1.0) / ((df0 + 3.0) * scale0**2)
        ig_a, ig_b = model.sigma_prior.ig_params
        n_tot = float(np.count_nonzero(ok))
        hyper = (1.0 / math.sqrt(2.0 * n_tot), ig_a, ig_b / s0**2, math.log(df0), 0.1)
        kw["learn_df"] = noise.df is None
        if noise.df is None:
            attrs["df_prior"] = f"gamma({DF_PRIOR[0]:g}, {DF_PRIOR[1]:g})"
    else:
        gain = float(params.get("noise_gain", noise.gain if noise.gain is not None else 1.0))
        read_sd = float(params.get("noise_read_sd", noise.read_sd or 0.0))
        exact = gain == 1.0 and read_sd == 0.0
        kind = "poisson" if exact else "poisson_gaussian"
        if exact:
            scale0 = np.maximum(mu0, _MIN_COUNTS)
            aux = mu0 - scale0
            const_px = y * np.log(scale0) - scale0 - gammaln(y + 1.0)
            info = 1.0 / scale0
        else:
            scale0 = noise.variance(mu0, gain, read_sd**2)
            aux = _MIN_COUNTS * gain - mu0
            const_px = -0.5 * np.log(2.0 * np.pi * scale0) - 0.5 * r0 * r0 / scale0
            info = 1.0 / scale0
            kw.update(gain=gain, read2=read_sd**2)
        attrs.update(
            noise_gain=gain,
            noise_read_sd=read_sd,
            likelihood="poisson" if exact else "gaussian(gain * mean + read_sd^2)",
        )
    okf = ok.astype(np.float64)
    const = np.sum(np.where(ok, const_px, 0.0), axis=1)
    info = np.where(ok, info, 0.0)
    # The background given x, whitened at the fit: c = c0 - cond (x - x0) + root @ v.
    if n_bg:
        g_cc = np.einsum("pk,nk,qk->npq", bg, info, bg)
        g_cx = np.einsum("pk,nk,k->np", bg, info, diff)
        cond = np.linalg.solve(g_cc, g_cx[..., None])[..., 0]
        chol = np.linalg.cholesky(g_cc)
        root = np.swapaxes(np.linalg.inv(chol), 1, 2)
    else:
        cond, root = np.zeros((n, 0)), np.zeros((n, 0, 0))
    # Student-t pixels in units of their scale (the model reads only ratios to it): O(1)
    # numbers in float32 whatever the data's units. Counts are in their own unit already.
    unit = level(scale0[ok]) if kind == "student_t" else 1.0
    data = _PixelData(y=y / unit, r0=r0 / unit, ok=okf, scale0=np.where(ok, scale0, 1.0) / unit,
                      aux=aux, diff=diff / unit, bg=bg, x0=x0, c0=c0 / unit, cond=cond / unit,
                      root=root / unit, const=const)  # fmt: skip
    loc, scale = _standardise(res)
    rng = np.random.default_rng(seed)
    init = {"w": rng.standard_normal((num_chains, n))}
    if n_bg:
        init["v_bg"] = rng.standard_normal((num_chains, n, n_bg))
    if kind == "student_t":
        init["v"] = 0.5 * rng.standard_normal(num_chains)
        if kw["learn_df"]:
            init["v_df"] = 0.5 * rng.standard_normal(num_chains)
    with on_device(device) as devices:
        method = _chain_method(chain_method, num_chains, len(devices))
        draws, extra, seconds = run_nuts(
            partial(_pixel_model, kind=kind, **kw), (data, _Frame(loc, scale), hyper, res.prior),
            init, num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
            method=method, dtype=dtype, target_accept=target_accept, progress=progress,
            seed=seed,
        )  # fmt: skip
    x = draws["x"]
    loglik = draws["frame_ll"] + const if log_likelihood else None
    shape = x.shape[:2]
    sigma = s0 * draws["sigma_rel"] if kind == "student_t" else np.ones(shape)
    if n_bg:
        draws["background"] = unit * np.asarray(draws["background"], np.float64)
    background = draws["background"].mean(axis=(0, 1)) if n_bg else None
    idata = to_inference_data(
        x=x, sigma=sigma, extra=extra, log_likelihood=loglik, fit=res, background=background,
        attrs={
            "sampling_time": seconds, "num_warmup": int(num_warmup), "seed": int(seed),
            "chain_method": method, "dtype": dtype, "target_accept": float(target_accept),
            "pixel_likelihood": kind, **attrs,
        },
    )  # fmt: skip
    more: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    if n_bg:
        more["background"] = (draws["background"], ("frame", "background_term"))
    if kind == "student_t" and kw["learn_df"]:
        more["df"] = (draws["df"], ())
    return _add_posterior(idata, more)


def sample(
    frames: Any,
    ref_a: Any,
    ref_b: Any,
    *more_refs: Any,
    prior: XPrior | None = None,
    sigma_prior: SigmaPrior | None = None,
    background: Any = None,
    gain: bool = False,
    spectral_axis: int | None = None,
    mask: Any = None,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    progress: bool = True,
    chain_method: str = "auto",
    dtype: str = "float32",
    target_accept: float = 0.8,
    log_likelihood: bool = True,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    device: str | None = None,
    ref_names: Any = None,
    noise: Any = "gaussian",
    variance: Any = None,
    temporal: Any = None,
    times: Any = None,
    sequence_id: Any = None,
):
    """Sample the joint posterior of all weights and the noise scale with NUTS.

    Parameters
    ----------
    frames : array, shape (N, *S)
        The stack (see :func:`bayesmix.fit_map`).
    ref_a, ref_b : array, shape S
        Reference frames; ``x`` is the weight of ``ref_a``.
    *more_refs : array, shape S
        More references (K >= 3): every frame's K weights are sampled on the simplex under the
        Dirichlet prior, and ``posterior["x"]`` has dims (chain, draw, frame, reference).
    prior, sigma_prior
        Priors on each weight and on the noise scale (defaults as in :func:`bayesmix.fit_map`;
        ``Dirichlet(1)`` for K >= 3). ``prior='learn'`` (or
        ``bayesmix.priors.learn('truncnormal')``) samples the prior too: the weights are a
        population ``TruncatedNormal(loc, scale, low, high)`` whose ``loc ~ Uniform(low,
        high)`` and ``scale ~ HalfNormal(high - low)`` are sampled with every weight and sigma
        (``posterior["prior_loc"]``, ``["prior_scale"]`` and the population's mean
        ``["prior_mean"]``), started from the fast path's maximum-marginal-likelihood
        estimate (``fit_map(..., prior='learn')``). Two references, the truncated-normal
        family, Gaussian noise with one sigma (a background or ``variance=`` allowed), no
        gain, independent frames; anything else is an ``InputError`` before any work.
    background, gain, spectral_axis
        The model, as in :func:`bayesmix.fit_map`. The background is integrated out
        analytically; the gain is integrated out in the sampled density, and one draw of each
        frame's gain from its exact conditional (a truncated normal given x and sigma) is
        stored per draw as ``posterior["gain"]``.
    mask : bool array, shape S, optional
        Pixels to use.
    num_chains, num_warmup, num_samples : int
        Chains, warm-up iterations and kept draws per chain.
    seed : int
        Seed: the same seed gives the same draws on the same machine.
    progress : bool
        Show a progress bar (updated from inside the compiled sampler, about 50 times a
        chain). Repeated calls with data of the same shape and the same options reuse the
        compiled sampler: only the first pays the compilation.
    chain_method : {'auto', 'vectorized', 'parallel', 'sequential'}
        How chains run; 'auto' runs them in parallel when there is a device per chain (GPUs, or
        CPU host devices set up before JAX starts) and vectorised on one device otherwise.
    dtype : {'float32', 'float64'}
        Precision of the sampler. float32 is safe (the likelihood is in a centred form whose
        terms stay far from float32's limits) and ~1.6x faster on CPU.
    target_accept : float
        NUTS target acceptance probability.
    log_likelihood : bool
        Store the per-frame pointwise log-likelihood (for ``arviz.loo``).
    chunk_size : int, optional
        Frames per chunk of the statistics pass.
    memory_limit : int, optional
        Bytes of frame data held at once by the statistics pass (see :func:`frame_stats`);
        a memory-mapped stack larger than memory is then streamed within this bound.
    device : {'cpu', 'gpu'}, optional
        Where the sampler runs; default JAX's default device. A GPU that JAX cannot see is an
        error. Chains run in parallel when the platform has a device per chain.
    ref_names : sequence of str, optional
        Names of the K references (the ``reference`` coordinate); default A, B, C, ...
    noise : str or bayesmix.noise model
        The pixel noise model (see :mod:`bayesmix.noise` and :func:`bayesmix.fit_map`):

        - ``'gaussian'`` (default): one sigma for all frames, sampled on the statistics (with
          ``variance=``, sigma scales the variance map).
        - ``'per_frame'``: a sigma_i per frame with a non-centred hierarchical prior,
          ``log sigma_i = mu + tau z_i``, ``z_i ~ N(0, 1)``, ``mu ~ N(m0, 10)`` (``m0`` the
          fast path's estimate of mu: a data-scale centre, the prior nearly flat),
          ``tau ~ HalfNormal(1)``; x_i, z_i, mu and tau are sampled on the statistics.
          ``posterior`` gains ``sigma_frame`` (dims frame), ``log_sigma_mu`` and
          ``log_sigma_tau``; ``sigma`` is then ``exp(mu)``, the population's median scale.
          Two references, no gain.
        - ``'poisson'``, ``PoissonGaussian(gain, read_sd)``, ``'student_t'``,
          ``StudentT(df)``: NUTS on the pixel-level likelihood, with x and the background
          coefficients (flat prior) per frame as parameters. ``'poisson'`` (gain 1, no read
          noise: counts) is the exact Poisson likelihood; any other gain or read noise is a
          Gaussian of variance ``gain * max(mean, gain / 2) + read_sd**2`` (the variance
          follows the sampled mean; an approximation of the Poisson-Gaussian convolution,
          good from a few counts up). A gain or read noise left None is fixed at the fast
          path's estimate. Student-t pixels have the scale sigma (prior ``sigma_prior``) and
          df sampled under a Gamma(2, 0.1) prior, or df fixed by ``StudentT(df=...)``;
          ``posterior["df"]`` holds its draws. ``sigma`` is fixed at 1 for Poisson models
          (the variance is set by the mean). These hold every pixel in memory and read all of
          them at each gradient: at most :data:`MAX_PIXEL_VALUES` (2e6) frames x pixels, else
          a ``ValueError`` (use :func:`bayesmix.fit_map` or a subset). Two references, no gain.
    variance : array, shape S or (N, *S), optional
        Each pixel's noise variance up to sigma^2 (one map for all frames, or one per frame;
        ``+inf`` leaves a pixel out), with ``'gaussian'``, ``'per_frame'`` or Student-t noise:
        the statistics are weighted by its inverse, as in :func:`bayesmix.fit_map`. Not with
        Poisson noise (its variance comes from the mean).
    temporal : {'independent', 'random_walk'} or bayesmix.temporal model
        How the frames' weights are related (:mod:`bayesmix.temporal`), as in
        :func:`bayesmix.fit_map`. 'independent' (default): each weight has the prior on its
        own. 'random_walk' (or ``RandomWalk(q)``): a Gaussian random walk along each sequence,
        kept within the prior's bounds, sampled jointly with sigma and the step q (log-uniform
        prior over the fast path's search range, ``posterior["q"]`` per unit of ``times``), or
        with q fixed when given. Two references, a truncated-normal or uniform prior, no gain,
        and Gaussian noise on the statistics (``'gaussian'``, with a background or a variance
        map if wanted); not with the pixel-level noise models (Poisson, Student-t). The walk's
        sampler always runs in float64 (``dtype`` is not used for it).
    times : array, shape (N,), optional
        Each frame's time (numbers or datetime64; default the frame index): the walk's step
        over a gap is ``q * sqrt(gap)``. Only with a temporal model.
    sequence_id : array, shape (N,), optional
        Each frame's sequence label: independent walks, one per label. Only with a temporal
        model.

    Returns
    -------
    arviz.InferenceData
        ``posterior`` (``x`` with dims (chain, draw, frame), or (chain, draw, frame,
        reference) for K >= 3 references, ``sigma``, and the noise model's parameters; ``q``
        with a random walk; ``prior_loc``, ``prior_scale`` and ``prior_mean`` with
        ``prior='learn'``), ``sample_stats``, ``log_likelihood`` (``y``, per frame: the log
        density of the frame's pixels, with a variance map's Jacobian included),
        ``observed_data`` (the per-frame statistics) and ``constant_data`` (the MAP it started
        from; with a random walk also each frame's ``time`` and ``sequence``).

    Notes
    -----
    The likelihood on the statistics is the all-pixel Gaussian likelihood exactly (not an
    approximation): :math:`\\sum_p (r_{ip} - x d_p)^2 = \\mathrm{rss}_i +
    \\mathrm{dd}_i (x - \\hat x_i)^2`. The pointwise log-likelihood is per frame, so its size
    does not grow with the pixel count.

    With K >= 3 references the likelihood is :math:`\\mathrm{rss}_i + (x - w_i)^T M_i^T M_i
    (x - w_i)` (:class:`SimplexStats`); the weights are sampled through the stick-breaking map of
    the simplex (NumPyro's transform for ``Dirichlet``), whitened per frame at the fast path's
    MAP, and the chains start around that MAP nudged inside the simplex.

    Every noise model starts from the fast path's fit with the same noise model
    (``fit_map(..., noise=...)``): per-frame scales from its integrated posterior, Poisson and
    Student-t from its re-weighted fit, whose pixels' residuals centre the pixel-level
    likelihood (float32 then stays accurate: every term is of the size of a change from the
    fit).

    With ``temporal='random_walk'`` the frames are sorted by (sequence, time) and the walk is
    sampled in non-centred coordinates: each step, scaled by ``q sqrt(gap)``, is the image of a
    standard normal coordinate under the quantile map of the truncated normal onto the range
    that keeps the weight within the bounds, so the sampled density is the bounded walk
    exactly (no approximation at the bounds) and q enters only the map. The chains start
    around the fast path's fit (``fit_map(..., temporal='random_walk')``: its sigma, q and
    smoothed means).

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(50, shape=(16, 16), noise=0.3, seed=0)
    >>> idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=2,
    ...                         num_warmup=200, num_samples=200, progress=False)
    >>> idata.posterior["x"].dims
    ('chain', 'draw', 'frame')
    """
    _learn_refusal(prior, n_refs=2 + len(more_refs), gain=gain, noise=noise, temporal=temporal)
    model = make_model(prior=prior, sigma_prior=sigma_prior, background=background, gain=gain,
                       n_refs=2 + len(more_refs), ref_names=ref_names, noise=noise,
                       temporal=temporal)  # fmt: skip
    check_nuts(model)
    _check_options(model, None, "marginal", 1000, 1e-8)
    _check_run(num_chains, num_warmup, num_samples, dtype, target_accept, seed)
    times, sequence_id = _check_sequence_options(model, times, sequence_id, _leading(frames))
    if variance is not None and isinstance(model.noise, PoissonGaussian):
        raise InputError(
            "variance= and a Poisson noise model both set each pixel's variance; give one: "
            "the Poisson model computes it from the mean"
        )
    if variance is not None and spectral_axis is not None and np.ndim(variance) == np.ndim(frames):
        variance, _ = spectral_frames(variance, spectral_axis, ref_a)
    frames, map_shape = spectral_frames(frames, spectral_axis, ref_a)
    pixel_level = model.noise.reweights
    if pixel_level:
        _check_pixel_model(model, frames, mask)
    stack = prepare(frames, ref_a, ref_b, mask, more_refs)
    run = {"num_chains": num_chains, "num_warmup": num_warmup, "num_samples": num_samples,
           "seed": seed, "progress": progress, "chain_method": chain_method, "dtype": dtype,
           "target_accept": target_accept, "log_likelihood": log_likelihood, "device": device,
           "map_shape": map_shape}  # fmt: skip
    walk = {"times": times, "sequence_id": sequence_id}
    if pixel_level:
        from bayesmix._weighted import check_passes

        check_passes(stack)
        return _sample_pixels(stack, model, variance, chunk_size=chunk_size,
                              memory_limit=memory_limit, **run)  # fmt: skip
    offset = None
    if variance is not None:
        # As the fast path: one weighted statistics pass, sigma then scales the map.
        from bayesmix._io import check_variance
        from bayesmix._model import check_design
        from bayesmix._weighted import variance_weigher, weighted_stats

        variance = check_variance(variance, stack)
        design = check_design(model, stack.refs, stack.frame_shape, stack.pixels)
        stats, offset = weighted_stats(
            stack, design, design.shape[0] - model.n_refs,
            variance_weigher(variance, stack.pixels), chunk_size=chunk_size,
            memory_limit=memory_limit, stacklevel=3,
        )  # fmt: skip
    else:
        stats = _stats_for(stack, model, chunk_size=chunk_size, memory_limit=memory_limit,
                           stacklevel=2, device=device)  # fmt: skip
    return _sample_stats(stats, model=model, frame=None, offset=offset, **run, **walk)
