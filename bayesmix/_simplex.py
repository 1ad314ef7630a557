"""K >= 3 references: each frame's weights on the simplex, exactly.

Given sigma, frame i's posterior over its weights ``x`` (a point of the simplex) is

.. math::

    p(x \\mid y_i, \\sigma) \\propto \\exp\\Big(-\\frac{(x - w_i)^T H_i (x - w_i)}{2\\sigma^2}\\Big)
        \\prod_k x_k^{\\alpha_k - 1}, \\qquad H_i = M_i^T M_i,

a Gaussian restricted to the simplex, times the Dirichlet prior (:class:`SimplexStats`).

- **MAP** (:func:`simplex_mode`): a small convex programme per frame, solved exactly by
  enumerating the :math:`2^K - 1` faces of the simplex. On each face the equality-constrained
  problem is one linear (KKT) solve when the prior is flat there, or a few damped Newton steps
  when some :math:`\\alpha_k > 1` (a log-barrier that keeps those weights inside); the best
  feasible face is the global optimum, since the objective is concave. All faces of all frames
  are one batched call. With :math:`\\alpha_k < 1` the density is unbounded on the face
  :math:`x_k = 0` and has no finite mode: the MAP is then taken with :math:`\\alpha_k` raised to 1
  (see :class:`bayesmix.priors.Dirichlet`).
- **Mean, sd, quantiles** (:func:`simplex_summary`): an exact Gibbs sampler run for all frames at
  once. In whitened coordinates the Gaussian factor is isotropic and the simplex a polytope, so
  each coordinate's conditional is a standard normal truncated to an interval (drawn by its
  inverse CDF, stable in the tails); a Dirichlet with some :math:`\\alpha_k \\ne 1` adds a
  Metropolis correction with that proposal. The chain starts at the MAP. Its Monte Carlo error
  (batch means over 20 batches) is returned per frame and reference.
- **sigma**: the restricted (REML) estimate from the residuals orthogonal to the references,
  :math:`\\sigma^2 = (\\sum_i \\mathrm{rss}_i + 2\\beta) / (\\sum_i (n_i - K) + 2\\alpha + 1)`;
  the residual's distribution does not depend on the weights, so this is the marginal
  likelihood of sigma with the weights integrated out under a flat prior on the unconstrained
  weights. It leaves out :math:`K - 1` degrees of freedom per frame, a relative efficiency loss of
  :math:`(K - 1) N / n` (0.05% for 64 x 64 frames).
"""

from __future__ import annotations

import itertools
from collections import Counter
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from bayesmix._errors import InputError

__all__ = ["SimplexSummary", "simplex_mode", "simplex_summary", "QUANTILES"]

#: How many times each jitted function has been traced; the tests watch it.
TRACES: Counter[str] = Counter()

#: Quantile levels every fit keeps (90% and 95% intervals, quartiles, median).
QUANTILES = (0.025, 0.05, 0.25, 0.5, 0.75, 0.95, 0.975)
_BATCHES = 20
_NEWTON = 40


def face_masks(k: int) -> np.ndarray:
    """The 2^K - 1 non-empty faces of the K-simplex as boolean masks, shape (F, K)."""
    rows = [m for r in range(1, k + 1) for m in itertools.combinations(range(k), r)]
    out = np.zeros((len(rows), k), bool)
    for i, m in enumerate(rows):
        out[i, list(m)] = True
    return out


def _face_solve(h, hw, beta, mask, s2, newton):
    """Minimise (x^T H x / 2 - x^T H w) / s2 - sum beta log x on one face (x_k = 0 off ``mask``,
    sum x = 1), for one frame: a KKT solve, then damped Newton steps when ``beta > 0``."""
    k = h.shape[0]
    m = mask.astype(h.dtype)

    def kkt(hess, grad):
        # [hess_FF 1_F; 1_F^T 0] [dx; mu] = [-grad_F; 0], identity rows off the face.
        a = hess * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
        top = jnp.concatenate([a, m[:, None]], axis=1)
        bottom = jnp.concatenate([m, jnp.zeros(1, h.dtype)])[None]
        sys = jnp.concatenate([top, bottom], axis=0)
        return jnp.linalg.solve(sys, jnp.concatenate([-grad * m, jnp.zeros(1, h.dtype)]))[:k]

    x = m / jnp.sum(m)
    if not newton:
        # Pure quadratic: one Newton step from any point of the face is exact.
        return x + kkt(h / s2, (h @ x - hw) / s2)

    def step(x, _):
        safe = jnp.where(m > 0, x, 1.0)
        grad = (h @ x - hw) / s2 - beta * m / safe
        hess = h / s2 + jnp.diag(beta * m / safe**2)
        dx = kkt(hess, grad)
        # Fraction to the boundary for the weights held inside by the barrier.
        shrink = jnp.where((beta > 0) & (dx < 0) & (m > 0), -0.95 * x / jnp.where(dx < 0, dx, -1.0),
                           jnp.inf)  # fmt: skip
        t = jnp.minimum(1.0, jnp.min(shrink))
        return x + t * dx, None

    x, _ = jax.lax.scan(step, x, None, length=_NEWTON)
    return x * m


def _objective(x, h, w, beta, s2):
    d = x - w
    logs = jnp.where(beta > 0, beta * jnp.log(jnp.maximum(x, jnp.finfo(x.dtype).tiny)), 0.0)
    return 0.5 * d @ h @ d / s2 - jnp.sum(logs)


@partial(jax.jit, static_argnames=("newton",))
def simplex_mode(w, chol, alpha, s2, *, newton: bool):
    """The MAP weights of every frame, shape (N, K), and whether each lies on a face (N,).

    ``w`` (N, K) and ``chol`` (N, K, K) as in :class:`~bayesmix._stats.SimplexStats`, ``alpha``
    (K,) the Dirichlet concentrations, ``s2`` the noise variance. ``newton`` (static): some
    alpha exceeds 1, so the faces need Newton steps (else one linear solve each).
    """
    TRACES["mode"] += 1
    k = w.shape[1]
    masks = jnp.asarray(face_masks(k))
    beta = jnp.maximum(alpha - 1.0, 0.0)
    # A face that leaves out a weight with alpha > 1 has -inf log density: never the mode.
    allowed = jnp.all(masks | (beta[None] == 0), axis=1)
    h = jnp.einsum("nji,njk->nik", chol, chol)
    hw = jnp.einsum("nij,nj->ni", h, w)

    def per_frame(h_i, hw_i, w_i):
        xs = jax.vmap(lambda m: _face_solve(h_i, hw_i, beta, m, s2, newton))(masks)
        tol = 1e-9
        feasible = allowed & jnp.all((xs >= -tol) | ~masks, axis=1)
        xs = jnp.clip(xs, 0.0, None)
        xs = xs / jnp.sum(xs, axis=1, keepdims=True)
        f = jax.vmap(lambda x: _objective(x, h_i, w_i, beta, s2))(xs)
        best = jnp.argmin(jnp.where(feasible, f, jnp.inf))
        return xs[best], ~jnp.all(masks[best])

    return jax.vmap(per_frame)(h, hw, w)


class SimplexSummary(NamedTuple):
    """Per-frame posterior summary of the K weights given sigma."""

    mean: jnp.ndarray  #: (N, K)
    sd: jnp.ndarray  #: (N, K)
    quantiles: jnp.ndarray  #: (N, K, Q) at the levels asked for
    mc_se: jnp.ndarray  #: (N, K) Monte Carlo standard error of the mean (batch means)
    accept: jnp.ndarray  #: (N,) acceptance rate of the Metropolis correction (1 without)


def _tn_draw(u, a, b):
    """A standard normal truncated to [a, b] by its inverse CDF, ``u`` uniform on (0, 1).

    Taken on the side of zero where the interval's CDF values are not close to 1 (the flip
    keeps them representable down to ~1e-300, |a| < 37); beyond that the exponential tail,
    whose relative error is O(1/a^2) there.
    """
    flip = a > 0
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    plo, phi = ndtr(lo), ndtr(hi)
    z = ndtri(plo + u * (phi - plo))
    # Deep tail (phi underflows): Exp(|hi|) below hi.
    tail = hi + jnp.log(u) / jnp.maximum(-hi, 1.0)
    z = jnp.clip(jnp.where(phi > 1e-300, z, tail), lo, hi)
    return jnp.where(flip, -z, z)


def _whiten(w, chol, s2):
    """Per frame: the map from whitened coordinates e to weights, x = xhat + F e."""
    k = w.shape[-1]
    u = jnp.concatenate([jnp.eye(k - 1), -jnp.ones((1, k - 1))], axis=0)  # (K, K-1)
    ek = jnp.zeros(k).at[-1].set(1.0)
    h = chol.T @ chol
    ht = u.T @ h @ u
    low = jnp.linalg.cholesky(ht)
    that = jnp.linalg.solve(ht, u.T @ h @ (w - ek))
    xhat = ek + u @ that
    f = jnp.sqrt(s2) * u @ jnp.linalg.inv(low).T  # (K, K-1)
    return xhat, f, low


def _sample_block(key, w, chol, alpha, s2, x0, *, n_warmup, n_draws, qs, mh):
    """Gibbs (with a Metropolis correction when ``mh``) for a block of frames.

    The chain's arrays hold frames along their last axis, (K, B): XLA vectorises over the
    frames, not over the K weights.
    """
    k = w.shape[1]
    xhat, f, low = jax.vmap(lambda a, b: _whiten(a, b, s2))(w, chol)
    # The start: the MAP, nudged inside so that every coordinate can move.
    x = (0.999 * x0 + 0.001 / k).T  # (K, B)
    e = jnp.einsum("nij,in->jn", low, (x.T - xhat)[:, : k - 1].T) / jnp.sqrt(s2)  # (K-1, B)
    f = jnp.transpose(f, (2, 1, 0))  # (K-1, K, B): column j of F for every frame
    log_prior_w = (alpha - 1.0)[:, None]
    tiny = jnp.finfo(x.dtype).tiny

    def sweep(carry, key):
        x, e, acc = carry
        keys = jax.random.split(key, 2 * (k - 1))
        for j in range(k - 1):
            fj = f[j]
            ratio = -x / jnp.where(fj == 0, 1.0, fj)
            lo = jnp.max(jnp.where(fj > 0, ratio, -jnp.inf), axis=0)
            hi = jnp.min(jnp.where(fj < 0, ratio, jnp.inf), axis=0)
            ej = e[j]
            u = jax.random.uniform(keys[2 * j], ej.shape, x.dtype, minval=1e-300)
            new = _tn_draw(u, ej + lo, ej + hi)
            x_new = jnp.maximum(x + fj * (new - ej), 0.0)
            x_new = x_new / jnp.sum(x_new, axis=0)
            if mh:
                step = jnp.log(jnp.maximum(x_new, tiny)) - jnp.log(jnp.maximum(x, tiny))
                log_r = jnp.sum(log_prior_w * step, axis=0)
                ok = jnp.log(jax.random.uniform(keys[2 * j + 1], ej.shape, x.dtype)) < log_r
                x = jnp.where(ok, x_new, x)
                e = e.at[j].set(jnp.where(ok, new, ej))
                acc = acc + ok
            else:
                x, e = x_new, e.at[j].set(new)
        return (x, e, acc), x

    acc0 = jnp.zeros(w.shape[0], x.dtype)
    k1, k2 = jax.random.split(key)
    (x, e, _), _ = jax.lax.scan(lambda c, kk: (sweep(c, kk)[0], None), (x, e, acc0),
                                jax.random.split(k1, n_warmup))  # fmt: skip
    (x, e, acc), draws = jax.lax.scan(sweep, (x, e, acc0), jax.random.split(k2, n_draws))
    # draws: (D, K, B)
    mean = jnp.mean(draws, axis=0)
    sd = jnp.std(draws, axis=0, ddof=1)
    quant = jnp.quantile(draws, jnp.asarray(qs), axis=0)  # (Q, K, B)
    batches = draws[: n_draws - n_draws % _BATCHES].reshape(_BATCHES, -1, *draws.shape[1:])
    mc_se = jnp.std(jnp.mean(batches, axis=1), axis=0, ddof=1) / np.sqrt(_BATCHES)
    accept = acc / (n_draws * (k - 1)) if mh else jnp.ones(w.shape[0], x.dtype)
    return SimplexSummary(mean.T, sd.T, jnp.transpose(quant, (2, 1, 0)), mc_se.T, accept)


#: Frames per call of the sampler: one compiled program serves every stack size.
BLOCK = 512


@partial(jax.jit, static_argnames=("n_warmup", "n_draws", "qs", "mh"))
def simplex_summary(key, w, chol, alpha, s2, x0, *, n_warmup: int, n_draws: int,
                    qs: tuple[float, ...], mh: bool) -> SimplexSummary:  # fmt: skip
    """Posterior mean, sd, quantiles ``qs`` and Monte Carlo error of a block of frames' weights.

    ``w`` (B, K), ``chol`` (B, K, K), ``x0`` (B, K) the chains' start (the MAP). ``mh`` (static):
    some alpha differs from 1 (Metropolis correction). Called on blocks of :data:`BLOCK` frames,
    each with its own key, so that the draws held at once stay ``BLOCK x n_draws x K`` and one
    compilation serves every stack.
    """
    TRACES["summary"] += 1
    return _sample_block(key, w, chol, alpha, s2, x0, n_warmup=n_warmup, n_draws=n_draws,
                         qs=qs, mh=mh)  # fmt: skip


class SimplexFit(NamedTuple):
    """The fast path's answer for K >= 3 references (numpy arrays, N frames)."""

    x: np.ndarray  #: (N, K) MAP
    at_bound: np.ndarray  #: (N,) the MAP lies on a face of the simplex
    mean: np.ndarray  #: (N, K)
    sd: np.ndarray  #: (N, K)
    quantiles: np.ndarray  #: (N, K, Q) at ``qs``
    qs: tuple[float, ...]
    mc_se: np.ndarray  #: (N, K): 0 where the posterior is Gaussian in closed form
    sampled: np.ndarray  #: (N,) frames whose summaries come from the sampler
    sigma2: float
    sampler: str = "numba"
    gain: np.ndarray | None = None  #: (N,) with a gain: its posterior mean
    gain_sd: np.ndarray | None = None  #: (N,)
    w_mean: np.ndarray | None = None  #: (N, K) with a gain: E[g x], for the background
    p_pure: np.ndarray | None = None  #: (N, K) point masses: each pure phase's probability


def _shared(chol: np.ndarray) -> bool:
    """Every frame has the same Gram matrix (no masked pixels): one factorisation serves all."""
    return bool(len(chol) > 0 and np.all(chol == chol[:1]))


def mode_shared_flat(w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`simplex_mode` for a flat prior and one Gram matrix ``h`` (K, K) shared by all
    frames: each face's KKT matrix is inverted once and applied to every frame (a matrix
    product per face), the same face enumeration and choice."""
    n, k = w.shape
    hw = w @ h
    best_x = np.zeros((n, k))
    best_f = np.full(n, np.inf)
    best_face = np.zeros(n, bool)
    for m in face_masks(k):
        idx = np.flatnonzero(m)
        r = idx.size
        kkt = np.zeros((r + 1, r + 1))
        kkt[:r, :r] = h[np.ix_(idx, idx)]
        kkt[:r, r] = kkt[r, :r] = 1.0
        rhs = np.concatenate([hw[:, idx], np.ones((n, 1))], axis=1)
        sol = rhs @ np.linalg.inv(kkt).T
        x = np.zeros((n, k))
        x[:, idx] = sol[:, :r]
        feasible = np.all(x[:, idx] >= -1e-9, axis=1)
        x = np.clip(x, 0.0, None)
        x /= x.sum(axis=1, keepdims=True)
        d = x - w
        f = 0.5 * np.einsum("ni,ij,nj->n", d, h, d)
        better = feasible & (f < best_f)
        best_x[better], best_f[better], best_face[better] = x[better], f[better], r < k
    return best_x, best_face


def gaussian_marginals(w: np.ndarray, chol: np.ndarray, s2: float) -> tuple[np.ndarray, ...]:
    """The unconstrained posterior on the plane sum x = 1 (flat prior): mean (N, K), sd (N, K)."""
    if _shared(chol) and len(chol) > 1:
        _, sd = gaussian_marginals(w[:1], chol[:1], s2)
        # Linear in w: the mean moves with w, the sd is shared.
        return _plane_mean(w, chol[0]), np.broadcast_to(sd, w.shape).copy()
    k = w.shape[1]
    u = np.vstack([np.eye(k - 1), -np.ones((1, k - 1))])
    ek = np.zeros(k)
    ek[-1] = 1.0
    h = np.einsum("nji,njk->nik", chol, chol)
    ht = np.einsum("ia,nij,jb->nab", u, h, u)
    rhs = np.einsum("ia,nij,nj->na", u, h, w - ek)
    that = np.linalg.solve(ht, rhs[..., None])[..., 0]
    xhat = ek + that @ u.T
    cov = s2 * np.einsum("ia,nab,jb->nij", u, np.linalg.inv(ht), u)
    sd = np.sqrt(np.maximum(np.einsum("nii->ni", cov), 0.0))
    return xhat, sd


def _plane_mean(w: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """The unconstrained least-squares weights on the plane sum x = 1, one shared (K, K) M."""
    k = w.shape[1]
    u = np.vstack([np.eye(k - 1), -np.ones((1, k - 1))])
    ek = np.zeros(k)
    ek[-1] = 1.0
    h = chol.T @ chol
    ht = u.T @ h @ u
    that = np.linalg.solve(ht, (u.T @ h @ (w - ek).T)).T
    return ek + that @ u.T


def simplex_map(w: np.ndarray, chol: np.ndarray, alpha: np.ndarray,
                s2: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Every frame's MAP weights (N, K) and face flags (N,): one KKT inverse per face when the
    prior is flat on the faces and the frames share their Gram matrix, else the batched
    :func:`simplex_mode` (padded to a bucket size, so stacks of similar size share a
    compilation)."""
    from bayesmix._stats import bucket_size

    n, k = w.shape
    newton = bool(np.any(alpha > 1))
    if not newton and _shared(chol):
        return mode_shared_flat(w, chol[0].T @ chol[0])
    pad = bucket_size(n) - n
    wp = np.concatenate([w, np.full((pad, k), 1.0 / k)])
    cp = np.concatenate([chol, np.broadcast_to(np.eye(k), (pad, k, k))])
    x, on_face = simplex_mode(jnp.asarray(wp), jnp.asarray(cp), jnp.asarray(alpha),
                              jnp.float64(s2), newton=newton)  # fmt: skip
    return np.asarray(x)[:n], np.asarray(on_face)[:n]


SAMPLERS = ("numba", "jax")


def fit_simplex(
    w: np.ndarray, chol: np.ndarray, alpha: np.ndarray, s2: float, *, draws: int, seed: int,
    qs: tuple[float, ...] = QUANTILES, z_inside: float = 5.0, sampler: str = "numba",
) -> SimplexFit:  # fmt: skip
    """MAP, mean, sd, quantiles and Monte Carlo error of every frame's weights given sigma^2.

    With a flat prior (all alpha = 1), a frame whose Gaussian lies ``z_inside`` of its sds inside
    every face has that Gaussian, restricted to the simplex, as its posterior; the mass outside
    is below :math:`K \\Phi(-5) = K \\cdot 2.9 \\times 10^{-7}`, which moves the mean by less
    than :math:`10^{-5}` sd, far below the sampler's own error: its summaries are taken in closed
    form. The sampler runs on the other frames only: ``'numba'`` (the CPU
    kernel of :mod:`bayesmix._gibbs`) or ``'jax'`` (:func:`simplex_summary`, for a GPU); the
    same chain, with different random streams.
    """
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    from scipy.special import ndtri as np_ndtri

    n, k = w.shape
    alpha = np.asarray(alpha, np.float64)
    x, on_face = simplex_map(w, chol, alpha, s2)
    xhat, gsd = gaussian_marginals(w, chol, s2)
    flat = bool(np.all(alpha == 1.0))
    inside = np.all(xhat > z_inside * gsd, axis=1) if flat else np.zeros(n, bool)
    mean, sd = xhat.copy(), gsd.copy()
    quant = xhat[..., None] + gsd[..., None] * np_ndtri(np.asarray(qs))
    mc_se = np.zeros((n, k))
    todo = np.flatnonzero(~inside)
    n_warmup = max(50, draws // 10)
    if sampler == "numba" and todo.size:
        from bayesmix._gibbs import gibbs_summary

        out_np = gibbs_summary(w[todo], chol[todo], alpha, s2, x[todo], todo, seed=int(seed),
                               n_warmup=n_warmup, n_draws=int(draws),
                               qs=tuple(float(q) for q in qs))  # fmt: skip
        mean[todo], sd[todo], quant[todo], mc_se[todo] = out_np[:4]
        todo = todo[:0]
    key = jax.random.key(int(seed), impl="unsafe_rbg")
    for i, start in enumerate(range(0, todo.size, BLOCK)):
        part = todo[start : start + BLOCK]
        idx = np.concatenate([part, np.full(BLOCK - part.size, part[0])])
        out = simplex_summary(
            jax.random.fold_in(key, i), jnp.asarray(w[idx]), jnp.asarray(chol[idx]),
            jnp.asarray(alpha), jnp.float64(s2), jnp.asarray(x[idx]),
            n_warmup=n_warmup, n_draws=int(draws),
            qs=tuple(float(q) for q in qs), mh=not flat,
        )  # fmt: skip
        out = jax.device_get(out)
        t = part.size
        mean[part], sd[part] = out.mean[:t], out.sd[:t]
        quant[part], mc_se[part] = out.quantiles[:t], out.mc_se[:t]
    return SimplexFit(x=x, at_bound=on_face, mean=mean, sd=sd, quantiles=quant,
                      qs=tuple(float(q) for q in qs), mc_se=mc_se, sampled=~inside,
                      sigma2=float(s2), sampler=sampler)  # fmt: skip


def fit_simplex_gain(
    w: np.ndarray, chol: np.ndarray, alpha: np.ndarray, s2: float, *, draws: int, seed: int,
    qs: tuple[float, ...] = QUANTILES,
) -> SimplexFit:  # fmt: skip
    """K >= 3 references with a per-frame gain g > 0 (flat prior): every frame's weights x on
    the simplex and g, from ``w = g x`` on the positive orthant.

    With :math:`p(x) = \\mathrm{Dir}(\\alpha)` and :math:`p(g) \\propto 1`, the density of
    ``w`` is :math:`\\prod_k w_k^{\\alpha_k - 1} (\\sum_k w_k)^{1 - \\sum \\alpha}` (the
    Jacobian of :math:`(g, x) \\to w` is :math:`g^{K-1}`); times the Gaussian likelihood in
    ``w`` it is sampled by the Gibbs kernel of :mod:`bayesmix._gibbs` (truncated normals along
    whitened directions, a Metropolis correction for the prior factor). Where a frame holds no
    mixture (g near 0) the weights return to their prior. ``x`` is the draw of highest marginal
    density of the weights (g integrated exactly): the MAP to Monte Carlo precision.
    """
    from bayesmix._gibbs import gibbs_gain_summary

    n = w.shape[0]
    alpha = np.asarray(alpha, np.float64)
    w0 = np.maximum(w, 0.0)
    empty = w0.sum(axis=1) <= 0
    w0[empty] = np.abs(w[empty]).mean(axis=1, keepdims=True) + 1e-300
    n_warmup = max(50, draws // 10)
    mean, sd, quant, mc_se, g, g_sd, w_mean, x_best, _ = gibbs_gain_summary(
        w, chol, alpha, s2, w0, np.arange(n), seed=int(seed), n_warmup=n_warmup,
        n_draws=int(draws), qs=tuple(float(q) for q in qs),
    )  # fmt: skip
    return SimplexFit(x=x_best, at_bound=np.min(x_best, axis=1) < 0.01, mean=mean, sd=sd,
                      quantiles=quant, qs=tuple(float(q) for q in qs), mc_se=mc_se,
                      sampled=np.ones(n, bool), sigma2=float(s2), sampler="numba-gain",
                      gain=g, gain_sd=g_sd, w_mean=w_mean)  # fmt: skip
