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

import math
import warnings
from collections import Counter
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._devices import on_device
from bayesmix._io import prepare
from bayesmix._likelihood import sse
from bayesmix._posterior import mode, moments, prior_params, summary
from bayesmix._precision import x64
from bayesmix._results import MapResult
from bayesmix._stats import FrameStats, bucket_size, pad_stats, stats_from_stack
from bayesmix.priors import (
    Beta,
    Jeffreys,
    SigmaPrior,
    TruncatedNormal,
    XPrior,
    check_prior,
    check_sigma_prior,
)

__all__ = ["fit_map", "fit_map_stats"]

#: How many times each jitted core has been traced (compiled); the tests watch it.
TRACES: Counter[str] = Counter()


SIGMA_METHODS = ("marginal", "joint")


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


@partial(jax.jit, static_argnames=("kind", "sigma_method", "max_iter", "n_blocks"))
def _map_core(stats, valid, pp, ig, sigma2_0, tol, *, kind, sigma_method, max_iter, n_blocks):
    TRACES["map"] += 1
    n_tot = jnp.sum(jnp.where(valid, stats.n, 0.0))
    energy = jnp.sum(jnp.where(valid, stats.rss + stats.dd * stats.xhat**2, 0.0))
    # Noise below the data's own rounding is not resolvable; the floor also keeps a noise-free
    # simulation finite. The contrast dd enters it too: frames equal to B have no energy at all.
    contrast = jnp.sum(jnp.where(valid, stats.dd, 0.0))
    scale = (energy + contrast) / n_tot
    floor = jnp.maximum(jnp.finfo(jnp.float64).eps * scale, jnp.finfo(jnp.float64).tiny)

    def sigma2_given(x):
        total = jnp.sum(jnp.where(valid, sse(x, stats), 0.0))
        return jnp.maximum((total + 2.0 * ig[1]) / (n_tot + 2.0 * ig[0] + 1.0), floor)

    def cond(state):
        _, s2, s2_old, it = state
        return (it < max_iter) & (jnp.abs(s2 - s2_old) > tol * s2)

    def expected_sigma2(s2):
        # EM: the M-step with the expected squared error under x's exact posterior given s2.
        mean, sd = _in_blocks(lambda st: moments(kind, st, s2, pp), stats, n_blocks)
        e_sse = stats.rss + stats.dd * (sd**2 + (mean - stats.xhat) ** 2)
        total = jnp.sum(jnp.where(valid, e_sse, 0.0))
        return jnp.maximum((total + 2.0 * ig[1]) / (n_tot + 2.0 * ig[0] + 1.0), floor)

    def update(s2):
        if sigma_method == "joint":
            return sigma2_given(_in_blocks(lambda st: mode(kind, st, s2, pp), stats, n_blocks))
        return expected_sigma2(s2)

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
    x, mean, sd, at_bound = _in_blocks(lambda st: summary(kind, st, s2, pp), stats, n_blocks)
    return x, mean, sd, at_bound, s2, it, converged


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


def _warn_if_uninformative(stats: FrameStats, sigma: float, prior: XPrior) -> None:
    """Warn when the frames say less about x than the prior does: nearly identical references
    (or too few pixels) for the noise. The weights are then mostly the prior's."""
    dd = float(np.median(stats.dd))
    width = sigma / math.sqrt(dd) if dd > 0 else math.inf
    spread = _prior_sd(prior)
    if width > spread:
        warnings.warn(
            f"the references differ little for this noise: a frame alone pins x down to about "
            f"sigma/||A - B|| = {width:.3g} (median over frames), wider than the prior's spread "
            f"{spread:.3g}, so the weights mostly reflect the prior; check that A and B are the "
            "right references, or use more pixels per frame",
            RuntimeWarning,
            stacklevel=4,
        )


def _check_options(
    prior, sigma_prior, sigma, sigma_method, max_iter, tol
) -> tuple[XPrior, SigmaPrior]:
    """Validate the fit options before any pass over the pixels."""
    if sigma_method not in SIGMA_METHODS:
        raise ValueError(f"sigma_method must be one of {SIGMA_METHODS}, got {sigma_method!r}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if sigma is not None and not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(
            f"sigma must be a positive finite noise scale, or None to learn it, got {sigma!r}"
        )
    return check_prior(prior), check_sigma_prior(sigma_prior)


def fit_map_stats(
    stats: FrameStats,
    *,
    prior: XPrior | None = None,
    sigma_prior: SigmaPrior | None = None,
    sigma: float | None = None,
    sigma_method: str = "marginal",
    max_iter: int = 1000,
    tol: float = 1e-8,
    frame: Any = None,
    device: str | None = None,
) -> MapResult:
    """:func:`fit_map` on precomputed per-frame statistics (see :func:`frame_stats`).

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(100, shape=(16, 16), noise=0.05, seed=0)
    >>> st = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    >>> res = bayesmix.fit_map_stats(st)
    >>> bool(abs(res.sigma / 0.05 - 1) < 0.05)
    True
    """
    return _fit(
        stats, prior=prior, sigma_prior=sigma_prior, sigma=sigma, sigma_method=sigma_method,
        max_iter=max_iter, tol=tol, frame=frame, device=device,
    )  # fmt: skip


def _fit(stats, *, prior, sigma_prior, sigma, sigma_method, max_iter, tol, frame, device):
    """The fast path on the statistics; its warnings point at the caller of a public function."""
    prior, sigma_prior = _check_options(prior, sigma_prior, sigma, sigma_method, max_iter, tol)
    n_frames = stats.n_frames
    if frame is not None and len(frame) != n_frames:
        raise ValueError(f"frame labels must have length {n_frames}, got {len(frame)}")

    n_tot = float(np.sum(stats.n))
    if sigma is None and isinstance(sigma_prior, Jeffreys) and n_tot <= n_frames:
        raise ValueError(
            "the noise scale cannot be learned: every frame has a single valid pixel, so no "
            "residual is left to measure it (under the Jeffreys prior its posterior is improper); "
            "pass sigma= (a known noise scale) or sigma_prior=InverseGamma(...)"
        )
    # Start from the unbiased least-squares estimate (each frame fits one weight): within the
    # prior's pull of the fixed point, so EM needs two or three steps.
    dof = max(n_tot - n_frames, 1.0)
    sigma2_0 = float(np.sum(stats.rss)) / dof if sigma is None else float(sigma) ** 2
    with on_device(device) as devices, x64():
        size = bucket_size(n_frames)
        size = -(-size // len(devices)) * len(devices)
        padded, valid = pad_stats(stats, size)
        if len(devices) > 1:
            # Frames split evenly over the platform's devices; XLA adds the cross-device sums.
            mesh = jax.sharding.Mesh(np.asarray(devices), ("frame",))
            spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("frame"))
            padded, valid = jax.device_put((padded, valid), spec)
        kind, pp = prior_params(prior)
        ig = jnp.asarray(sigma_prior.ig_params, jnp.float64)
        out = _map_core(
            padded, valid, pp, ig, jnp.float64(sigma2_0), jnp.float64(tol),
            kind=kind, sigma_method="fixed" if sigma is not None else sigma_method,
            max_iter=int(max_iter), n_blocks=_n_blocks(size),
        )  # fmt: skip
        x, mean, sd, at_bound, s2, it, converged = jax.device_get(out)
    _warn_if_uninformative(stats, float(np.sqrt(s2)), prior)
    if not converged:
        warnings.warn(
            f"the noise scale did not converge in {max_iter} iterations (tol={tol}); "
            "raise max_iter or check the data",
            RuntimeWarning,
            stacklevel=3,
        )
    keep = slice(0, n_frames)
    return MapResult(
        x=np.asarray(x[keep]),
        mean=np.asarray(mean[keep]),
        sd=np.asarray(sd[keep]),
        sigma=float(np.sqrt(s2)),
        r2=stats.r2,
        at_bound=np.asarray(at_bound[keep]),
        stats=stats,
        prior=prior,
        sigma_prior=sigma_prior,
        sigma_fixed=sigma is not None,
        n_iter=int(it),
        converged=bool(converged),
        frame=None if frame is None else np.asarray(frame),
        device=f"{devices[0].platform}:{len(devices)}",
    )


def fit_map(
    frames: Any,
    ref_a: Any,
    ref_b: Any,
    *,
    prior: XPrior | None = None,
    sigma_prior: SigmaPrior | None = None,
    sigma: float | None = None,
    sigma_method: str = "marginal",
    mask: Any = None,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    device: str | None = None,
) -> MapResult:
    """Estimate every frame's mixing weight: MAP with exact per-frame posterior given sigma.

    Model: :math:`y_i = x_i A + (1 - x_i) B + \\varepsilon_i`, with i.i.d. Gaussian pixel noise of
    scale sigma shared by all frames, the prior ``prior`` on each :math:`x_i` and ``sigma_prior``
    on sigma.

    Parameters
    ----------
    frames : array, shape (N, *S)
        N frames of shape S: (H, W), (H, W, C), or (P,) for spectra. Integer images are
        converted; NaN pixels are left out of their frame.
    ref_a, ref_b : array, shape S
        Reference frames; ``x`` is the weight of ``ref_a``.
    prior : TruncatedNormal, Uniform or Beta, optional
        Prior on each weight. Default ``TruncatedNormal(0.55, 0.15, 0.0, 1.0)``.
    sigma_prior : Jeffreys or InverseGamma, optional
        Prior on the noise scale. Default ``Jeffreys()`` (:math:`p(\\sigma) \\propto 1/\\sigma`).
    sigma : float, optional
        Known noise scale. Default: learned from the data (see ``sigma_method``).
    sigma_method : {'marginal', 'joint'}
        How sigma is learned. 'marginal' (default): the mode of :math:`p(\\sigma \\mid y)` with
        every weight integrated out exactly (EM), unbiased even with few pixels per frame.
        'joint': the joint mode of :math:`p(x, \\sigma \\mid y)`, which underestimates
        :math:`\\sigma^2` by a factor of about :math:`1 - N/n` (n pixels in all).
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
        error. With several devices of the platform, the frames are sharded across them.

    Returns
    -------
    MapResult
        ``x`` (MAP), ``mean``, ``sd``, ``sigma``, ``interval(prob)``, ``r2``, ``at_bound``,
        ``to_dataframe()``, ``to_xarray()``.

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
    _check_options(prior, sigma_prior, sigma, sigma_method, max_iter, tol)
    stack = prepare(frames, ref_a, ref_b, mask)
    stats = stats_from_stack(stack, chunk_size=chunk_size, memory_limit=memory_limit, stacklevel=2)
    return _fit(
        stats, prior=prior, sigma_prior=sigma_prior, sigma=sigma, sigma_method=sigma_method,
        max_iter=max_iter, tol=tol, frame=None, device=device,
    )  # fmt: skip
