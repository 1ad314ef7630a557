"""The full path: NUTS (NumPyro) on the per-frame statistics, for the joint posterior.

The model samples every weight ``x_i`` and the noise scale jointly. Its likelihood is the exact
all-pixel likelihood written on the statistics (:func:`bayesmix._likelihood.centred_loglik`), so a
gradient costs O(N), not O(N x pixels), and the float32-safe centred form keeps HMC's energy
error meaningful with millions of pixels. Chains start at draws from the analytic posterior
around the MAP (the typical set), with the mass matrix initialised from its variances.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._devices import on_device
from bayesmix._io import prepare, spectral_frames
from bayesmix._likelihood import centred_reference, centred_total, gain_terms
from bayesmix._likelihood import loglik as loglik_fn
from bayesmix._map import _check_options, _fit, _stats_for
from bayesmix._model import MixingModel, make_model
from bayesmix._precision import x64
from bayesmix._results import MapResult
from bayesmix._stats import BasisStats, FrameStats, GainStats, SimplexStats
from bayesmix.priors import Dirichlet, SigmaPrior, XPrior

__all__ = ["sample", "sample_stats"]

_CHAIN_METHODS = ("auto", "vectorized", "parallel", "sequential")
_DTYPES = ("float32", "float64")
_EXTRA_FIELDS = (
    "diverging",
    "num_steps",
    "energy",
    "accept_prob",
    "adapt_state.step_size",
    "potential_energy",
)


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


def _model(stats, x_ref, sse_ref, sigma_ref, ig, affine, u_scale, *, prior):
    """NumPyro model on the statistics, in standardised coordinates.

    ``w`` (one per frame) and ``v`` are the sampled coordinates; the weights are
    ``x = lo + span * sigmoid(loc + scale * w)`` and the noise scale
    ``sigma = sigma_ref * exp(u_scale * v)``. ``loc``/``scale`` come from the analytic posterior
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
    numpyro.factor("sigma_prior", -2.0 * ig[0] * u - ig[1] * jnp.exp(-2.0 * u) / sigma_ref**2)
    numpyro.deterministic("sigma", sigma_ref * jnp.exp(u))
    numpyro.factor("loglik", centred_total(stats, x, u, x_ref, sse_ref, sigma_ref))


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


def _simplex_model(stats, x_ref, sse_ref, sigma_ref, ig, affine, u_scale, prior):
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
    numpyro.factor("sigma_prior", -2.0 * ig[0] * u - ig[1] * jnp.exp(-2.0 * u) / sigma_ref**2)
    numpyro.deterministic("sigma", sigma_ref * jnp.exp(u))
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
        raise ValueError(f"chain_method must be one of {_CHAIN_METHODS}, got {method!r}")
    if method != "auto":
        return method
    # Parallel chains need one device each: several GPUs, or CPU host devices set up before JAX
    # starts (the CLI does; a library must not). Otherwise vectorise the chains on one device.
    return "parallel" if n_devices >= num_chains > 1 else "vectorized"


def _check_counts(**counts: Any) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _mcmc(prior, num_chains, num_warmup, num_samples, method, target_accept, progress):
    """NumPyro's NUTS on the model with this prior baked in (the data are arguments);
    ``prior=None`` is the K >= 3 simplex model (:func:`_simplex_model`, the Dirichlet an argument).

    NumPyro compiles its sampling loop on every ``run`` (a few seconds); JAX's persistent
    compilation cache, where the user enables it, makes repeated runs of one shape cheap.
    """
    from numpyro.infer import MCMC, NUTS

    model = _simplex_model if prior is None else partial(_model, prior=prior)
    kernel = NUTS(model, target_accept_prob=target_accept)
    return MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=method,
        progress_bar=progress,
    )


def _standardise(fit: MapResult) -> tuple[np.ndarray, np.ndarray]:
    """Logit-space location and scale of each frame's analytic posterior (given sigma)."""
    from scipy.special import logit

    lo, hi = fit.prior.bounds
    span = hi - lo
    eps = 1e-6 * span  # strictly inside the bounds, where the logit is finite
    xm = np.clip(fit.mean, lo + eps, hi - eps)
    jac = span / ((xm - lo) * (hi - xm))
    return logit((xm - lo) / span), np.clip(fit.sd * jac, 1e-3, 1e3)


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
):
    """:func:`sample` on precomputed per-frame statistics (see :func:`bayesmix.frame_stats`,
    and :func:`bayesmix.fit_map_stats` for the :class:`BasisStats` of a model with background or
    gain, or K >= 3 references; :class:`SimplexStats` are taken as they are)."""
    from bayesmix._arviz import to_inference_data

    if model is None:
        k = int(np.shape(stats.w)[1]) if isinstance(stats, (BasisStats, SimplexStats)) else 2
        model = make_model(prior=prior, sigma_prior=sigma_prior, gain=gain, n_refs=k,
                           ref_names=ref_names)  # fmt: skip
    _check_counts(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    with on_device(device) as devices:
        method = _chain_method(chain_method, num_chains, len(devices))

        fit = _fit(stats, model=model, sigma=None, sigma_method="marginal", max_iter=1000,
                   tol=1e-8, frame=frame, device=device, map_shape=map_shape)  # fmt: skip
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

        scope = x64() if dtype == "float64" else _float32()
        with scope:
            ft = jnp.float64 if dtype == "float64" else jnp.float32

            def cast(tree: Any) -> Any:
                return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64), ft), tree)

            ig = jnp.asarray(fit.sigma_prior.ig_params, ft)
            if simplex:
                # sse_ref is in units of sigma_ref^2 already; sigma_ref enters the sigma prior.
                args = (
                    cast(st_c), cast(x_ref), ft(sse_ref), ft(sigma_ref), ig,
                    _SimplexFrame(jnp.asarray(loc, ft), jnp.asarray(root, ft)), ft(u_scale),
                    cast(fit.prior),
                )  # fmt: skip
            else:
                args = (
                    cast(st_c), cast(ref), ft(sse_ref), ft(sigma_ref), ig,
                    _Frame(jnp.asarray(loc, ft), jnp.asarray(scale, ft)), ft(u_scale),
                )  # fmt: skip
            mcmc = _mcmc(
                None if simplex else fit.prior, int(num_chains), int(num_warmup),
                int(num_samples), method, float(target_accept), bool(progress),
            )  # fmt: skip
            init_params = {k: jnp.asarray(v, ft) for k, v in init.items()}
            if num_chains == 1:
                init_params = {k: v[0] for k, v in init_params.items()}
            t0 = time.perf_counter()
            mcmc.run(
                jax.random.PRNGKey(seed),
                *args,
                init_params=init_params,
                extra_fields=_EXTRA_FIELDS,
            )
            draws = mcmc.get_samples(group_by_chain=True)
            extra = mcmc.get_extra_fields(group_by_chain=True)
            jax.block_until_ready(draws)
            seconds = time.perf_counter() - t0
            x = np.asarray(draws["x"], np.float64)
            sigma = np.asarray(draws["sigma"], np.float64)
            extra = {k: np.asarray(v) for k, v in extra.items()}
            loglik = None
            if log_likelihood and simplex:
                loglik = _simplex_loglik(red, x, sigma)
            elif log_likelihood:
                # Per frame, from the one likelihood, in float64 (LOO needs differences of O(1)).
                with x64():
                    ll = jax.jit(loglik_fn)(
                        _as_f64(red), jnp.asarray(x), jnp.asarray(sigma)[..., None]
                    )
                    loglik = np.asarray(ll)
    gain_draws = _gain_draws(red, x, sigma, seed) if isinstance(red, GainStats) else None
    background = None
    if isinstance(stats, BasisStats) and stats.n_background:
        if simplex:
            ew = x.mean(axis=(0, 1))
        else:
            g = np.ones_like(x) if gain_draws is None else gain_draws
            ew = np.stack([(g * x).mean(axis=(0, 1)), (g * (1.0 - x)).mean(axis=(0, 1))], axis=1)
        background = stats.bg + np.einsum("kpi,ki->kp", stats.bg_sens, ew - stats.w)

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


class _float32:
    """A no-op scope: JAX's default precision (float32 unless the user enabled x64)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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
        ``Dirichlet(1)`` for K >= 3).
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
        Show NumPyro's progress bar.
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

    Returns
    -------
    arviz.InferenceData
        ``posterior`` (``x`` with dims (chain, draw, frame), or (chain, draw, frame,
        reference) for K >= 3 references, ``sigma``), ``sample_stats``,
        ``log_likelihood`` (``y``, per frame), ``observed_data`` (the per-frame statistics) and
        ``constant_data`` (the MAP it started from).

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

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(50, shape=(16, 16), noise=0.3, seed=0)
    >>> idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=2,
    ...                         num_warmup=200, num_samples=200, progress=False)
    >>> idata.posterior["x"].dims
    ('chain', 'draw', 'frame')
    """
    model = make_model(prior=prior, sigma_prior=sigma_prior, background=background, gain=gain,
                       n_refs=2 + len(more_refs), ref_names=ref_names)  # fmt: skip
    _check_options(model, None, "marginal", 1000, 1e-8)
    _check_counts(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples)
    frames, map_shape = spectral_frames(frames, spectral_axis, ref_a)
    stack = prepare(frames, ref_a, ref_b, mask, more_refs)
    stats = _stats_for(stack, model, chunk_size=chunk_size, memory_limit=memory_limit,
                       stacklevel=2)  # fmt: skip
    return sample_stats(
        stats,
        model=model,
        map_shape=map_shape,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        seed=seed,
        progress=progress,
        chain_method=chain_method,
        dtype=dtype,
        target_accept=target_accept,
        log_likelihood=log_likelihood,
        device=device,
    )
