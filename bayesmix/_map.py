"""The fast path: the noise scale by closed-form updates, then every weight's MAP and exact
posterior given it.

Given sigma, each frame's posterior is known exactly (:mod:`bayesmix._posterior`). sigma itself is
learned by one of two fixed-point iterations, each step in closed form and vectorised over frames:

- ``'marginal'`` (default), EM for the mode of :math:`p(\\sigma \\mid y)` with the weights
  integrated out:
  :math:`\\sigma^2 \\leftarrow (\\sum_i E[\\mathrm{rss}_i + \\mathrm{dd}_i (x_i - \\hat x_i)^2]
  + 2\\beta) / (n + 2\\alpha + 1)`, the expectation under each x's exact posterior given the
  current sigma;
- ``'joint'``, coordinate ascent on :math:`\\log p(x, \\sigma \\mid y)`: x given sigma (each
  frame's mode), then :math:`\\sigma^2 = (\\mathrm{SSE}(x) + 2\\beta) / (n + 2\\alpha + 1)`.

:math:`(\\alpha, \\beta)` are the inverse-gamma parameters of the sigma prior (both 0 for
Jeffreys), n the total number of valid pixels. Both iterations increase their objective at every
step and stop when sigma^2 changes by less than ``tol`` (relative). Everything runs in one jitted
call on the O(N) statistics, in float64 (scoped: JAX's global configuration is not touched).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._devices import on_device
from bayesmix._errors import InputError
from bayesmix._io import prepare, spectral_frames
from bayesmix._likelihood import energy, sse
from bayesmix._model import MixingModel, make_model
from bayesmix._perframe import fit_per_frame
from bayesmix._posterior import _in_blocks, _n_blocks, posterior_method
from bayesmix._precision import x64
from bayesmix._results import MapResult
from bayesmix._simplex import fit_simplex, fit_simplex_gain, simplex_map
from bayesmix._stats import (
    BasisStats,
    FrameStats,
    GainStats,
    SimplexStats,
    basis_stats_from_stack,
    bucket_size,
    pad_stats,
    reduce_stats,
    stats_from_stack,
)
from bayesmix.noise import PerFrame, PoissonGaussian, noise_spec
from bayesmix.priors import (
    Beta,
    Jeffreys,
    Learn,
    PointMassMixture,
    SigmaPrior,
    TruncatedNormal,
    Uniform,
    XPrior,
)
from bayesmix.temporal import Independent, temporal_spec

__all__ = ["fit_map", "fit_map_stats"]

#: How many times each jitted core has been traced (compiled); the tests watch it.
TRACES: Counter[str] = Counter()


SIGMA_METHODS = ("marginal", "joint")


@partial(jax.jit, static_argnames=("sigma_method", "max_iter", "n_blocks"))
def _map_core(stats, valid, prior, ig, sigma2_0, tol, *, sigma_method, max_iter, n_blocks):
    """sigma by EM (or coordinate ascent), then every frame's posterior summary given it.

    The posterior method is chosen by the types of ``prior`` and ``stats`` when this is traced
    (:func:`bayesmix._posterior.posterior_method`); their numbers are traced arguments.
    """
    TRACES["map"] += 1
    method = posterior_method(prior, stats)
    n_tot = jnp.sum(jnp.where(valid, stats.n, 0.0))
    # Noise below the data's own rounding is not resolvable; the floor also keeps a noise-free
    # simulation finite. The contrast of the references enters it too: frames equal to B have
    # no energy at all.
    scale = jnp.sum(jnp.where(valid, energy(stats), 0.0)) / n_tot
    floor = jnp.maximum(jnp.finfo(jnp.float64).eps * scale, jnp.finfo(jnp.float64).tiny)

    def m_step(total):
        return jnp.maximum((total + 2.0 * ig[1]) / (n_tot + 2.0 * ig[0] + 1.0), floor)

    def cond(state):
        _, s2, s2_old, it = state
        return (it < max_iter) & (jnp.abs(s2 - s2_old) > tol * s2)

    def update(s2):
        if sigma_method == "joint":
            x = _in_blocks(lambda st: method.mode(st, s2, prior), stats, n_blocks)
            return m_step(jnp.sum(jnp.where(valid, sse(x, stats), 0.0)))
        # EM: the M-step with the expected squared error under each frame's exact posterior.
        e_sse = _in_blocks(lambda st: method.expected_sse(st, s2, prior), stats, n_blocks)
        return m_step(jnp.sum(jnp.where(valid, e_sse, 0.0)))

    def body(state):
        _, s2, _, it = state
        return None, update(s2), s2, it + 1

    s2 = jnp.maximum(sigma2_0, floor)
    if sigma_method != "fixed":
        init = (None, update(s2), s2, jnp.asarray(1))
        _, s2, s2_old, it = jax.lax.while_loop(cond, body, init)
        converged = jnp.abs(s2 - s2_old) <= tol * s2
    else:
        it, converged = jnp.asarray(0), jnp.asarray(True)
    summ = _in_blocks(lambda st: method.summary(st, s2, prior), stats, n_blocks)
    return summ, s2, it, converged


def _flat_sd(prior: XPrior) -> float:
    """The sd of a flat prior on the prior's bounds."""
    lo, hi = prior.bounds
    return (hi - lo) / math.sqrt(12.0)


def _prior_sd(prior: XPrior) -> float:
    """The prior's spread on x (its sd; for a truncated normal, the smaller of scale and the
    sd of a flat prior on its bounds)."""
    lo, hi = prior.bounds
    flat = (hi - lo) / math.sqrt(12.0)
    if isinstance(prior, TruncatedNormal):
        return min(prior.scale, flat)
    if isinstance(prior, Beta):
        a, b = prior.a, prior.b
        return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    return flat


def _warn_if_uninformative(stats: FrameStats, sigma: float, prior: XPrior,
                           stacklevel: int = 5) -> None:  # fmt: skip
    """Warn when the frames say less about x than the prior does: nearly identical references
    (or too few pixels) for the noise. The weights are then mostly the prior's."""
    dd = float(np.median(stats.dd))
    width = sigma / math.sqrt(dd) if dd > 0 else math.inf
    # Against the bounds, not the prior: a strong prior is the user's choice, not a sign
    # that the references are too alike.
    spread = _flat_sd(prior)
    if width > spread:
        warnings.warn(
            f"the references differ little for this noise: a frame alone pins x down to about "
            f"sigma/||A - B|| = {width:.3g} (median over frames), wider than a flat prior on "
            f"the bounds ({spread:.3g}), so the weights mostly reflect the prior; check that A "
            "and B are the right references, or use more pixels per frame",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def check_sigma(sigma: Any) -> None:
    """A known noise scale: one positive finite real number (or None: learn it)."""
    if sigma is None:
        return
    if isinstance(sigma, (str, bytes, bool, np.bool_)) or np.ndim(sigma) != 0 or (
        np.asarray(sigma).dtype.kind not in "fiu"
    ):
        shape = f" of shape {np.shape(sigma)}" if np.ndim(sigma) else ""
        raise InputError(
            f"sigma must be one positive number (the known noise scale, in the data's units), "
            f"got {type(sigma).__name__}{shape} {sigma!r}; pass e.g. sigma=0.05, or None to "
            "learn it"
        )
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputError(
            f"sigma must be a positive finite noise scale, or None to learn it, got {sigma!r}"
        )


def _check_options(
    model: MixingModel, sigma, sigma_method, max_iter, tol
) -> None:  # fmt: skip
    """Validate the fit options before any pass over the pixels."""
    if sigma_method not in SIGMA_METHODS:
        raise InputError(f"sigma_method must be one of {SIGMA_METHODS}, got {sigma_method!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise InputError(f"tol must be a positive number, got {tol!r}")
    check_sigma(sigma)
    if model.gain and sigma_method == "joint":
        raise InputError(
            "sigma_method='joint' is not available with gain=True (the gain is integrated out, "
            "so there is no joint mode over it); use sigma_method='marginal'"
        )


def fit_map_stats(
    stats: FrameStats | BasisStats,
    *,
    prior: XPrior | None = None,
    sigma_prior: SigmaPrior | None = None,
    sigma: float | None = None,
    sigma_method: str = "marginal",
    background: Any = None,
    gain: bool = False,
    max_iter: int = 1000,
    tol: float = 1e-8,
    frame: Any = None,
    device: str | None = None,
    model: MixingModel | None = None,
    map_shape: tuple[int, ...] | None = None,
    ref_names: Any = None,
    draws: int = 400,
    seed: int = 0,
    noise: Any = "gaussian",
    temporal: Any = None,
    times: Any = None,
    sequence_id: Any = None,
) -> MapResult:
    """:func:`fit_map` on precomputed per-frame statistics.

    ``stats`` is a :class:`FrameStats` (from :func:`frame_stats`: the two-reference model) or a
    :class:`BasisStats` (from :func:`frame_stats` with ``background=`` or ``gain=``; pass the
    same options here). ``noise`` may be 'gaussian' or 'per_frame' (the models whose
    likelihood the statistics hold). ``temporal``, ``times`` and ``sequence_id`` relate the frames
    along sequences (see :func:`fit_map`). ``model`` (a :class:`MixingModel`) replaces the model
    options; ``map_shape`` makes the results a map (spectrum images).

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(100, shape=(16, 16), noise=0.05, seed=0)
    >>> st = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    >>> res = bayesmix.fit_map_stats(st)
    >>> bool(abs(res.sigma / 0.05 - 1) < 0.05)
    True
    """
    if model is None:
        k = int(np.shape(stats.w)[1]) if isinstance(stats, (BasisStats, SimplexStats)) else 2
        model = make_model(prior=prior, sigma_prior=sigma_prior, background=background,
                           gain=gain, n_refs=k, ref_names=ref_names, noise=noise,
                           temporal=temporal)  # fmt: skip
    _check_options(model, sigma, sigma_method, max_iter, tol)
    times, sequence_id = _check_sequence_options(model, times, sequence_id, stats.n_frames)
    if model.noise.reweights:
        raise InputError(
            f"noise={noise_spec(model.noise)!r} re-weights every pixel from the current fit, "
            "which needs the frames, not their statistics: call bayesmix.fit_map(frames, ...)"
        )
    if isinstance(stats, BasisStats):
        kind = model.describe()["background"]
        # The frame shape is not known here: check what can be (a 'linear' or custom basis
        # only for being there).
        if (kind == "none") != (stats.n_background == 0) or (
            kind == "constant" and stats.n_background != 1
        ):
            raise InputError(
                f"stats hold {stats.n_background} background term(s), but the model's "
                f"background is {kind!r}; pass the background= the statistics were made with"
            )
    return _fit(stats, model=model, sigma=sigma, sigma_method=sigma_method, max_iter=max_iter,
                tol=tol, frame=frame, device=device, map_shape=map_shape, draws=draws,
                seed=seed, times=times, sequence_id=sequence_id)  # fmt: skip


def _check_stats(stats: Any) -> None:
    """The statistics a user passes to ``fit_map_stats``: finite, and in their ranges."""
    if not isinstance(stats, (FrameStats, BasisStats, SimplexStats)):
        raise InputError(
            "stats must be the FrameStats of bayesmix.frame_stats (or BasisStats of a model "
            f"pass), got {type(stats).__name__}"
        )
    if stats.n_frames == 0:
        raise InputError("stats hold 0 frames; nothing to fit")
    for name in stats._fields:
        a = np.asarray(getattr(stats, name), np.float64)
        if a.shape[:1] != (stats.n_frames,):
            raise InputError(
                f"stats.{name} must hold one entry per frame ({stats.n_frames}), got shape "
                f"{a.shape}"
            )
        bad = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))
        if bad.size:
            raise InputError(
                f"stats.{name} is NaN or Inf for {bad.size} frame(s), e.g. {bad[:5].tolist()}; "
                "recompute the statistics or drop those frames"
            )
    if np.any(np.asarray(stats.rss) < 0):
        raise InputError("stats.rss has negative entries: a residual sum of squares is >= 0")
    n = np.asarray(stats.n, np.float64)
    if np.any(n != np.round(n)) or np.any(n < 1):
        bad = np.flatnonzero((n != np.round(n)) | (n < 1))
        raise InputError(
            f"stats.n must count each frame's valid pixels (whole numbers >= 1), got "
            f"{n[bad[:3]].tolist()} for frame(s) {bad[:3].tolist()}"
        )
    if isinstance(stats, (BasisStats, SimplexStats)):
        chol = np.asarray(stats.chol, np.float64)
        diag = np.diagonal(chol, axis1=-2, axis2=-1)
        if np.any(np.tril(chol, -1) != 0) or np.any(diag == 0):
            raise InputError(
                "stats.chol must hold upper-triangular, non-singular factors (chol^T chol = each "
                "frame's Gram matrix of the references); recompute the statistics with "
                "bayesmix.frame_stats"
            )
    if isinstance(stats, FrameStats) and np.any(np.asarray(stats.dd) <= 0):
        raise InputError("stats.dd must be > 0 (||A - B||^2 over each frame's pixels)")


def _simplex_sigma2(stats: SimplexStats, model: MixingModel, sigma, sigma_method, max_iter,
                    tol) -> tuple[float, int, bool]:  # fmt: skip
    """sigma^2 for K >= 3: given, REML ('marginal'), or the joint mode with the MAP weights."""
    if sigma is not None:
        return float(sigma) ** 2, 0, True
    ig_a, ig_b = model.sigma_prior.ig_params
    rss = float(np.sum(stats.rss))
    if sigma_method == "marginal":
        dof = float(np.sum(stats.dof_residual))
        return (rss + 2.0 * ig_b) / (dof + 2.0 * ig_a + 1.0), 1, True
    prior = model.prior
    alpha = (prior.continuous if isinstance(prior, PointMassMixture) else prior).concentrations
    n_tot = float(np.sum(stats.n))
    s2 = rss / max(float(np.sum(stats.dof_residual)), 1.0)
    for it in range(1, int(max_iter) + 1):
        x, _ = simplex_map(np.asarray(stats.w), np.asarray(stats.chol), alpha, s2)
        d = x - stats.w
        q = np.einsum("nij,nj->ni", stats.chol, d)
        new = (rss + float(np.sum(q * q)) + 2.0 * ig_b) / (n_tot + 2.0 * ig_a + 1.0)
        done = abs(new - s2) <= tol * new
        s2 = new
        if done:
            return s2, it, True
    return s2, int(max_iter), False


def _fit_simplex(stats: SimplexStats, *, model, sigma, sigma_method, max_iter, tol, frame,
                 device, map_shape, draws, seed, basis) -> MapResult:  # fmt: skip
    """K >= 3 references: sigma, then the exact MAP and the sampled summaries given it."""
    with on_device(device) as devices, x64():
        s2, it, converged = _simplex_sigma2(stats, model, sigma, sigma_method, max_iter, tol)
        # The sampler where the data are: numba on the CPU, the vectorised JAX chain on a GPU.
        sampler = "jax" if devices[0].platform == "gpu" else "numba"
        w, chol = np.asarray(stats.w, np.float64), np.asarray(stats.chol, np.float64)
        if isinstance(model.prior, PointMassMixture):
            from bayesmix._learn import FINE_LEVELS, simplex_point_mass

            if model.gain:
                raise InputError(
                    "a PointMassMixture prior with gain=True is not supported: fit without gain"
                )
            cont = fit_simplex(w, chol, model.prior.continuous.concentrations, s2, draws=draws,
                               seed=seed, sampler=sampler, qs=FINE_LEVELS)  # fmt: skip
            fit = simplex_point_mass(cont, stats, model.prior, s2)
        elif model.gain:
            fit = fit_simplex_gain(w, chol, model.prior.concentrations, s2, draws=draws,
                                   seed=seed)  # fmt: skip
        else:
            fit = fit_simplex(w, chol, model.prior.concentrations, s2, draws=draws, seed=seed,
                              sampler=sampler)  # fmt: skip
    background = None
    if basis is not None and basis.n_background:
        background = basis.background_at(fit.mean if fit.w_mean is None else fit.w_mean)
    return MapResult(
        x=fit.x, mean=fit.mean, sd=fit.sd, sigma=float(np.sqrt(s2)), r2=stats.r2,
        at_bound=fit.at_bound, stats=stats, prior=model.prior, sigma_prior=model.sigma_prior,
        sigma_fixed=sigma is not None, n_iter=it, converged=converged,
        frame=None if frame is None else np.asarray(frame),
        device=f"{devices[0].platform}:{len(devices)}", model=model, background=background,
        map_shape=None if map_shape is None else tuple(int(v) for v in map_shape),
        simplex=fit, seed=int(seed), n_draws=int(draws), gain=fit.gain, gain_sd=fit.gain_sd,
    )  # fmt: skip


def _check_sampler(draws: Any, seed: Any) -> None:
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 100:
        raise InputError(
            f"draws must be an integer >= 100 (Gibbs draws per frame for K >= 3 references), "
            f"got {draws!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")


def _fit(stats, *, model, sigma, sigma_method, max_iter, tol, frame, device, map_shape=None,
         draws=400, seed=0, offset=None, times=None, sequence_id=None):  # fmt: skip
    """The fast path on the statistics; its warnings point at the caller of a public function.

    ``offset`` (per frame, or a number) is added to each frame's log marginal likelihood: the
    whitening's Jacobian and the background's flat prior (see :func:`_weighted.weighted_stats`).
    """
    res = _fit_stats(stats, model=model, sigma=sigma, sigma_method=sigma_method,
                     max_iter=max_iter, tol=tol, frame=frame, device=device, map_shape=map_shape,
                     draws=draws, seed=seed, times=times, sequence_id=sequence_id)  # fmt: skip
    res = dataclasses.replace(res, sigma_method="fixed" if sigma is not None else sigma_method)
    if res.loglik is None and _has_evidence(res):
        from bayesmix._learn import evidence_of

        with x64():
            prior_t = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), res.prior)
            padded, _ = pad_stats(res.stats, bucket_size(res.n_frames))
            ev = evidence_of(prior_t, padded, jnp.float64(res.sigma) ** 2)
            ev = np.asarray(ev)[: res.n_frames]
        res = dataclasses.replace(res, loglik=ev)
    if res.loglik is not None and offset is not None:
        extra = np.broadcast_to(np.asarray(offset, np.float64), res.loglik.shape)
        res = dataclasses.replace(res, loglik=res.loglik + extra)
        if res.temporal is not None:  # the walk's log marginal likelihood, on the same footing
            res = dataclasses.replace(res, temporal=dataclasses.replace(
                res.temporal, log_evidence=res.temporal.log_evidence + float(extra.sum())))
    return res


def _has_evidence(res: MapResult) -> bool:
    """The frames' marginal likelihood is implemented: a Gaussian factor in x (closed form for
    a truncated normal or flat prior and point masses, quadrature for Beta)."""
    return isinstance(res.stats, FrameStats) and isinstance(
        res.prior, (TruncatedNormal, Uniform, Beta, PointMassMixture))


def _fit_stats(stats, *, model, sigma, sigma_method, max_iter, tol, frame, device, map_shape,
               draws, seed, times=None, sequence_id=None):  # fmt: skip
    _check_stats(stats)
    _check_sampler(draws, seed)
    if not isinstance(model.temporal, Independent):
        return _fit_temporal(stats, model=model, sigma=sigma, sigma_method=sigma_method,
                             max_iter=max_iter, tol=tol, frame=frame, device=device,
                             map_shape=map_shape, times=times, sequence_id=sequence_id)
    prior, sigma_prior = model.prior, model.sigma_prior
    basis = stats if isinstance(stats, BasisStats) else None
    if basis is not None:
        if basis.n_refs != model.n_refs:
            raise InputError(
                f"stats hold {basis.n_refs} references but the model has {model.n_refs}; pass "
                "the same references the statistics were made with"
            )
        stats = reduce_stats(basis, gain=model.gain)
    elif model.gain:
        raise InputError(
            "gain=True needs the statistics of the model's basis (BasisStats), not FrameStats; "
            "call fit_map(frames, ref_a, ref_b, gain=True)"
        )
    if frame is not None and len(frame) != stats.n_frames:
        raise InputError(f"frame labels must have length {stats.n_frames}, got {len(frame)}")
    if map_shape is not None and int(np.prod(map_shape)) != stats.n_frames:
        raise InputError(f"map_shape {map_shape} does not hold {stats.n_frames} frames")
    dof_ls = float(np.sum(stats.dof_residual))
    if sigma is None and isinstance(sigma_prior, Jeffreys) and dof_ls < 1:
        raise InputError(
            "the noise scale cannot be learned: no frame has more valid pixels than the model "
            "has terms (with two references: every frame has a single valid pixel), so no "
            "residual is left to measure it (under the Jeffreys prior its posterior is "
            "improper); pass sigma= (a known noise scale) or sigma_prior=InverseGamma(...)"
        )
    if isinstance(prior, Learn):
        return _fit_learned(stats, basis, model=model, sigma=sigma, sigma_method=sigma_method,
                            max_iter=max_iter, tol=tol, frame=frame, device=device,
                            map_shape=map_shape, draws=draws, seed=seed)  # fmt: skip
    if isinstance(stats, SimplexStats):
        return _fit_simplex(stats, model=model, sigma=sigma, sigma_method=sigma_method,
                            max_iter=max_iter, tol=tol, frame=frame, device=device,
                            map_shape=map_shape, draws=draws, seed=seed, basis=basis)  # fmt: skip
    n_frames = stats.n_frames
    if isinstance(model.noise, PerFrame):
        return _fit_per_frame_noise(stats, model=model, sigma=sigma, frame=frame,
                                    map_shape=map_shape, basis=basis, max_iter=max_iter)

    if model.gain and not np.any(np.sum(np.asarray(stats.z) ** 2, axis=1) > 0):
        raise InputError(
            "with gain=True every frame's projection on the references is exactly zero: the "
            "frames hold no trace of the mixture, so neither gain nor weight can be estimated"
        )
    # Start from the unbiased least-squares estimate (each frame fits its weights): within the
    # prior's pull of the fixed point, so EM needs two or three steps.
    rss_tot = float(np.sum(stats.rss))
    sigma2_0 = rss_tot / max(dof_ls, 1.0) if sigma is None else float(sigma) ** 2
    with on_device(device) as devices, x64():
        size = bucket_size(n_frames)
        size = -(-size // len(devices)) * len(devices)
        padded, valid = pad_stats(stats, size)
        if len(devices) > 1:
            # Frames split evenly over the platform's devices; XLA adds the cross-device sums.
            mesh = jax.sharding.Mesh(np.asarray(devices), ("frame",))
            spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("frame"))
            padded, valid = jax.device_put((padded, valid), spec)
        ig = jnp.asarray(sigma_prior.ig_params, jnp.float64)
        prior_t = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), prior)
        out = _map_core(
            padded, valid, prior_t, ig, jnp.float64(sigma2_0), jnp.float64(tol),
            sigma_method="fixed" if sigma is not None else sigma_method,
            max_iter=int(max_iter), n_blocks=_n_blocks(size),
        )  # fmt: skip
        summ, s2, it, converged = jax.device_get(out)
    keep = slice(0, n_frames)
    extra = {k: np.asarray(v[keep]) for k, v in summ.extra.items()}
    if isinstance(stats, FrameStats):
        _warn_if_uninformative(stats, float(np.sqrt(s2)), prior)
    else:
        _warn_if_prior_only(np.asarray(summ.sd[keep]), prior)
    if not converged:
        warnings.warn(
            f"the noise scale did not converge in {max_iter} iterations (tol={tol}); "
            "raise max_iter or check the data",
            RuntimeWarning,
            stacklevel=4,
        )
    mean = np.asarray(summ.mean[keep])
    background = None
    if basis is not None and basis.n_background:
        # E[c | y] = bg + bg_sens (E[w | y] - w_ls): the background is linear in w, and
        # E[w] = (E[g x], E[g] - E[g x]) (with gain the two are correlated: not E[g] E[x]).
        g = extra.get("gain", np.ones(n_frames))
        gx = extra.get("gain_x", mean)
        background = basis.background_at(np.stack([gx, g - gx], axis=1))
    return MapResult(
        x=np.asarray(summ.x[keep]),
        mean=mean,
        sd=np.asarray(summ.sd[keep]),
        sigma=float(np.sqrt(s2)),
        r2=stats.r2,
        at_bound=np.asarray(summ.at_bound[keep]),
        stats=stats,
        prior=prior,
        sigma_prior=sigma_prior,
        sigma_fixed=sigma is not None,
        n_iter=int(it),
        converged=bool(converged),
        frame=None if frame is None else np.asarray(frame),
        device=f"{devices[0].platform}:{len(devices)}",
        model=model,
        gain=extra.get("gain"),
        gain_sd=extra.get("gain_sd"),
        background=background,
        map_shape=None if map_shape is None else tuple(int(v) for v in map_shape),
    )


def _fit_learned(stats, basis, *, model, sigma, sigma_method, max_iter, tol, frame, device,
                 map_shape, draws, seed) -> MapResult:  # fmt: skip
    """``prior="learn"``: the prior's hyperparameters by maximum marginal likelihood over all
    frames (jointly with sigma for two references, :mod:`bayesmix._learn`), then the fast path
    under the learned prior at that sigma."""
    from bayesmix._learn import learn_prior

    if sigma_method != "marginal":
        raise InputError(
            f"sigma_method={sigma_method!r} is not available with prior='learn': sigma and the "
            "prior are learned together from the marginal likelihood (sigma_method='marginal')"
        )
    simplex = isinstance(stats, SimplexStats)
    gained = isinstance(stats, GainStats)
    if sigma is not None:
        s2 = float(sigma) ** 2
    elif simplex:
        s2, _, _ = _simplex_sigma2(stats, model, None, "marginal", max_iter, tol)
    else:
        # The least-squares estimate: within O(N / n) of the marginal mode. Two references
        # learn it jointly from here; with a gain the rule is built at it and sigma is learned
        # again under the learned prior below.
        s2 = float(np.sum(stats.rss)) / max(float(np.sum(stats.dof_residual)), 1.0)
    learned, s2, population = learn_prior(
        stats, model.prior, sigma2=s2, sigma_fixed=sigma is not None,
        ig=model.sigma_prior.ig_params, max_iter=max(int(max_iter), 1))  # fmt: skip
    if not population.converged:
        warnings.warn(
            f"the learned prior did not converge in {population.n_iter} Newton iterations; "
            "raise max_iter or check the data",
            RuntimeWarning,
            stacklevel=5,
        )
    fitted = dataclasses.replace(model, prior=learned)
    again = gained and sigma is None
    res = _fit_stats(stats if basis is None else basis, model=fitted,
                     sigma=None if again else math.sqrt(s2),
                     sigma_method="marginal", max_iter=max_iter, tol=tol, frame=frame,
                     device=device, map_shape=map_shape, draws=draws, seed=seed)  # fmt: skip
    return dataclasses.replace(res, sigma_fixed=sigma is not None, population=population,
                               n_iter=population.n_iter, converged=population.converged)


def _fit_temporal(stats, *, model, sigma, sigma_method, max_iter, tol, frame, device, map_shape,
                  times, sequence_id) -> MapResult:  # fmt: skip
    """A random walk along the frames (:mod:`bayesmix._temporal`), started from each frame's
    own fit."""
    from bayesmix._temporal import check_sequence, fit_sequence

    if sigma_method != "marginal":
        raise InputError(
            f"sigma_method={sigma_method!r} is not available with temporal="
            f"{temporal_spec(model.temporal)!r}: sigma is learned with the weights integrated "
            "out along the walk (sigma_method='marginal')"
        )
    n = stats.n_frames
    times, sequence_id = check_sequence(times, sequence_id, n)
    alone = _fit_stats(stats, model=dataclasses.replace(model, temporal=Independent()),
                       sigma=sigma, sigma_method=sigma_method, max_iter=max_iter, tol=tol,
                       frame=frame, device=device, map_shape=map_shape, draws=400, seed=0)
    out = fit_sequence(alone.stats, alone.prior, alone.sigma_prior, q=model.temporal.q,
                       sigma=alone.sigma, sigma_fixed=sigma is not None, times=times,
                       sequence_id=sequence_id, mean_alone=alone.mean, sd_alone=alone.sd,
                       tol=tol, max_iter=max_iter)  # fmt: skip
    background = alone.background
    if isinstance(stats, BasisStats) and stats.n_background:
        background = stats.background_at(np.stack([out["mean"], 1.0 - out["mean"]], axis=1))
    lo, hi = alone.prior.bounds
    return dataclasses.replace(
        alone, x=out["x"], mean=out["mean"], sd=out["sd"], sigma=out["sigma"],
        at_bound=(out["x"] <= lo) | (out["x"] >= hi), n_iter=out["n_iter"],
        converged=out["converged"], loglik=out["loglik"], temporal=out["fit"],
        background=background, model=model,
    )  # fmt: skip


def _fit_per_frame_noise(stats, *, model, sigma, frame, map_shape, basis, max_iter) -> MapResult:
    """Per-frame noise scales: the population of log sigma learned, every sigma_i integrated
    out (:mod:`bayesmix._perframe`)."""
    if sigma is not None:
        raise InputError(
            "noise='per_frame' learns a noise scale per frame: sigma= (one known scale) does not "
            "apply; use noise='gaussian' with sigma=, or a variance map"
        )
    if np.any(np.asarray(stats.n) < 3):
        raise InputError(
            "noise='per_frame' needs at least 3 pixels per frame beyond the background terms: a "
            "frame's own noise scale is measured from its residual"
        )
    with x64():
        fit = fit_per_frame(stats, model.prior, max_iter=max(int(max_iter), 1))
    if not fit.converged:
        warnings.warn(
            f"the population of noise scales did not converge in {fit.n_iter} Newton iterations; "
            "raise max_iter",
            RuntimeWarning,
            stacklevel=5,
        )
    summ = fit.summary
    background = None
    if basis is not None and basis.n_background:
        background = basis.background_at(np.stack([summ.mean, 1.0 - summ.mean], axis=1))
    return MapResult(
        x=summ.x, mean=summ.mean, sd=summ.sd, sigma=float(np.exp(fit.mu)), r2=stats.r2,
        at_bound=summ.at_bound, stats=stats, prior=model.prior, sigma_prior=model.sigma_prior,
        n_iter=fit.n_iter, converged=fit.converged,
        frame=None if frame is None else np.asarray(frame), device="cpu:1", model=model,
        background=background,
        map_shape=None if map_shape is None else tuple(int(v) for v in map_shape),
        noise_params={"log_sigma_mu": fit.mu, "log_sigma_tau": fit.tau,
                      "log_sigma_mu_sd": fit.population.sd["log_sigma_mu"],
                      "log_sigma_tau_sd": fit.population.sd["log_sigma_tau"]},
        sigma_frame=summ.extra["sigma"], sigma_frame_sd=summ.extra["sigma_sd"],
        loglik=fit.log_evidence,
    )  # fmt: skip


def _warn_if_prior_only(sd: np.ndarray, prior: XPrior, stacklevel: int = 5) -> None:
    """Warn when even the best-determined tenth of the frames says little more than the prior:
    the references differ too little for the noise (with gain, frames without mixture are
    expected to say nothing, so the criterion looks only at the best frames)."""
    spread = _prior_sd(prior)  # never above the flat prior's
    best = float(np.quantile(sd, 0.1))
    if best > 0.9 * spread and best > 0.5 * _flat_sd(prior):
        warnings.warn(
            f"the frames say little about x: even the best-determined 10% have a posterior sd "
            f"of {best:.3g} or more, close to the prior's spread {spread:.3g}, so the weights "
            "mostly reflect the prior; check the references, or use more pixels per frame",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def _stats_for(stack: Any, model: MixingModel, **kw: Any) -> FrameStats | BasisStats:
    """The statistics pass the model needs: the plain one, or the one on its basis."""
    if model.is_plain:
        return stats_from_stack(stack, **kw)
    return basis_stats_from_stack(stack, model, **kw)


def _model_ls_theta(stats: BasisStats, gain: bool) -> np.ndarray:
    """Least-squares coefficients [background, references] of the model itself, shape (N, B):
    without a gain the weights sum to one (the plane's least squares, bounds aside)."""
    w, bg = np.asarray(stats.w, np.float64), np.asarray(stats.bg, np.float64)
    if not gain:
        chol = np.asarray(stats.chol, np.float64)
        s_inv = np.linalg.inv(np.einsum("nki,nkj->nij", chol, chol))
        s1 = s_inv.sum(axis=2)  # S^-1 1
        step = (1.0 - w.sum(axis=1)) / s1.sum(axis=1)
        w_plane = w + s1 * step[:, None]
        bg = stats.background_at(w_plane)
        w = w_plane
    return np.hstack([bg, w])


def _offset_unweighted(stack: Any, model: MixingModel) -> np.ndarray | float:
    """The background's flat prior integrated out, -1/2 log det G_cc (unit weights)."""
    p = model.basis_size(stack.frame_shape)
    if not p:
        return 0.0
    basis = model.basis(stack.frame_shape).reshape(p, -1)
    if stack.pixels is not None:
        basis = basis[:, stack.pixels]
    return -0.5 * float(np.linalg.slogdet(basis @ basis.T)[1])


def _quiet(fn, *args, **kw):
    """``fn(*args, **kw)`` and the warnings it raised (shown only for the final pass)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    return out, caught


#: Passes of re-weighting at most, and the change of every posterior mean (in its sd) below
#: which the weights count as converged.
_MAX_PASSES = 50
_PASS_TOL = 0.01


def _fit_noise(stack, model, variance, *, fit_kw, chunk_size, memory_limit) -> MapResult:
    """The fast path with pixel weights: a variance map (one weighted pass), or the noise
    model's weights re-made from the current fit until the posterior means settle."""
    from bayesmix._io import check_variance
    from bayesmix._model import check_design
    from bayesmix._reweight import reweigher
    from bayesmix._weighted import check_passes, unit_weigher, variance_weigher, weighted_stats

    noise = model.noise
    if variance is not None:
        if isinstance(noise, PoissonGaussian):
            raise InputError(
                "variance= and a Poisson noise model both set each pixel's variance; give one: "
                "the Poisson model computes it from the fitted mean"
            )
        variance = check_variance(variance, stack)
    if noise.reweights:
        check_passes(stack)
    design = check_design(model, stack.refs, stack.frame_shape, stack.pixels)
    n_bg = design.shape[0] - model.n_refs
    base = unit_weigher if variance is None else variance_weigher(variance, stack.pixels)
    pass_kw = {"chunk_size": chunk_size, "memory_limit": memory_limit, "stacklevel": 3}
    stats, offset = weighted_stats(stack, design, n_bg, base, **pass_kw)
    sigma_user = fit_kw.pop("sigma")
    first_sigma = sigma_user if not noise.reweights else None
    res, caught = _quiet(_fit, stats, model=model if not noise.reweights else
                         dataclasses.replace(model, temporal=Independent()),
                         sigma=first_sigma, offset=offset, **fit_kw)  # fmt: skip
    if not noise.reweights:
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=3)
        return res
    rw = reweigher(noise, base, int(stack.frames.shape[0]))
    # The passes fit each frame alone; a walk along the frames comes in the final fit.
    final_model, model = model, dataclasses.replace(model, temporal=Independent())
    passes, converged = 0, False
    while passes < _MAX_PASSES:
        passes += 1
        rw.start(res, design.shape[0] - (0 if model.gain else 1), n_bg)
        # Residuals at the model's (weighted) least-squares fit: unbiased for the noise, where
        # the posterior mean's pull towards the prior would leave signal in them.
        theta = _model_ls_theta(stats, model.gain)
        stats, offset = weighted_stats(stack, design, n_bg, rw, fitted=theta, **pass_kw)
        rw.finish()
        if not rw.ready:  # the pass only learned the noise parameters
            continue
        new, caught = _quiet(_fit, stats, model=model, sigma=rw.sigma(sigma_user),
                             offset=offset, **fit_kw)  # fmt: skip
        change = np.max(np.abs(new.mean - res.mean) / np.maximum(new.sd, 1e-12))
        res = new
        if change < _PASS_TOL and rw.settled():
            converged = True
            break
    if not converged:
        warnings.warn(
            f"the pixel weights of noise={noise_spec(noise)!r} did not settle in {_MAX_PASSES} "
            "passes; the estimates may still move",
            RuntimeWarning,
            stacklevel=3,
        )
    params = {**rw.params(), "noise_passes": passes}
    if not isinstance(final_model.temporal, Independent):  # the walk, on the final weights
        res, caught = _quiet(_fit, stats, model=final_model, sigma=rw.sigma(sigma_user),
                             offset=offset, **fit_kw)  # fmt: skip
    loglik = None if res.loglik is None else rw.loglik(res.loglik)
    interval_sigma = rw.interval_sigma() if sigma_user is None else None
    if interval_sigma is not None:
        # Intervals from the converged weights, at the scale that makes them honest even when
        # the pixels are not exactly of the model's family.
        params["noise_scale"] = res.sigma
        res, caught = _quiet(_fit, stats, model=final_model, sigma=interval_sigma,
                             offset=offset, **fit_kw)  # fmt: skip
    for w in caught:  # the final fit's warnings, for the caller of fit_map
        warnings.warn(w.message, w.category, stacklevel=3)
    return dataclasses.replace(res, noise_params=params, loglik=loglik,
                               sigma_fixed=sigma_user is not None)  # fmt: skip


def _check_sequence_options(model: MixingModel, times: Any, sequence_id: Any,
                            n_frames: int | None) -> tuple[Any, Any]:  # fmt: skip
    """``times`` and ``sequence_id`` belong to a temporal model; checked before any work
    (their lengths against ``n_frames`` when it is known)."""
    from bayesmix._temporal import check_sequence

    if isinstance(model.temporal, Independent):
        if times is not None or sequence_id is not None:
            raise InputError(
                "times= and sequence_id= order the frames of a temporal model; pass "
                "temporal='random_walk' as well (frames are independent by default)"
            )
        return None, None
    return check_sequence(times, sequence_id, n_frames)


def _leading(frames: Any) -> int | None:
    """The number of frames of an array-like stack (None for other inputs: checked later)."""
    shape = getattr(frames, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


def fit_map(
    frames: Any,
    ref_a: Any,
    ref_b: Any,
    *more_refs: Any,
    prior: XPrior | None = None,
    sigma_prior: SigmaPrior | None = None,
    sigma: float | None = None,
    sigma_method: str = "marginal",
    background: Any = None,
    gain: bool = False,
    spectral_axis: int | None = None,
    mask: Any = None,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    device: str | None = None,
    ref_names: Any = None,
    draws: int = 400,
    seed: int = 0,
    noise: Any = "gaussian",
    variance: Any = None,
    temporal: Any = None,
    times: Any = None,
    sequence_id: Any = None,
) -> MapResult:
    """Estimate every frame's mixing weight: MAP with exact per-frame posterior given sigma.

    Model: :math:`y_i = g_i (x_i A + (1 - x_i) B) + \\sum_p c_{ip} N_p + \\varepsilon_i`, with
    i.i.d. Gaussian pixel noise of scale sigma shared by all frames, the prior ``prior`` on each
    :math:`x_i` and ``sigma_prior`` on sigma. By default there is no background (:math:`c = 0`)
    and no gain (:math:`g_i = 1`): the two-reference model.

    Parameters
    ----------
    frames : array, shape (N, *S)
        N frames of shape S: (H, W), (H, W, C), or (P,) for spectra. Integer images are
        converted; NaN pixels are left out of their frame.
    ref_a, ref_b : array, shape S
        Reference frames; ``x`` is the weight of ``ref_a``.
    *more_refs : array, shape S
        More references: with K >= 3 references the weights of all K are a point of the simplex
        (see Notes) and ``res.x``, ``res.mean``, ``res.sd`` have shape (N, K).
    prior : TruncatedNormal, Uniform, Beta or Dirichlet, optional
        Prior on each weight. Default ``TruncatedNormal(0.55, 0.15, 0.0, 1.0)`` for two
        references, ``Dirichlet(1)`` (flat on the simplex) for K >= 3.
    sigma_prior : Jeffreys or InverseGamma, optional
        Prior on the noise scale. Default ``Jeffreys()`` (:math:`p(\\sigma) \\propto 1/\\sigma`).
    sigma : float, optional
        Known noise scale. Default: learned from the data (see ``sigma_method``).
    sigma_method : {'marginal', 'joint'}
        How sigma is learned. 'marginal' (default): the mode of :math:`p(\\sigma \\mid y)` with
        every weight integrated out exactly (EM), unbiased even with few pixels per frame.
        'joint': the joint mode of :math:`p(x, \\sigma \\mid y)`, which underestimates
        :math:`\\sigma^2` by a factor of about :math:`1 - N/n` (n pixels in all); not with gain.
    background : {None, 'constant', 'linear'} or array, shape (P, *S)
        A background in every frame with its own coefficients per frame, integrated out exactly
        (flat prior): 'constant' (an offset), 'linear' (an offset plus a ramp along each frame
        axis: a slope for spectra, a plane for images), or P basis images of your own. It costs
        P degrees of freedom per frame; ``res.background`` holds the coefficients' posterior
        means.
    gain : bool
        A per-frame positive amount or exposure :math:`g_i` multiplying the mixture, integrated
        out exactly (flat prior on :math:`g > 0`); x's posterior then comes from a grid fitted to
        each frame. ``res.gain``, ``res.gain_sd``: its posterior mean and sd. Where a frame
        holds no mixture (:math:`g \\approx 0`) x returns to its prior.
    spectral_axis : int, optional
        ``frames`` is a spectrum image, e.g. (E, H, W) with ``spectral_axis=0``: each pixel's
        spectrum is a frame, the references are spectra of length E, and the results keep the
        map's shape (``res.map_shape``, ``res.to_xarray()`` with dims (y, x)).
    mask : bool array, shape S, optional
        Pixels to use (True keeps a pixel).
    chunk_size : int, optional
        Frames per chunk of the statistics pass.
    memory_limit : int, optional
        Bytes of frame data held at once by the statistics pass (see :func:`frame_stats`);
        a memory-mapped stack larger than memory is then streamed within this bound.
    max_iter : int
        Iteration limit of the sigma update (EM or coordinate ascent).
    tol : float
        Relative change of sigma^2 at which the iteration stops. Each step shrinks the error by
        about the fraction of pixels spent on the weights (N/n for 'marginal'), so the error left
        is roughly ``tol * N / n``, far below sigma's own posterior spread of
        :math:`\\sqrt{2/n}`.
    device : {'cpu', 'gpu'}, optional
        Where the inference runs; default JAX's default device. A GPU that JAX cannot see is an
        error. With several devices of the platform, the frames are sharded across them. With
        'gpu' the pass over the pixels runs on the GPU too (in JAX; on the CPU it is numba's).
        Frames that are a ``jax.Array`` are read where they live, whatever ``device`` says:
        the pass runs in JAX on their device and only O(N) statistics come to the host.
    ref_names : sequence of str, optional
        K >= 3: a name per reference for the results' columns (default A, B, C, ...).
    draws, seed : int
        K >= 3: Gibbs draws per frame for the posterior mean, sd and quantiles, and the seed of
        the sampler (the same seed gives the same numbers). Frames whose posterior is a Gaussian
        well inside the simplex (flat prior) are summarised in closed form instead.
    noise : str or noise model
        The pixel noise (:mod:`bayesmix.noise`): 'gaussian' (default: one sigma for all
        frames), 'per_frame' (a sigma per frame from a learned log-normal population,
        integrated out: two references without gain), 'poisson' (counts),
        'poisson_gaussian' or ``PoissonGaussian(gain, read_sd)`` (variance ``gain * mean +
        read_sd**2``, unknowns learned), 'student_t' or ``StudentT(df)`` (heavy tails: hot
        pixels and cosmic rays are down-weighted). The last three re-weight the pixels from
        the current fit over a few passes (``res.noise_params['noise_passes']``).
    variance : array, shape S or (N, *S), optional
        Each pixel's noise variance (one map for all frames, or one per frame; +inf leaves a
        pixel out): the statistics are weighted by its inverse in the same single pass, and
        sigma scales the map (``sigma=1.0``: the map is the variance).
    temporal : {'independent', 'random_walk'} or bayesmix.temporal model
        How the frames' weights are related (:mod:`bayesmix.temporal`). 'independent'
        (default): each frame on its own under the prior. 'random_walk' or
        ``RandomWalk(q)``: :math:`x_t = x_{t-1} + \\varepsilon_t`,
        :math:`\\varepsilon_t \\sim \\mathcal N(0, q^2 \\Delta_t)` along each sequence,
        within the bounds, q learned unless given; the frames share strength with their
        neighbours (see Notes). Needs a likelihood Gaussian in x: two references, no gain,
        not ``noise='per_frame'``, a truncated-normal or uniform prior.
    times : array, shape (N,), optional
        With a random walk: each frame's time (numbers or datetime64), for unevenly spaced
        frames (the step's variance grows with the gap); default the frame index. Frames are
        ordered by time within each sequence.
    sequence_id : array, shape (N,), optional
        With a random walk: a label per frame; frames with different labels are independent
        runs, each starting from the prior.

    Returns
    -------
    MapResult
        ``x`` (MAP), ``mean``, ``sd``, ``sigma``, ``interval(prob)``, ``r2``, ``at_bound``,
        ``gain``, ``background``, ``loglik`` (per frame, for :func:`bayesmix.compare`),
        ``noise_params``, ``sigma_frame``, ``to_dataframe()``, ``to_xarray()``.

    Notes
    -----
    Given sigma, frame i's posterior is a truncated normal (or, for Beta, a 1-D density handled by
    quadrature):

    .. math::

        \\lambda_i = \\frac{\\mathrm{dd}_i}{\\sigma^2} + \\frac{1}{\\tau^2}, \\quad
        m_i = \\frac{\\mathrm{dd}_i \\hat x_i / \\sigma^2 + \\mu / \\tau^2}{\\lambda_i}, \\quad
        x_i \\mid y_i, \\sigma \\sim \\mathcal{TN}(m_i, \\lambda_i^{-1/2}; [lo, hi]).

    Plugging in the learned sigma is exact to relative order :math:`1/\\sqrt{2n}` with ``n`` the
    total number of pixels; use :func:`bayesmix.sample` for the joint posterior.

    A background is integrated out by its Schur complement in each frame's Gram matrix: the
    likelihood stays a Gaussian factor in x with ``n - P`` degrees of freedom, so the same
    closed forms apply. With a gain, integrating g over :math:`(0, \\infty)` leaves, with
    :math:`v(x) = M (x, 1 - x)`, :math:`a = |v|^2`, :math:`b = v \\cdot z`,

    .. math::

        \\log p(x \\mid y_i, \\sigma) = \\log p(x) - \\tfrac12 \\log a
            + \\frac{b^2}{2 \\sigma^2 a} + \\log \\Phi\\Big(\\frac{b}{\\sigma \\sqrt a}\\Big)
            + \\mathrm{const}.

    With K >= 3 references and no gain, x's posterior given sigma is a Gaussian of precision
    :math:`M^T M / \\sigma^2` restricted to the simplex, times the Dirichlet prior: the MAP is an
    exact quadratic programme per frame (faces of the simplex enumerated), the mean, sd and
    quantiles come from an exact Gibbs sampler run for all frames at once (its Monte Carlo error
    in ``res.mc_se``), and sigma is the restricted (REML) estimate from the residuals (see
    :mod:`bayesmix._simplex`).

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(500, shape=(32, 32), noise=0.1, seed=0)
    >>> res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    >>> res.x.shape, bool(abs(res.sigma - 0.1) < 0.005)
    ((500,), True)
    >>> lo, hi = res.interval(0.9)
    >>> bool(0.85 < ((lo <= sim.x) & (sim.x <= hi)).mean() < 0.95)
    True
    """
    model = make_model(prior=prior, sigma_prior=sigma_prior, background=background, gain=gain,
                       n_refs=2 + len(more_refs), ref_names=ref_names, noise=noise,
                       temporal=temporal)  # fmt: skip
    _check_options(model, sigma, sigma_method, max_iter, tol)
    _check_sampler(draws, seed)
    if variance is not None and spectral_axis is not None and np.ndim(variance) == np.ndim(frames):
        # A variance per pixel of the spectrum image: laid out as its frames are.
        variance, _ = spectral_frames(variance, spectral_axis, ref_a)
    frames, map_shape = spectral_frames(frames, spectral_axis, ref_a)
    times, sequence_id = _check_sequence_options(model, times, sequence_id, _leading(frames))
    stack = prepare(frames, ref_a, ref_b, mask, more_refs)
    fit_kw = {"sigma": sigma, "sigma_method": sigma_method, "max_iter": max_iter, "tol": tol,
              "frame": None, "device": device, "map_shape": map_shape, "draws": draws,
              "seed": seed, "times": times, "sequence_id": sequence_id}  # fmt: skip
    if variance is not None or model.noise.reweights:
        return _fit_noise(stack, model, variance, fit_kw=fit_kw, chunk_size=chunk_size,
                          memory_limit=memory_limit)  # fmt: skip
    stats = _stats_for(stack, model, chunk_size=chunk_size, memory_limit=memory_limit,
                       stacklevel=2, device=device)  # fmt: skip
    return _fit(stats, model=model, offset=_offset_unweighted(stack, model), **fit_kw)
