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
from bayesmix._stats import BasisStats, FrameStats, GainStats
from bayesmix.priors import SigmaPrior, XPrior

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
    """NumPyro's NUTS on the model with this prior baked in (the data are arguments).

    NumPyro compiles its sampling loop on every ``run`` (a few seconds); JAX's persistent
    compilation cache, where the user enables it, makes repeated runs of one shape cheap.
    """
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(partial(_model, prior=prior), target_accept_prob=target_accept)
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
):
    """:func:`sample` on precomputed per-frame statistics (see :func:`bayesmix.frame_stats`,
    and :func:`bayesmix.fit_map_stats` for the :class:`BasisStats` of a model with background or
    gain)."""
    from bayesmix._arviz import to_inference_data

    if model is None:
        model = make_model(prior=prior, sigma_prior=sigma_prior, gain=gain)
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
        # The reference point of the centred likelihood: the MAP, with the squared error there
        # in float64.
        st_c, ref, sse_ref = centred_reference(red, fit.x, sigma_ref)
        loc, scale = _standardise(fit)
        u_scale = 1.0 / math.sqrt(2.0 * float(np.sum(red.n)))
        # Chains start at independent draws of the standardised posterior: the typical set.
        rng = np.random.default_rng(seed)
        init = {"w": rng.standard_normal((num_chains, n)), "v": rng.standard_normal(num_chains)}

        scope = x64() if dtype == "float64" else _float32()
        with scope:
            ft = jnp.float64 if dtype == "float64" else jnp.float32

            def cast(tree: Any) -> Any:
                return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64), ft), tree)

            args = (
                cast(st_c),
                cast(ref),
                ft(sse_ref),
                ft(sigma_ref),
                jnp.asarray(fit.sigma_prior.ig_params, ft),
                _Frame(jnp.asarray(loc, ft), jnp.asarray(scale, ft)),
                ft(u_scale),
            )
            mcmc = _mcmc(
                fit.prior, int(num_chains), int(num_warmup), int(num_samples), method,
                float(target_accept), bool(progress),
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
            if log_likelihood:
                # Per frame, from the one likelihood, in float64 (LOO needs differences of O(1)).
                with x64():
                    ll = jax.jit(loglik_fn)(
                        _as_f64(red), jnp.asarray(x), jnp.asarray(sigma)[..., None]
                    )
                    loglik = np.asarray(ll)
    gain_draws = _gain_draws(red, x, sigma, seed) if isinstance(red, GainStats) else None
    background = None
    if isinstance(stats, BasisStats) and stats.n_background:
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
    *,
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
):
    """Sample the joint posterior of all weights and the noise scale with NUTS.

    Parameters
    ----------
    frames : array, shape (N, *S)
        The stack (see :func:`bayesmix.fit_map`).
    ref_a, ref_b : array, shape S
        Reference frames; ``x`` is the weight of ``ref_a``.
    prior, sigma_prior
        Priors on each weight and on the noise scale (defaults as in :func:`bayesmix.fit_map`).
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

    Returns
    -------
    arviz.InferenceData
        ``posterior`` (``x`` with dims (chain, draw, frame), ``sigma``), ``sample_stats``,
        ``log_likelihood`` (``y``, per frame), ``observed_data`` (the per-frame statistics) and
        ``constant_data`` (the MAP it started from).

    Notes
    -----
    The likelihood on the statistics is the all-pixel Gaussian likelihood exactly (not an
    approximation): :math:`\\sum_p (r_{ip} - x d_p)^2 = \\mathrm{rss}_i +
    \\mathrm{dd}_i (x - \\hat x_i)^2`. The pointwise log-likelihood is per frame, so its size
    does not grow with the pixel count.

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(50, shape=(16, 16), noise=0.3, seed=0)
    >>> idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=2,
    ...                         num_warmup=200, num_samples=200, progress=False)
    >>> idata.posterior["x"].dims
    ('chain', 'draw', 'frame')
    """
    model = make_model(prior=prior, sigma_prior=sigma_prior, background=background, gain=gain)
    _check_options(model, None, "marginal", 1000, 1e-8)
    _check_counts(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples)
    frames, map_shape = spectral_frames(frames, spectral_axis, ref_a)
    stack = prepare(frames, ref_a, ref_b, mask)
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
