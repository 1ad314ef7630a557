"""A noise scale per frame: the population of log sigma_i learned, each sigma_i integrated out.

Model: frame i's pixels are Gaussian with its own scale sigma_i, and
:math:`\\log\\sigma_i \\sim \\mathcal N(\\mu, \\tau^2)`. Given (mu, tau) each frame's posterior of
(x_i, log sigma_i) is exact on a per-frame grid of log sigma_i (41 nodes over +-8 posterior
widths, exact weights; x given sigma_i a truncated normal: :class:`~bayesmix._posterior.
ScaleMixture`). mu and tau maximise the marginal likelihood of all frames, by EM: the E-step is
each frame's posterior mean of log sigma_i and of its square (on the grid), the M-step their
average and spread, until the steps fall below 1% of their standard error. tau stops at
``TAU_MIN`` (a population of identical sigmas: the shared Gaussian model).
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._posterior import (
    ScaleMixture,
    Summary,
    _in_blocks,
    _n_blocks,
    per_frame_log_evidence,
)
from bayesmix._precision import x64
from bayesmix._stats import FrameStats, PerFrameStats, bucket_size, pad_stats

__all__ = ["TAU_MIN", "PerFrameFit", "fit_per_frame"]

#: How many times the jitted core has been traced (compiled); the tests watch it.
TRACES: Counter[str] = Counter()

#: Smallest population sd of log sigma that EM resolves (0.1% spread of the sigmas).
TAU_MIN = 1e-3


class PerFrameFit(NamedTuple):
    """The per-frame-noise fit: summaries, population (mu, tau), per-frame evidence."""

    summary: Summary
    mu: float
    tau: float
    n_iter: int
    converged: bool
    log_evidence: np.ndarray  #: (N,) log p(y_i | mu, tau), x and sigma_i integrated out


def _with(stats: FrameStats, mu, tau) -> PerFrameStats:
    one = jnp.ones_like(stats.xhat)
    return PerFrameStats(*stats, mu * one, tau * one)


@partial(jax.jit, static_argnames=("max_iter", "n_blocks"))
def _per_frame_core(stats, valid, prior, mu0, tau0, tol, *, max_iter, n_blocks):
    TRACES["per_frame"] += 1
    n_valid = jnp.sum(valid)

    def e_step(mu, tau):
        ev, es, es2 = _in_blocks(lambda st: per_frame_log_evidence(st, prior),
                                 _with(stats, mu, tau), n_blocks)  # fmt: skip
        return ev, es, es2

    def update(mu, tau):
        _, es, es2 = e_step(mu, tau)
        mu_new = jnp.sum(jnp.where(valid, es, 0.0)) / n_valid
        var = jnp.sum(jnp.where(valid, es2 - 2.0 * mu_new * es + mu_new**2, 0.0)) / n_valid
        return mu_new, jnp.sqrt(jnp.maximum(var, TAU_MIN**2))

    # EM stops when its steps are below 1% of the hyperparameters' own standard error, about
    # (tau + w) / sqrt(N) with w a frame's posterior width of log sigma: the remaining change
    # is then immaterial to every weight (tau -> 0 is approached only sublinearly).
    w = jnp.sum(jnp.where(valid, jax.lax.rsqrt(2.0 * jnp.maximum(stats.n - 1.0, 0.5)), 0.0))
    w = w / n_valid

    def small(mu, tau, mu_old, tau_old):
        step = jnp.maximum(jnp.abs(mu - mu_old), jnp.abs(tau - tau_old))
        return step <= tol * (tau + w) / jnp.sqrt(n_valid)

    def cond(state):
        mu, tau, mu_old, tau_old, it = state
        return (it < max_iter) & ~small(mu, tau, mu_old, tau_old)

    def body(state):
        mu, tau, _, _, it = state
        mu_new, tau_new = update(mu, tau)
        return mu_new, tau_new, mu, tau, it + 1

    mu1, tau1 = update(mu0, tau0)
    mu, tau, mu_old, tau_old, it = jax.lax.while_loop(cond, body, (mu1, tau1, mu0, tau0, 1))
    converged = small(mu, tau, mu_old, tau_old)
    st = _with(stats, mu, tau)
    summ = _in_blocks(lambda s: ScaleMixture.summary(s, None, prior), st, n_blocks)
    ev, _, _ = e_step(mu, tau)
    return summ, mu, tau, it, converged, ev


def fit_per_frame(stats: FrameStats, prior, *, max_iter: int = 1000,
                  tol: float = 0.01) -> PerFrameFit:  # fmt: skip
    """Learn the population of log sigma and summarise every frame."""
    rss = np.maximum(np.asarray(stats.rss, np.float64), np.finfo(np.float64).tiny)
    dof = np.maximum(np.asarray(stats.n, np.float64) - 1.0, 0.5)
    s_hat = 0.5 * np.log(rss / dof)
    mu0 = float(np.mean(s_hat))
    tau0 = float(np.sqrt(max(np.var(s_hat) - np.mean(1.0 / (2.0 * dof)), 1e-4)))
    n_frames = stats.n_frames
    size = bucket_size(n_frames)
    padded, valid = pad_stats(stats, size)
    with x64():
        prior_t = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), prior)
        out = _per_frame_core(padded, jnp.asarray(valid), prior_t, jnp.float64(mu0),
                              jnp.float64(tau0), jnp.float64(tol), max_iter=int(max_iter),
                              n_blocks=_n_blocks(size))  # fmt: skip
        summ, mu, tau, it, conv, ev = jax.device_get(out)
    keep = slice(0, n_frames)
    summ = Summary(*(np.asarray(a[keep]) for a in summ[:4]),
                   {k: np.asarray(v[keep]) for k, v in summ.extra.items()})  # fmt: skip
    return PerFrameFit(summ, float(mu), float(tau), int(it), bool(conv), np.asarray(ev[keep]))
