"""A noise scale per frame: the population of log sigma_i learned, each sigma_i integrated out.

Model: frame i's pixels are Gaussian with its own scale sigma_i, and
:math:`\\log\\sigma_i \\sim \\mathcal N(\\mu, \tau^2)`. Given (mu, tau) each frame's posterior of
(x_i, log sigma_i) is exact on a per-frame grid of log sigma_i (41 nodes over +-8 posterior
widths, exact weights; x given sigma_i a truncated normal: :class:`~bayesmix._posterior.
ScaleMixture`). mu and tau maximise the marginal likelihood of all frames with the machinery
every learned population uses (:func:`bayesmix._population.maximize`: Newton on
:math:`(\\mu, \\log(\tau - \tau_{min}))`, the hyperparameters' sds from its curvature), as the
weights' population does with ``prior="learn"``. tau stays above ``TAU_MIN`` (a population of
identical sigmas: the shared Gaussian model).
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._population import PopulationFit, maximize, natural_sd
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
    population: PopulationFit  #: (mu, tau) with their sds, as every learned population


def _with(stats: FrameStats, mu, tau) -> PerFrameStats:
    one = jnp.ones_like(stats.xhat)
    return PerFrameStats(*stats, mu * one, tau * one)


def _tau(t):
    return TAU_MIN + jnp.exp(t)


@cache
def _objective(n_blocks: int):
    """Sum over frames of log p(y_i | mu, tau): one function (one compilation) per block
    count."""

    def objective(theta, *, args):
        stats, valid, prior = args
        st = _with(stats, theta[0], _tau(theta[1]))
        ev = _in_blocks(lambda s: per_frame_log_evidence(s, prior), st, n_blocks)[0]
        return jnp.sum(jnp.where(valid, ev, 0.0))

    objective.__name__ = "learn_log_sigma"
    return objective


@jax.jit
def _per_frame_core(stats, prior, mu, tau):
    TRACES["per_frame"] += 1
    st = _with(stats, mu, tau)
    summ = ScaleMixture.summary(st, None, prior)
    ev, _, _ = per_frame_log_evidence(st, prior)
    return summ, ev


def fit_per_frame(stats: FrameStats, prior, *, max_iter: int = 1000,
                  tol: float = 1e-6) -> PerFrameFit:  # fmt: skip
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
        data = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), padded)
        theta0 = np.array([mu0, np.log(max(tau0 - TAU_MIN, 1e-6))])
        theta, _, cov, at_edge, it, ok = maximize(_objective(_n_blocks(size)), theta0,
                                                  (data, jnp.asarray(valid), prior_t),
                                                  max_iter=max_iter, tol=tol,
                                                  may_edge=[False, True])  # fmt: skip
        mu, tau = float(theta[0]), float(TAU_MIN + np.exp(theta[1]))
        summ, ev = jax.device_get(_per_frame_core(data, prior_t, jnp.float64(mu),
                                                  jnp.float64(tau)))  # fmt: skip
    jac = {"log_sigma_mu": np.array([1.0, 0.0]),
           "log_sigma_tau": np.array([0.0, tau - TAU_MIN])}  # fmt: skip
    sds = natural_sd(jac, cov)
    edge = ("log_sigma_tau",) if at_edge[1] and theta[1] < 0 else ()  # tau at TAU_MIN
    sds.update({name: float("nan") for name in edge})
    population = PopulationFit(family="log_sigma", params={"log_sigma_mu": mu,
                               "log_sigma_tau": tau}, sd=sds, theta=theta, cov=cov,
                               log_evidence=float(np.sum(np.asarray(ev)[:n_frames])),
                               n_iter=it, converged=ok, at_edge=edge)  # fmt: skip
    keep = slice(0, n_frames)
    summ = Summary(*(np.asarray(a[keep]) for a in summ[:4]),
                   {k: np.asarray(v[keep]) for k, v in summ.extra.items()})  # fmt: skip
    return PerFrameFit(summ, mu, tau, it, ok, np.asarray(ev[keep]), population)
