"""Populations learned from all frames: hyperparameters by maximum marginal likelihood.

A population prior (the weights' prior with ``prior="learn"``, the frames' noise scales with
``noise="per_frame"``) has a few hyperparameters :math:`\\theta` shared by every frame. Each
frame's own unknowns are integrated out exactly (closed form or quadrature), which leaves

.. math::

    \\ell(\\theta) = \\sum_i \\log p(y_i \\mid \\theta),

a smooth function of a handful of numbers. :func:`maximize` finds its maximum by Newton's method
(damped, in one jitted loop: the Hessian of a few parameters costs a few gradients), and its
curvature there gives the hyperparameters' uncertainty (Laplace):
:math:`\\mathrm{cov}(\\theta) = (-\\nabla^2 \\ell)^{-1}`, carried to the natural parameters by
their Jacobian (delta method). With thousands of frames the likelihood of a few parameters is
close to Gaussian, so these sds are what a full posterior over them would give (the
hierarchical NUTS path checks that, see ``tests/test_learn_nuts.py``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PopulationFit", "maximize", "natural_sd"]

#: How many times the jitted optimiser has been traced (compiled); the tests watch it.
TRACES: Counter[str] = Counter()


class PopulationFit(NamedTuple):
    """A learned population: its family, hyperparameters and their uncertainty.

    Attributes
    ----------
    family : str
        What was learned, e.g. ``'truncnormal'``, ``'beta'``, ``'dirichlet'``,
        ``'point_mass'``, ``'log_sigma'`` (the per-frame noise scales).
    params : dict of str to float
        The hyperparameters at the maximum of the marginal likelihood (natural units, e.g.
        ``loc`` and ``scale`` of a truncated normal).
    sd : dict of str to float
        Their sds from the curvature of the log marginal likelihood (Laplace, delta method).
    theta : ndarray, shape (P,)
        The unconstrained parameters at the maximum (the noise scale's log first, when it was
        learned jointly).
    cov : ndarray, shape (P, P)
        Covariance of ``theta``: the inverse of minus the Hessian.
    log_evidence : float
        The maximum, :math:`\\sum_i \\log p(y_i \\mid \\hat\\theta)`.
    n_iter : int
        Newton iterations.
    converged : bool
        Whether the Newton decrement fell below the tolerance.
    at_edge : tuple of str
        Hyperparameters at an edge of their range (a scale run to infinity, a Beta shape at 1,
        a pure phase's probability at 0). The likelihood is flat there: their sd is NaN, and
        the others' sds hold them at the edge.
    """

    family: str
    params: dict
    sd: dict
    theta: np.ndarray
    cov: np.ndarray
    log_evidence: float
    n_iter: int
    converged: bool
    at_edge: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: each hyperparameter with its sd (or the edge of its range it sits at)."""
        parts = ", ".join(
            f"{k} = {v:.4g} (at the edge of its range)" if k in self.at_edge else
            f"{k} = {v:.4g} +/- {self.sd[k]:.2g}" for k, v in self.params.items())  # fmt: skip
        return f"learned {self.family} population: {parts}"


#: Step of the central differences of the gradient that make the Hessian (theta is O(1)).
_FD_STEP = 1e-4


@partial(jax.jit, static_argnames=("objective", "max_iter"))
def _newton(objective, theta0, args, tol, *, max_iter):
    """Maximise ``objective(theta, *args)`` from ``theta0``: Levenberg-damped Newton steps,
    accepted only when they raise the objective; stops when the Newton decrement
    ``g^T (-H)^{-1} g / 2`` falls below ``tol`` (a change of the log likelihood, so the same
    tolerance fits every scale).

    The Hessian is the central difference of the exact gradient, all 2P + 1 gradients in one
    vectorised call: one compiled gradient serves everything (an autodiff Hessian of the
    frames' special functions takes many times longer to compile than to run)."""
    TRACES["newton"] += 1
    p = theta0.shape[0]
    eye = jnp.eye(p, dtype=theta0.dtype)
    offsets = jnp.concatenate([jnp.zeros((1, p), theta0.dtype), _FD_STEP * eye,
                               -_FD_STEP * eye])  # fmt: skip
    value_grad = jax.vmap(jax.value_and_grad(partial(objective, args=args)))

    def evaluate(theta):
        vals, grads = value_grad(theta[None, :] + offsets)
        h = (grads[1 : p + 1] - grads[p + 1 :]).T / (2.0 * _FD_STEP)
        return vals[0], grads[0], 0.5 * (h + h.T)

    def decrement(g, h):
        neg = -h
        # The decrement with the Hessian made positive definite (far from the maximum).
        ev = jnp.linalg.eigvalsh(neg)
        shift = jnp.maximum(0.0, 1e-8 * jnp.max(jnp.abs(ev)) - jnp.min(ev))
        return 0.5 * g @ jnp.linalg.solve(neg + shift * eye, g)

    def cond(state):
        _, _, _, _, lam, it, dec = state
        return (it < max_iter) & (dec > tol) & (lam < 1e12)

    def body(state):
        theta, val, g, h, lam, it, _ = state
        neg = -h
        scale = jnp.maximum(jnp.abs(jnp.diag(neg)), 1e-12)
        step = jnp.linalg.solve(neg + lam * jnp.diag(scale), g)
        # Newton steps in the unconstrained coordinates are kept to a few units: far from the
        # maximum a sigmoid or an exp can make the quadratic model useless.
        step = step * jnp.minimum(1.0, 3.0 / jnp.maximum(jnp.max(jnp.abs(step)), 1e-300))
        new = theta + step
        new_val, new_g, new_h = evaluate(new)
        ok = jnp.isfinite(new_val) & (new_val >= val) & jnp.all(jnp.isfinite(new_g)) & (
            jnp.all(jnp.isfinite(new_h)))
        theta = jnp.where(ok, new, theta)
        val = jnp.where(ok, new_val, val)
        g = jnp.where(ok, new_g, g)
        h = jnp.where(ok, new_h, h)
        lam = jnp.where(ok, lam * 0.1, lam * 10.0)
        dec = jnp.where(ok, decrement(g, h), jnp.inf)
        # A rejected step that moves nothing: the objective is flat to rounding here.
        tiny = jnp.all(jnp.abs(step) <= 1e-12 * (1.0 + jnp.abs(theta)))
        dec = jnp.where(~ok & tiny, 0.0, dec)
        return theta, val, g, h, lam, it + 1, dec

    val, g, h = evaluate(theta0)
    state = (theta0, val, g, h, jnp.asarray(1e-3, theta0.dtype), jnp.asarray(0),
             decrement(g, h))  # fmt: skip
    theta, val, g, h, lam, it, dec = jax.lax.while_loop(cond, body, state)
    # Every step rejected up to the largest damping: no direction raises the objective beyond
    # its rounding, which is a maximum as far as the objective can tell.
    return theta, val, h, it, (dec <= tol) | (lam >= 1e12)


#: An unconstrained coordinate beyond this size has saturated its map (exp, sigmoid, softmax:
#: within e^-8 of the limit): its parameter sits at an edge of its range (a scale run to
#: infinity, a shape at its bound, a mixture weight at 0), where the likelihood is flat in it.
EDGE = 8.0


def maximize(
    objective: Callable[..., jnp.ndarray],
    theta0: Any,
    args: Any,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    may_edge: Any = None,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, int, bool]:
    """Maximise ``objective(theta, args=args)`` over the unconstrained vector ``theta``.

    Parameters
    ----------
    objective : callable
        A module-level function (it is a static argument of the jitted loop: one compilation
        per objective), ``objective(theta, *, args) -> scalar``, smooth in ``theta``.
    theta0 : array, shape (P,)
        Start.
    args : pytree
        The data (traced).
    max_iter, tol
        Iteration limit; Newton decrement (in units of the log likelihood) at which to stop.
        The decrement is half the squared distance to the maximum in units of the parameters'
        sds, so 1e-6 leaves an error of 0.0014 sd.
    may_edge : bool array, shape (P,), optional
        Coordinates whose parameter may sit at an edge of its range (default: all).

    Returns
    -------
    theta : ndarray, shape (P,)
    value : float
    cov : ndarray, shape (P, P)
        The Laplace covariance: the inverse of minus the Hessian over the coordinates not at an
        edge (those are held at their edge: rows and columns of zeros); NaN where that block
        is not negative definite.
    at_edge : ndarray of bool, shape (P,)
        Coordinates beyond :data:`EDGE`.
    n_iter : int
    converged : bool

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from bayesmix._population import maximize
    >>> from bayesmix._precision import x64
    >>> def loglik(theta, *, args):  # a Gaussian's mean and log sd from its draws
    ...     mu, log_s = theta
    ...     return jnp.sum(-0.5 * ((args - mu) / jnp.exp(log_s)) ** 2 - log_s)
    >>> with x64():
    ...     theta, _, cov, _, _, ok = maximize(loglik, jnp.zeros(2), jnp.array([1.0, 2.0, 3.0]))
    >>> [round(float(v), 4) for v in theta], ok  # the mean, log of the ML sd sqrt(2/3)
    ([2.0, -0.2027], True)
    """
    theta0 = jnp.asarray(theta0, jnp.float64)
    theta, val, h, it, ok = jax.device_get(
        _newton(objective, theta0, args, jnp.float64(tol), max_iter=int(max_iter))
    )
    theta = np.asarray(theta)
    p = theta.size
    may = np.ones(p, bool) if may_edge is None else np.asarray(may_edge, bool)
    at_edge = may & (np.abs(theta) > EDGE)
    keep = ~at_edge
    neg = -0.5 * (np.asarray(h) + np.asarray(h).T)
    sub = neg[np.ix_(keep, keep)]
    cov = np.zeros((p, p))
    if sub.size and not (np.all(np.isfinite(sub)) and np.all(np.linalg.eigvalsh(sub) > 0)):
        cov[:] = np.nan  # flat: no Gaussian approximation
    elif sub.size:
        cov[np.ix_(keep, keep)] = np.linalg.inv(sub)
    return theta, float(val), cov, at_edge, int(it), bool(ok)


def natural_sd(jacobian: dict[str, Any], cov: np.ndarray) -> dict[str, float]:
    """The sds of natural parameters by the delta method, ``sqrt(diag(J cov J^T))``, from each
    parameter's gradient in theta (``jacobian``, a dict of arrays of shape (P,)); NaN where
    ``cov`` is (no Gaussian approximation at the maximum)."""
    out = {}
    for key, row in jacobian.items():
        row = np.asarray(row, np.float64)
        var = float(row @ cov @ row) if np.all(np.isfinite(cov)) else float("nan")
        out[key] = math.sqrt(max(var, 0.0)) if math.isfinite(var) else float("nan")
    return out
