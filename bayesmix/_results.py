"""Result containers and their conversions (numpy, pandas, xarray)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bayesmix._errors import InputError
from bayesmix._model import MixingModel, make_model
from bayesmix._posterior import posterior_cdf, posterior_quantiles
from bayesmix._schema import MAP_DIMS, REF_VARS, frame_table, label_quantile
from bayesmix._stats import FrameStats
from bayesmix.priors import SigmaPrior, XPrior, prior_spec

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["INTERVAL_KINDS", "MapResult"]

#: The kinds of posterior interval :meth:`MapResult.interval` computes.
INTERVAL_KINDS = ("equal_tailed", "hdi")

# The highest-density interval is the shortest of the windows [Q(u), Q(u + prob)]; u is searched
# on _HDI_STEPS + 1 points of [0, 1 - prob], then refined between the neighbours of the best.
_HDI_STEPS = 64
# Lagrange interpolation of both ends through this many grid points around the best (error
# O(h^5) in u for a smooth quantile function), searched on _HDI_SUB points of the bracket.
_HDI_STENCIL = 5
_HDI_SUB = 65
# K >= 3: a window at a bound must beat the windows this many draws away from it (closer ones
# differ from it by a few spacings of the draws: noise, ~1/sqrt(8) of the difference).
_HDI_GUARD_DRAWS = 8
# K >= 3: the CDF of a weight is read off its draws' quantiles at these levels.
_CDF_LEVELS = np.arange(1, 200) * 0.005
# K = 2: quantile levels per call, so that a grid method's (frames x levels x nodes)
# temporaries stay as small as two levels' for a million frames.
_LEVEL_BUDGET = 1 << 21


def _check_prob(prob: float) -> float:
    prob = float(prob)
    if not 0.0 < prob < 1.0:
        raise InputError(f"prob must be in (0, 1), e.g. 0.9 for a 90% interval, got {prob}")
    return prob


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in INTERVAL_KINDS:
        raise InputError(f"kind must be one of {INTERVAL_KINDS}, got {kind!r}")
    return kind


def _check_tol(tol: Any, lo: float, hi: float) -> float:
    half = 0.5 * (hi - lo)
    ok = isinstance(tol, (int, float, np.integer, np.floating)) and not isinstance(tol, bool)
    if not ok or not 0.0 < float(tol) <= half:
        raise InputError(
            f"tol must be a number in (0, {half:g}]: the distance from a bound of the weight's "
            f"support [{lo:g}, {hi:g}] that counts as near it, at most half its width; "
            f"got {tol!r}"
        )
    return float(tol)


def _lagrange(t: np.ndarray, start: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Interpolate ``values`` (B, G), given on the integer nodes 0..G-1, at ``t`` (B, M) through
    the _HDI_STENCIL nodes ``start``..``start + _HDI_STENCIL - 1`` of each row (``start`` (B,)).

    At a node the weights are exactly 1 and 0, so the node's value comes back unchanged."""
    k = np.arange(_HDI_STENCIL)
    nodes = start[:, None, None] + k  # (B, 1, S)
    d = t[..., None] - nodes  # (B, M, S)
    out = np.zeros(t.shape)
    for i in range(_HDI_STENCIL):
        w = np.ones(t.shape)
        for m in range(_HDI_STENCIL):
            if m != i:
                w = w * d[..., m] / float(i - m)
        out += w * np.take_along_axis(values, start[:, None] + i, axis=1)
    return out


def _shortest_window(lower: np.ndarray, upper: np.ndarray,
                     guard: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The shortest of the windows [lower(u), upper(u)], given at u_j = j h (j = 0..G-1) in rows
    (B, G): the best grid point, then the minimum of the interpolated width between its
    neighbours (a fine search, then the parabola through the best point and its neighbours).

    ``guard`` > 0 (quantiles of draws): a window at a bound (u = 0 or the last) is compared
    only with the windows at least ``guard`` points away from both bounds; the ones closer
    differ from it by a few draws, a difference that is Monte Carlo noise. If it wins, it is
    the answer; otherwise the interior points are searched.

    ``lower[:, 0]`` and ``upper[:, -1]`` are the support's bounds, where the quantile function
    may be singular (a density that vanishes at the bound): they enter the interpolation only
    when the best grid point is theirs. Interpolation returns a node's own value exactly, so
    a window at a bound comes back with the bound itself. Returns the ends (B,)."""
    b, g = lower.shape
    rows = np.arange(b)
    width = upper - lower
    j = np.argmin(width, axis=1)
    a, c = np.maximum(j - 1, 0), np.minimum(j + 1, g - 1)  # the bracket searched
    if guard > 0:
        middle = width[:, guard : g - guard]
        w_mid = middle.min(axis=1) if middle.shape[1] else np.full(b, np.inf)
        edge = np.where(width[:, -1] < width[:, 0], g - 1, 0)
        at_edge = width[rows, edge] <= w_mid
        j = np.where(at_edge, edge, 1 + np.argmin(width[:, 1 : g - 1], axis=1))
        # A bound's window that won is taken as it is; otherwise the bounds' nodes stay out of
        # the bracket (the windows next to them are the noise the guard set aside).
        a = np.where(at_edge, j, np.maximum(j - 1, 1))
        c = np.where(at_edge, j, np.minimum(j + 1, g - 2))
    half = _HDI_STENCIL // 2
    start_lo = np.clip(j - half, np.where(j > 0, 1, 0), g - _HDI_STENCIL)
    start_hi = np.clip(j - half, 0, np.where(j < g - 1, g - 1 - _HDI_STENCIL, g - _HDI_STENCIL))

    def ends(t):
        return _lagrange(t, start_lo, lower), _lagrange(t, start_hi, upper)

    frac = np.linspace(0.0, 1.0, _HDI_SUB)
    t = a[:, None] + (c - a)[:, None] * frac  # (B, M): holds j exactly (an end or the middle)
    lo_sub, hi_sub = ends(t)
    w_sub = hi_sub - lo_sub
    i = np.argmin(w_sub, axis=1)
    # The parabola through the fine search's best point and its neighbours (interior only).
    inner = np.clip(i, 1, _HDI_SUB - 2)
    w0, w1, w2 = (w_sub[rows, inner + d] for d in (-1, 0, 1))
    curv = w0 - 2.0 * w1 + w2
    step = t[rows, inner + 1] - t[rows, inner]
    shift = 0.5 * step * (w0 - w2) / np.where(curv > 0, curv, 1.0)
    refine = (i > 0) & (i < _HDI_SUB - 1) & (curv > 0)
    t_star = t[rows, inner] + np.clip(shift, -step, step)
    lo_star, hi_star = (e[:, 0] for e in ends(t_star[:, None]))
    # The refinement only where it is no wider than the fine search's best.
    keep = refine & ((hi_star - lo_star) <= w_sub[rows, i])
    return (np.where(keep, lo_star, lo_sub[rows, i]),
            np.where(keep, hi_star, hi_sub[rows, i]))  # fmt: skip


def _cdf_from_quantiles(t: float, quant: np.ndarray, levels: np.ndarray, lo: float,
                        hi: float) -> np.ndarray:  # fmt: skip
    """P(X <= t) from the quantiles ``quant`` (..., L) at ``levels`` (L,), with the support's
    bounds as the quantiles at 0 and 1: the piecewise-linear quantile function inverted."""
    shape = quant.shape[:-1]
    q = np.concatenate([np.full((*shape, 1), lo), np.clip(quant, lo, hi),
                        np.full((*shape, 1), hi)], axis=-1)  # fmt: skip
    q = np.maximum.accumulate(q, axis=-1)
    lev = np.concatenate([[0.0], levels, [1.0]])
    # The last node at or below t (ties: the right-continuous CDF), and the next one above.
    k = np.sum(q <= t, axis=-1) - 1
    above = np.minimum(k + 1, lev.size - 1)
    q0 = np.take_along_axis(q, k[..., None], -1)[..., 0]
    q1 = np.take_along_axis(q, above[..., None], -1)[..., 0]
    gap = q1 - q0
    frac = np.where(gap > 0, (t - q0) / np.where(gap > 0, gap, 1.0), 1.0)
    return np.clip(lev[k] + (lev[above] - lev[k]) * frac, 0.0, 1.0)


def clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as netCDF/JSON-safe scalars: bools as 0/1, other non-numbers as text."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value if isinstance(value, (int, float, str)) else str(value)
    return out


@dataclass(frozen=True)
class MapResult:
    """The fast path's answer: per-frame MAP and exact posterior given the learned noise scale.

    Attributes
    ----------
    x : ndarray, shape (N,)
        MAP of each frame's weight of ``ref_a`` (given ``sigma``), within the prior's bounds.
    mean, sd : ndarray, shape (N,)
        Posterior mean and sd of each weight given ``sigma``.
    sigma : float
        Noise scale: the mode of its marginal posterior (EM; the joint mode with
        ``sigma_method='joint'``), or the value given to the fit.
    r2 : ndarray, shape (N,)
        Per-frame R^2 of the unconstrained least-squares fit (the classic ``lstsq`` answer).
    at_bound : ndarray of bool, shape (N,)
        Frames whose posterior piles up at a bound of the prior (its mode is on the bound).
    stats : FrameStats
        The per-frame sufficient statistics the fit was computed from.
    prior, sigma_prior
        The priors used.
    n_iter : int
        Iterations of the sigma update; ``converged`` tells whether the tolerance was reached.
    frame : ndarray, shape (N,)
        Frame labels (default ``0..N-1``).
    device : str
        Platform and number of devices the inference ran on, e.g. ``'cpu:1'``.
    model : MixingModel
        The model fitted (background, gain, noise, priors).
    gain, gain_sd : ndarray, shape (N,), or None
        With ``gain=True``: posterior mean and sd of each frame's gain (amount, exposure).
    background : ndarray, shape (N, P), or None
        With a background: posterior mean of each frame's background coefficients.
    map_shape : tuple of int, or None
        For a spectrum image (``spectral_axis=``): the map's shape; frames are its pixels in
        row-major order.
    noise_params : dict
        What the noise model learned: with ``noise='per_frame'`` the population of log sigma
        (``log_sigma_mu``, ``log_sigma_tau``); Poisson-Gaussian ``noise_gain``,
        ``noise_read_sd``; Student-t ``noise_df``; re-weighting models ``noise_passes``.
    sigma_frame, sigma_frame_sd : ndarray, shape (N,), or None
        With ``noise='per_frame'``: posterior mean and sd of each frame's noise scale.
    loglik : ndarray, shape (N,), or None
        Each frame's log marginal likelihood (weights integrated out; the shared noise
        parameters at their fitted values): the pointwise terms :func:`bayesmix.compare`
        ranks noise models by. None where no closed form is implemented (gain, K >= 3, Beta).
    simplex : SimplexFit or None
        K >= 3 references: the sampler's output behind ``mean``, ``sd`` and the quantiles;
        ``x``, ``mean`` and ``sd`` then have shape (N, K), one column per reference, and
        ``mc_se`` (N, K) is the Monte Carlo error of ``mean``.
    temporal : SequenceFit or None
        With ``temporal='random_walk'``: the learned step q (``temporal.q``, ``temporal.q_sd``),
        each frame's time and sequence, and its estimate on its own (``mean_alone``,
        ``sd_alone``); ``x`` is then the joint MAP of the sequence and ``mean``, ``sd`` and
        the intervals are each frame's marginal along it.
    sigma_method : {'marginal', 'joint', 'fixed'}
        How ``sigma`` was found: EM on its marginal posterior (the default), coordinate ascent
        to the joint mode, or given to the fit.
    population : PopulationFit or None
        With ``prior="learn"``: the learned family, its hyperparameters (``params``) and their
        sds from the curvature of the marginal likelihood (``sd``); ``prior`` is then the
        learned prior itself.
    """

    x: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    sigma: float
    r2: np.ndarray
    at_bound: np.ndarray
    stats: FrameStats = field(repr=False)
    prior: XPrior
    sigma_prior: SigmaPrior
    sigma_fixed: bool = False
    n_iter: int = 0
    converged: bool = True
    frame: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    device: str = ""
    model: MixingModel = field(default=None, repr=False)  # type: ignore[assignment]
    gain: np.ndarray | None = field(default=None, repr=False)
    gain_sd: np.ndarray | None = field(default=None, repr=False)
    background: np.ndarray | None = field(default=None, repr=False)
    map_shape: tuple[int, ...] | None = None
    simplex: Any = field(default=None, repr=False)
    seed: int = 0
    n_draws: int = 0
    noise_params: dict = field(default_factory=dict)
    sigma_frame: np.ndarray | None = field(default=None, repr=False)
    sigma_frame_sd: np.ndarray | None = field(default=None, repr=False)
    loglik: np.ndarray | None = field(default=None, repr=False)
    temporal: Any = field(default=None, repr=False)
    sigma_method: str = "marginal"
    population: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.frame is None:
            object.__setattr__(self, "frame", np.arange(self.n_frames))
        if self.model is None:
            object.__setattr__(
                self, "model", make_model(prior=self.prior, sigma_prior=self.sigma_prior)
            )

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(self.x.shape[0])

    @property
    def n_refs(self) -> int:
        """K, the number of references."""
        return 2 if self.simplex is None else int(self.x.shape[1])

    @property
    def ref_names(self) -> tuple[str, ...]:
        """A name per reference (the columns of ``weights``)."""
        return tuple(self.model.ref_names)

    @property
    def weights(self) -> np.ndarray:
        """MAP weights of every reference, shape (N, K), on the simplex (K = 2: ``(x, 1 - x)``)."""
        if self.simplex is not None:
            return self.x
        return np.stack([self.x, 1.0 - self.x], axis=1)

    @property
    def mc_se(self) -> np.ndarray | None:
        """K >= 3: Monte Carlo standard error of ``mean``, shape (N, K) (0 where closed form)."""
        return None if self.simplex is None else self.simplex.mc_se

    @property
    def sigma_sd(self) -> float:
        """Approximate posterior sd of sigma, ``sigma / sqrt(2 n)`` (0 when sigma was given)."""
        if self.sigma_fixed:
            return 0.0
        return self.sigma / math.sqrt(2.0 * float(np.sum(self.stats.n)))

    def quantiles(self, q: Any) -> np.ndarray:
        """Posterior quantiles of each weight given sigma.

        Parameters
        ----------
        q : float or array of shape (K,)
            Probabilities in (0, 1).

        Returns
        -------
        ndarray, shape (N, Q); with K >= 3 references (N, K, Q)
        """
        qs = np.atleast_1d(np.asarray(q, np.float64))
        if qs.ndim != 1 or not np.all((qs > 0) & (qs < 1)):
            raise InputError(f"quantile probabilities must lie in (0, 1), got {q!r}")
        if self.simplex is not None:
            return self._simplex_quantiles(qs)
        return posterior_quantiles(self.prior, self.posterior_stats, self.sigma, qs)

    @property
    def posterior_stats(self) -> Any:
        """The statistics x's posterior is computed from (with per-frame noise scales, the
        frames' statistics with the population of log sigma)."""
        if self.temporal is not None:
            return self.temporal.cavity
        if "log_sigma_mu" in self.noise_params:
            from bayesmix._stats import PerFrameStats

            return PerFrameStats.of(self.stats, self.noise_params["log_sigma_mu"],
                                    self.noise_params["log_sigma_tau"])  # fmt: skip
        return self.stats

    def _simplex_quantiles(self, qs: np.ndarray) -> np.ndarray:
        """Quantiles of the K weights: kept from the fit, or the same chains (same seed) rerun."""
        fit = self.simplex
        # Levels kept by the fit, matched to rounding (0.5 * (1 - 0.9) is not 0.05 exactly).
        kept = np.asarray(fit.qs)
        hit = np.abs(qs[:, None] - kept[None, :]) <= 1e-12
        if hit.any(axis=1).all():
            return fit.quantiles[..., hit.argmax(axis=1)]
        if fit.p_pure is not None:
            # Point masses: the mixture's quantiles were kept on a fine uniform grid of levels
            # (bayesmix._learn.FINE_LEVELS); between them, linear interpolation.
            levels = np.concatenate([[0.0], kept, [1.0]])
            ends = np.zeros((*fit.quantiles.shape[:-1], 1))
            table = np.concatenate([ends, fit.quantiles, ends + 1.0], axis=-1)
            pos = np.interp(qs, levels, np.arange(levels.size))
            j = np.minimum(np.floor(pos).astype(int), levels.size - 2)
            frac = pos - j
            return table[..., j] * (1.0 - frac) + table[..., j + 1] * frac
        from bayesmix._precision import x64
        from bayesmix._simplex import fit_simplex, fit_simplex_gain

        args = (np.asarray(self.stats.w), np.asarray(self.stats.chol),
                self.prior.concentrations, fit.sigma2)  # fmt: skip
        levels = tuple(float(q) for q in qs)
        with x64():
            if fit.gain is not None:
                again = fit_simplex_gain(*args, draws=self.n_draws, seed=self.seed, qs=levels)
            else:
                again = fit_simplex(*args, draws=self.n_draws, seed=self.seed, qs=levels,
                                    sampler=fit.sampler)  # fmt: skip
        return again.quantiles

    def interval(
        self, prob: float = 0.9, *, kind: str = "equal_tailed"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior interval of each weight given sigma: equal-tailed or highest-density.

        Which to use:

        - ``"equal_tailed"`` (the default): from the quantiles ``(1 - prob) / 2`` and
          ``(1 + prob) / 2``. It is invariant to reparametrisation (the interval of ``1 - x``,
          or of any monotone function of x, is the image of x's) and it is what the result
          files report (:meth:`to_dataframe`, :meth:`to_xarray`, the CLI). It leaves mass
          ``(1 - prob) / 2`` on each side, so it never contains a bound of the prior's support.
        - ``"hdi"``: the highest-density interval, the shortest interval holding ``prob``, with
          every point inside more probable than every point outside. Use it when the
          posterior piles up at a bound (``at_bound`` frames, nearly pure phases): it is
          ``[lo, Q(prob)]``, containing the bound, whenever the density at the bound is at
          least the density at ``Q(prob)`` (always when the mode is at the bound), where the
          equal-tailed interval stops short of it. It is not invariant to
          reparametrisation.

        Exact for the truncated-normal and uniform priors; for Beta, a gain or per-frame noise
        scales from the fitted grid or mixture; with K >= 3 references from the sampler's
        draws (the same chains, rerun at the levels the interval needs).

        The HDI is the shortest window ``[Q(u), Q(u + prob)]`` over ``u`` in ``[0, 1 - prob]``
        (right for the unimodal marginals here): ``Q`` at 65 values of ``u`` (``Q(0)`` and
        ``Q(1)`` are the support's bounds), then the width interpolated between the best
        one's neighbours and minimised. It costs 128 quantiles per frame (K >= 3: one rerun
        of the sampler). With K >= 3 the windows are the draws': a window at a bound is
        compared only with windows at least 8 draws away from it (nearer ones differ from it
        by Monte Carlo noise), so the HDI reaches the bound also when the exact one would stop
        within a few draws of it.

        Parameters
        ----------
        prob : float
            Probability mass inside the interval, in (0, 1).
        kind : {'equal_tailed', 'hdi'}
            Equal-tailed or highest-density interval (:data:`INTERVAL_KINDS`).

        Returns
        -------
        lo, hi : ndarray, shape (N,); (N, K) with K >= 3 references

        Examples
        --------
        Frames whose true weight is 0: where the posterior piles up at 0 the HDI starts at 0,
        the equal-tailed interval never does.

        >>> import numpy as np, bayesmix
        >>> x = np.r_[np.zeros(20), np.full(20, 0.5)]
        >>> sim = bayesmix.simulate(40, shape=(16, 16), noise=0.5, x=x, seed=0)
        >>> prior = bayesmix.priors.Uniform()
        >>> res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, prior=prior)
        >>> lo, hi = res.interval(0.9, kind="hdi")
        >>> eq_lo, eq_hi = res.interval(0.9)
        >>> bool(res.at_bound.any()), bool(np.all(lo[res.at_bound] == 0.0))
        (True, True)
        >>> bool(np.all(eq_lo > 0.0)), bool(np.all(hi - lo <= eq_hi - eq_lo + 1e-9))
        (True, True)
        """
        prob = _check_prob(prob)
        kind = _check_kind(kind)
        if kind == "hdi":
            return self._hdi(prob)
        tail = 0.5 * (1.0 - prob)
        qs = self.quantiles([tail, 1.0 - tail])
        return qs[..., 0], qs[..., 1]

    @property
    def _support(self) -> tuple[float, float]:
        """The range of each weight: the prior's bounds (K = 2), [0, 1] on the simplex."""
        if self.simplex is not None:
            return 0.0, 1.0
        lo, hi = self.prior.bounds
        return float(lo), float(hi)

    def _many_quantiles(self, qs: np.ndarray) -> np.ndarray:
        """:meth:`quantiles` at many levels: K >= 3 one rerun of the sampler; K = 2 in groups
        of levels (one shape, one compilation), so memory stays that of a few levels."""
        if self.simplex is not None:
            return self._simplex_quantiles(qs)
        stats = self.posterior_stats
        per_call = int(np.clip(_LEVEL_BUDGET // max(self.n_frames, 1), 2, qs.size))
        n_calls = -(-qs.size // per_call)
        padded = np.concatenate([qs, np.full(n_calls * per_call - qs.size, qs[-1])])
        parts = [posterior_quantiles(self.prior, stats, self.sigma, padded[c : c + per_call])
                 for c in range(0, padded.size, per_call)]  # fmt: skip
        return np.concatenate(parts, axis=-1)[..., : qs.size]

    def _hdi(self, prob: float) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._support
        u = (1.0 - prob) * np.arange(_HDI_STEPS + 1) / _HDI_STEPS
        # Levels strictly inside (0, 1) (prob within an ulp of 1 would round u + prob to 1);
        # u = 0 and u + prob = 1 take the support's bounds instead, exactly.
        levels = np.clip(np.concatenate([u[1:], u[:-1] + prob]), np.finfo(float).tiny,
                         np.nextafter(1.0, 0.0))  # fmt: skip
        q = np.clip(self._many_quantiles(levels), lo, hi)
        shape = q.shape[:-1]
        edge = np.ones((*shape, 1))
        lower = np.concatenate([lo * edge, q[..., :_HDI_STEPS]], axis=-1)
        upper = np.concatenate([q[..., _HDI_STEPS:], hi * edge], axis=-1)
        upper = np.maximum(upper, lower)
        flat = lower.reshape(-1, _HDI_STEPS + 1), upper.reshape(-1, _HDI_STEPS + 1)
        guard = 0
        if self.simplex is not None:
            step = (1.0 - prob) / _HDI_STEPS
            guard = min(math.ceil(_HDI_GUARD_DRAWS / (max(self.n_draws, 1) * step)),
                        _HDI_STEPS // 2)  # fmt: skip
        a, b = _shortest_window(*flat, guard=guard)
        a = np.clip(a, lo, hi).reshape(shape)
        b = np.clip(b, lo, hi).reshape(shape)
        return a, np.maximum(a, b)

    def prob_near_bound(self, tol: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
        """Posterior probability that each weight lies within ``tol`` of a bound of its support.

        ``p_low = P(x <= lo + tol | y)`` and ``p_high = P(x >= hi - tol | y)``, given sigma,
        with ``[lo, hi]`` the prior's bounds (K = 2) or [0, 1] (each weight on the simplex).
        With K = 2 from each posterior's CDF (closed form for the truncated-normal and uniform
        priors, the fitted grid or mixture otherwise). With K >= 3 from the sampler's draws:
        the weight's quantiles at the levels 0.005, 0.010, ..., 0.995 (the same chains, rerun),
        with the support's bounds at 0 and 1, interpolated linearly; so resolved to about
        0.005, beside the Monte Carlo error ``sqrt(p (1 - p) / ESS)``.

        Parameters
        ----------
        tol : float
            Distance from a bound that counts as near it, in (0, (hi - lo) / 2].

        Returns
        -------
        p_low, p_high : ndarray, shape (N,); (N, K) with K >= 3 references

        Examples
        --------
        >>> import numpy as np, bayesmix
        >>> x = np.r_[np.zeros(20), np.full(20, 0.5)]
        >>> sim = bayesmix.simulate(40, shape=(16, 16), noise=0.5, x=x, seed=0)
        >>> prior = bayesmix.priors.Uniform()
        >>> res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, prior=prior)
        >>> p_low, p_high = res.prob_near_bound(0.05)
        >>> p_low.shape
        (40,)
        >>> bool(p_low[:20].mean() > 5 * p_low[20:].mean())
        True
        """
        lo, hi = self._support
        tol = _check_tol(tol, lo, hi)
        if self.simplex is not None:
            quant = self._simplex_quantiles(_CDF_LEVELS)
            p_low = _cdf_from_quantiles(lo + tol, quant, _CDF_LEVELS, lo, hi)
            p_high = 1.0 - _cdf_from_quantiles(hi - tol, quant, _CDF_LEVELS, lo, hi)
            return p_low, np.clip(p_high, 0.0, 1.0)
        stats, n = self.posterior_stats, self.n_frames
        p_low = posterior_cdf(self.prior, stats, self.sigma, np.full(n, lo + tol))
        p_high = 1.0 - posterior_cdf(self.prior, stats, self.sigma, np.full(n, hi - tol))
        return np.clip(p_low, 0.0, 1.0), np.clip(p_high, 0.0, 1.0)

    def _table(self, prob: float) -> pd.DataFrame:
        lo, hi = self.interval(prob)
        simplex = {} if self.simplex is None else {
            "names": self.ref_names, "mc_se": self.mc_se, "at_bound": self.at_bound}
        return frame_table(
            frame=self.frame, x_map=self.x, mean=self.mean, sd=self.sd, lo=lo, hi=hi, prob=prob,
            stats=self.stats, sigma=self.sigma, bounds=self.prior.bounds,
            n_background=self.n_background, gain=self.gain, gain_sd=self.gain_sd,
            background=self.background, map_shape=self.map_shape, extra=self._noise_columns(),
            **simplex,
        )  # fmt: skip

    def _noise_columns(self) -> dict[str, np.ndarray]:
        out = {}
        if "log_sigma_mu" in self.noise_params:
            # Misfit against the population of noise scales (a frame's own sigma would explain
            # any residual): the chi-square tail averaged over log sigma ~ N(mu, tau^2).
            from scipy.stats import chi2

            t, wts = np.polynomial.hermite_e.hermegauss(32)
            s = self.noise_params["log_sigma_mu"] + self.noise_params["log_sigma_tau"] * t
            dof = np.maximum(np.asarray(self.stats.dof_residual, np.float64), 1.0)
            tails = chi2.sf(np.asarray(self.stats.rss)[:, None] / np.exp(2.0 * s)[None, :],
                            dof[:, None])  # fmt: skip
            out["misfit_p"] = tails @ (wts / wts.sum())
        if self.sigma_frame is not None:
            out["sigma_frame"] = np.asarray(self.sigma_frame)
            out["sigma_frame_sd"] = np.asarray(self.sigma_frame_sd)
        if self.loglik is not None:
            out["loglik"] = np.asarray(self.loglik)
        if self.temporal is not None:
            t = self.temporal
            out.update({"time": t.times, "sequence": t.sequence, "mean_alone": t.mean_alone,
                        "sd_alone": t.sd_alone, "cavity_mean": np.asarray(t.cavity.m),
                        "cavity_sd": np.asarray(t.cavity.sd)})  # fmt: skip
        return out

    @property
    def n_background(self) -> int:
        """P, the number of background terms integrated out."""
        return 0 if self.background is None else int(np.shape(self.background)[1])

    def to_dataframe(self, prob: float = 0.9) -> pd.DataFrame:
        """One row per frame: MAP, mean, sd, the ``prob`` interval, R^2, flags, statistics.

        The interval's columns are named by their quantiles' exact percentages: ``q05``,
        ``q95`` for 0.9, ``q2.5``, ``q97.5`` for 0.95, ``q0.000005``, ``q99.999995`` for
        0.9999999 (:func:`bayesmix._schema.interval_labels`).

        Flags: ``at_bound`` (the posterior piles up at a bound of the prior: the frame asks for a
        weight outside it) and ``misfit_p`` (chi-square p-value of the frame's residual: tiny
        when the two references do not explain the frame).

        ``xhat``, ``rss``, ``dd`` and ``n_pixels`` are the frame's sufficient statistics: with
        ``sigma`` (in ``df.attrs``) they reproduce every other column. ``loglik`` is the
        frame's log marginal likelihood (:func:`bayesmix.compare`); ``sigma_frame`` and
        ``sigma_frame_sd`` each frame's noise scale with ``noise='per_frame'``.

        Examples
        --------
        >>> import bayesmix
        >>> sim = bayesmix.simulate(20, shape=(16, 16), seed=1)
        >>> df = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b).to_dataframe()
        >>> list(df.columns)
        ['x_map', 'mean', 'sd', 'q05', 'q95', 'r2', 'at_bound', 'misfit_p', 'misfit_q', 'xhat',
         'rss', 'dd', 'n_pixels', 'loglik']
        """
        df = self._table(_check_prob(prob))
        df.attrs.update(self._attrs())
        return df

    def to_xarray(self, prob: float = 0.9) -> xr.Dataset:
        """The per-frame results as an :class:`xarray.Dataset`.

        Dimension ``frame``; for a spectrum image (``spectral_axis=``) the map's dimensions
        instead, ``(y, x)`` for a 2-D map, so that ``ds["mean"].plot()`` draws the map.
        """
        import xarray as xr

        df = self._table(_check_prob(prob))
        if self.simplex is not None:
            return self._simplex_xarray(df)
        if self.map_shape is None:
            ds = xr.Dataset({k: ("frame", df[k].to_numpy()) for k in df.columns},
                            coords={"frame": self.frame})  # fmt: skip
        else:
            shape = self.map_shape
            dims = MAP_DIMS if len(shape) == 2 else tuple(f"map_{k}" for k in range(len(shape)))
            keep = [k for k in df.columns if not k.endswith("_index")]
            coords = {d: np.arange(n) for d, n in zip(dims, shape, strict=True)}
            ds = xr.Dataset(
                {k: (dims, df[k].to_numpy().reshape(shape)) for k in keep}, coords=coords
            )
            ds["frame"] = (dims, np.asarray(self.frame).reshape(shape))
        ds.attrs.update(clean_attrs(self._attrs()))
        return ds

    def _simplex_xarray(self, df: pd.DataFrame) -> xr.Dataset:
        """K >= 3: per-reference variables with dims (frame, reference) (or (y, x, reference))."""
        import xarray as xr

        names = list(self.ref_names)
        if self.map_shape is None:
            dims: tuple[str, ...] = ("frame",)
            shape: tuple[int, ...] = (self.n_frames,)
            coords: dict[str, Any] = {"frame": self.frame}
        else:
            shape = self.map_shape
            dims = MAP_DIMS if len(shape) == 2 else tuple(f"map_{k}" for k in range(len(shape)))
            coords = {d: np.arange(n) for d, n in zip(dims, shape, strict=True)}
        per_ref = {}
        taken = set()
        # The interval's columns 'q05_<name>', ...: names may hold '_' themselves ('ref_a').
        end = "_" + names[0]
        quantile_vars = tuple(var for var in (c[: -len(end)] for c in df.columns if c.endswith(end))
                              if label_quantile(var) is not None)  # fmt: skip
        for var in REF_VARS + quantile_vars:
            cols = [f"{var}_{r}" for r in names]
            if var in taken or not all(c in df.columns for c in cols):
                continue
            taken.add(var)
            taken.update(cols)
            per_ref[var] = ((*dims, "reference"),
                            np.stack([df[c].to_numpy() for c in cols], -1).reshape(*shape, -1))
        rest = {c: (dims, df[c].to_numpy().reshape(shape)) for c in df.columns
                if c not in taken and not c.endswith("_index")}  # fmt: skip
        ds = xr.Dataset({**per_ref, **rest}, coords={**coords, "reference": names})
        if self.map_shape is not None:
            ds["frame"] = (dims, np.asarray(self.frame).reshape(shape))
        ds.attrs.update(clean_attrs(self._attrs()))
        return ds

    def _attrs(self) -> dict[str, Any]:
        from bayesmix._version import __version__

        return {
            "method": "map",
            "sigma": self.sigma,
            "sigma_fixed": self.sigma_fixed,
            "sigma_method": self.sigma_method,
            "prior": prior_spec(self.prior),
            "sigma_prior": prior_spec(self.sigma_prior),
            "n_iter": self.n_iter,
            "converged": self.converged,
            "device": self.device,
            **self.model.describe(),
            **self.noise_params,
            **({} if self.temporal is None else self._temporal_attrs()),
            "n_background": self.n_background,
            **({} if self.map_shape is None else {"map_shape": list(self.map_shape)}),
            **({} if self.simplex is None else {"draws": self.n_draws, "seed": self.seed}),
            **self._population_attrs(),
            "bayesmix_version": __version__,
        }

    def _population_attrs(self) -> dict[str, Any]:
        """With a learned prior: its family, hyperparameters and their sds (``prior_<name>``,
        ``prior_<name>_sd``) and the log marginal likelihood it maximised."""
        pop = self.population
        if pop is None:
            return {}
        out: dict[str, Any] = {"prior_learned": pop.family,
                               "prior_log_evidence": pop.log_evidence}  # fmt: skip
        for key, value in pop.params.items():
            out[f"prior_{key}"] = value
            out[f"prior_{key}_sd"] = pop.sd[key]
        return out

    def _temporal_attrs(self) -> dict[str, Any]:
        t = self.temporal
        return {"temporal_q": t.q, "temporal_q_sd": t.q_sd, "temporal_q_fixed": t.q_fixed,
                "temporal_q_limit": t.q_limit, "temporal_log_evidence": t.log_evidence,
                "temporal_ep_iter": t.ep_iter, "temporal_map_iter": t.map_iter}  # fmt: skip

    def summary(self) -> str:
        """A few lines for a terminal: sigma, the range of x, the flags."""
        if self.simplex is not None:
            med = np.median(self.mean, axis=0)
            sds = np.median(self.sd, axis=0)
            return "\n".join([
                f"MapResult: {self.n_frames} frames, {self.n_refs} references, "
                f"sigma = {self.sigma:.6g}" + ("" if self.sigma_fixed else
                                              f" +/- {self.sigma_sd:.2g}"),
                *(f"  {r}: mean weight median {m:.4f}, posterior sd median {v:.4g}"
                  for r, m, v in zip(self.ref_names, med, sds, strict=True)),
                f"  frames with a weight at 0 (MAP on a face): {int(self.at_bound.sum())}; "
                f"R^2 median {np.median(self.r2):.4f}",
                "  Monte Carlo error / sd: max "
                f"{np.max(self.mc_se / np.maximum(self.sd, 1e-300)):.3f}"
                f" ({self.n_draws} Gibbs draws on {int(self.simplex.sampled.sum())} frames)",
                f"  prior: {self.prior!r}",
                *([] if self.population is None else [f"  {self.population.summary()}"]),
                f"  model: {self.model.name}"
                + ("" if self.map_shape is None else f"; map {self.map_shape}"),
            ])  # fmt: skip
        lines = [
            f"MapResult: {self.n_frames} frames, sigma = {self.sigma:.6g}"
            + ("" if self.sigma_fixed else f" +/- {self.sigma_sd:.2g}"),
            f"  x MAP: median {np.median(self.x):.4f}, "
            f"range [{self.x.min():.4f}, {self.x.max():.4f}]",
            f"  posterior sd: median {np.median(self.sd):.4g}",
            f"  frames at a bound: {int(self.at_bound.sum())}; R^2 median {np.median(self.r2):.4f}",
            f"  prior: {self.prior!r}",
            f"  model: {self.model.name}"
            + ("" if self.map_shape is None else f"; map {self.map_shape}"),
        ]
        if self.population is not None:
            lines.insert(-1, f"  {self.population.summary()}")
        if self.gain is not None:
            lines.insert(3, f"  gain: median {np.median(self.gain):.4g}")
        if self.temporal is not None:
            t = self.temporal
            lines.insert(3, f"  random walk: q = {t.q:.4g}" + (" (given)" if t.q_fixed else
                         f" +/- {t.q_sd:.2g}") + f" per time unit, {t.n_sequences} sequence(s);"
                         f" sd alone median {np.median(t.sd_alone):.4g}")  # fmt: skip
        return "\n".join(lines)
