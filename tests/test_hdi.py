"""Highest-density intervals and the probability of lying near a bound, against references that
share no code with bayesmix.

- Truncated-normal and uniform priors (K = 2): each frame's posterior is
  ``TruncatedNormal(m, s; lo, hi)`` with ``lam = dd / sigma^2 + 1 / tau^2`` and
  ``m = (dd xhat / sigma^2 + mu / tau^2) / lam``, ``s = lam^-1/2`` (the model, written out here).
  Its HDI is found with ``scipy.stats.truncnorm`` by minimising the width
  ``W(u) = Q(u + p) - Q(u)`` over ``u`` in [0, 1 - p]: W is convex for a unimodal density
  (``W'(u) = 1 / f(Q(u + p)) - 1 / f(Q(u))`` increases), so the minimiser is 0 when
  ``W'(0) >= 0``, ``1 - p`` when ``W'(1 - p) <= 0``, else the root of W' (bisection, vectorised
  over the frames; cross-checked against ``scipy.optimize.minimize_scalar`` on a few frames).
  ``prob_near_bound`` against ``truncnorm.cdf`` / ``truncnorm.sf``.
- Beta prior: the HDI as the level set ``{f >= c}`` of mass p (``scipy.optimize.brentq`` on the
  level, ``scipy.integrate.quad`` for the mass; :class:`quadrature.RefPosterior`), a definition
  independent of the shortest-window search the library runs.
- K = 3: frames whose posterior is the closed-form Gaussian (far inside the simplex), where the
  HDI is the central interval ``mean +- z sd``; frames with a weight of 0 whose posterior piles up
  at 0 (the unconstrained least-squares weight, computed here with numpy, below 0).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from quadrature import RefPosterior
from scipy import optimize, stats

import bayesmix
from bayesmix import priors as P
from bayesmix._stats import FrameStats

# Library quantiles of the closed forms are accurate to ~1e-9 sd (test_posterior: qtol); the HDI
# interpolates them in u with a 5-point stencil of step h = (1 - p) / 64, whose error is
# ~ h^5 Q^(5)(u) / 5! ~ 2e-9 sd for a normal's 90% HDI (Q^(5) = (7 + 46 z^2 + 24 z^4) / phi^5).
# Measured over 600 frames (interior, at a bound, borderline): <= 6e-8 sd. Allow 1e-6 sd.
TOL_TN = 1e-6
# Beta: the grid's quantiles are accurate to 1e-3 sd (test_posterior._tols; measured 2.5e-4).
TOL_BETA_Q = 1e-3
PROBS = (0.5, 0.9, 0.99)
N_FRAMES = 200  # one size for every two-reference fit here: one compilation per prior type


def _frames(rng: np.random.Generator, n: int) -> FrameStats:
    """Frames whose least-squares weights lie inside and far beyond [0, 1], with likelihood
    widths from 0.3 to 0.01 (sigma = 1: the precision in x is dd)."""
    xhat = rng.uniform(-0.4, 1.4, n)
    dd = 10.0 ** rng.uniform(1.0, 4.0, n)
    return FrameStats(xhat, np.full(n, 90.0), dd, np.full(n, 100, np.int64))


@cache
def _fit(prior) -> tuple[FrameStats, bayesmix.MapResult]:
    st = _frames(np.random.default_rng(0), N_FRAMES)
    return st, bayesmix.fit_map_stats(st, prior=prior, sigma=1.0)


def _posterior_tn(st: FrameStats, prior) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) of each frame's truncated-normal posterior given sigma = 1."""
    prec = 0.0 if isinstance(prior, P.Uniform) else 1.0 / prior.scale**2
    mu = 0.0 if isinstance(prior, P.Uniform) else prior.loc
    lam = st.dd + prec
    return (st.dd * st.xhat + prec * mu) / lam, lam**-0.5


def _ref_hdi_tn(m, s, lo, hi, p):
    """HDI ends (minimise the width, see the module docstring) and the minimiser u."""
    a, b = (lo - m) / s, (hi - m) / s

    def q(u):  # Q(0) = lo and Q(1) = hi exactly
        x = stats.truncnorm.ppf(np.clip(u, 0.0, 1.0), a, b, loc=m, scale=s)
        return np.where(u <= 0.0, lo, np.where(u >= 1.0, hi, x))

    def slope(u):  # W'(u) (1 / 0 = inf where a density underflows: the sign is still right)
        f = stats.truncnorm.pdf
        with np.errstate(divide="ignore", over="ignore"):
            return 1.0 / f(q(u + p), a, b, loc=m, scale=s) - 1.0 / f(q(u), a, b, loc=m, scale=s)

    n = m.size
    left, right = np.zeros(n), np.full(n, 1.0 - p)
    at_lo, at_hi = slope(left) >= 0, slope(right) <= 0
    for _ in range(48):  # u to (1 - p) 2^-48 < 4e-15: the ends to < 1e-12 sd
        mid = 0.5 * (left + right)
        up = slope(mid) > 0
        left, right = np.where(up, left, mid), np.where(up, mid, right)
    u = np.where(at_lo, 0.0, np.where(at_hi, 1.0 - p, 0.5 * (left + right)))
    return q(u), q(u + p), u


@pytest.mark.parametrize(
    "prior", [P.TruncatedNormal(0.55, 0.15), P.Uniform(), P.Uniform(0.2, 0.9)], ids=str
)
def test_hdi_truncated_normal_matches_scipy(prior):
    st, res = _fit(prior)
    m, s = _posterior_tn(st, prior)
    lo, hi = prior.bounds
    a, b = (lo - m) / s, (hi - m) / s
    dist = stats.truncnorm(a, b, loc=m, scale=s)
    sd = dist.std()
    for p in PROBS:
        got_lo, got_hi = res.interval(p, kind="hdi")
        ref_lo, ref_hi, u = _ref_hdi_tn(m, s, lo, hi, p)
        np.testing.assert_array_less(np.abs(got_lo - ref_lo) / sd, TOL_TN)
        np.testing.assert_array_less(np.abs(got_hi - ref_hi) / sd, TOL_TN)
        # The bound is in the HDI exactly where the reference's is (density at the bound >=
        # density at Q(p)), and then exactly the bound: always when the mode is on the bound.
        np.testing.assert_array_equal(got_lo == lo, u == 0.0)
        np.testing.assert_array_equal(got_hi == hi, u == 1.0 - p)
        mode_lo, mode_hi = m <= lo, m >= hi
        assert mode_lo.any() and mode_hi.any()
        assert np.all(got_lo[mode_lo] == lo) and np.all(got_hi[mode_hi] == hi)
        assert 0 < (u == 0).sum() < len(u)
        # The equal-tailed interval never reaches a bound.
        eq_lo, eq_hi = res.interval(p)
        assert np.all(eq_lo > lo) and np.all(eq_hi < hi)
        assert np.all(got_hi - got_lo <= eq_hi - eq_lo + TOL_TN * sd)
        # Mass p by scipy's CDF (each end's error moves it by f(end) * error).
        f_lo, f_hi = dist.pdf(got_lo), dist.pdf(got_hi)
        mass = dist.cdf(got_hi) - dist.cdf(got_lo)
        np.testing.assert_array_less(np.abs(mass - p), (f_lo + f_hi) * TOL_TN * sd + 1e-13)
        # Interior HDIs: equal density at both ends (to the ends' error times the log
        # density's slope (x - m) / s^2 there).
        inner = (u > 0) & (u < 1 - p)
        slope = (np.abs(got_lo - m) + np.abs(got_hi - m)) / s**2
        gap = np.abs(np.log(f_lo) - np.log(f_hi))
        np.testing.assert_array_less(gap[inner], (slope * TOL_TN * sd + 1e-12)[inner])


def test_reference_minimises_the_width():
    """The reference's u against scipy.optimize.minimize_scalar on the width itself."""
    rng = np.random.default_rng(1)
    st = _frames(rng, 8)
    prior = P.TruncatedNormal(0.55, 0.15)
    m, s = _posterior_tn(st, prior)
    for p in (0.5, 0.9):
        ref_lo, ref_hi, _ = _ref_hdi_tn(m, s, 0.0, 1.0, p)
        for i in range(len(m)):
            d = stats.truncnorm(-m[i] / s[i], (1 - m[i]) / s[i], loc=m[i], scale=s[i])
            opt = optimize.minimize_scalar(lambda u, d=d, p=p: d.ppf(u + p) - d.ppf(u),
                                           bounds=(0.0, 1.0 - p), method="bounded",
                                           options={"xatol": 1e-12})  # fmt: skip
            ends = [(d.ppf(opt.x), d.ppf(opt.x + p)), (0.0, d.ppf(p)), (d.ppf(1 - p), 1.0)]
            best = min(b - a for a, b in ends)
            # Brent's own tolerance in the width: W'' (du)^2 with du ~ sqrt(eps) u.
            assert ref_hi[i] - ref_lo[i] <= best + 1e-12 * s[i], (p, i)


def _level_set_hdi(r: RefPosterior, p: float) -> tuple[float, float]:
    """The HDI {x : f(x) >= c} of mass p, for a unimodal reference posterior."""

    def ends(drop):  # the level c = f(mode) e^-drop
        def above(x):
            return r.logpost(x) - (r.lpmax - drop)

        left = r.L if above(r.L) >= 0 else optimize.brentq(above, r.L, r.mode, xtol=1e-15)
        right = r.R if above(r.R) >= 0 else optimize.brentq(above, r.mode, r.R, xtol=1e-15)
        return left, right

    def excess(drop):
        left, right = ends(drop)
        return r._quad(r.dens, left, right) / r.z - p

    return ends(optimize.brentq(excess, 1e-12, 59.0, xtol=1e-14))


@pytest.mark.parametrize("prior", [P.Beta(1.0, 3.0), P.Beta(2.5, 2.0)], ids=str)
def test_hdi_beta_matches_quadrature(prior):
    rng = np.random.default_rng(2)
    st = _frames(rng, 12)
    res = bayesmix.fit_map_stats(st, prior=prior, sigma=1.0)
    got_lo, got_hi = res.interval(0.9, kind="hdi")
    n_at_bound = 0
    for i in range(st.n_frames):
        r = RefPosterior(prior, st.xhat[i], st.dd[i])
        lo, hi = _level_set_hdi(r, 0.9)
        tol_q = TOL_BETA_Q * r.sd
        # Each window's width is off by at most twice the quantiles' error, so the shortest too.
        assert abs((got_hi[i] - got_lo[i]) - (hi - lo)) <= 2 * tol_q, i
        # Its mass, by quadrature: each end's error moves it by f(end) * error.
        dens = [r.dens(x) / r.z for x in (got_lo[i], got_hi[i])]
        assert abs(r.cdf(got_hi[i]) - r.cdf(got_lo[i]) - 0.9) <= sum(dens) * tol_q, i
        if lo == 0.0:  # the bound is in the HDI: exactly, the other end a grid quantile
            n_at_bound += 1
            assert got_lo[i] == 0.0 and abs(got_hi[i] - hi) <= tol_q, i
            continue
        # Interior: a width error e moves u by up to sqrt(2 e / W''), the ends by Q' times
        # that; W'' = (g(L) - g(U)) / c^2 and Q' = 1 / c with g the log density's slope and
        # c the density at the ends, so by sqrt(2 e / (g(L) - g(U))), e = 2 tol_q.
        bound = np.sqrt(4 * tol_q / (r.grad(lo) - r.grad(hi)))
        assert got_lo[i] > 0.0 and abs(got_lo[i] - lo) <= bound, (i, got_lo[i] - lo, bound)
        assert abs(got_hi[i] - hi) <= bound, (i, got_hi[i] - hi, bound)
    # a = 1: f(0) > 0 and frames whose data lie below 0 have their HDI at 0; a > 1: f(0) = 0.
    assert (n_at_bound > 0) if prior.a == 1.0 else (n_at_bound == 0)


def _simplex_frames(n_piled: int, n_inside: int, noise: float, seed: int = 5):
    rng = np.random.default_rng(seed)
    refs = [rng.uniform(0.0, 1.0, (12, 12)) for _ in range(3)]
    x = np.r_[np.tile([0.0, 0.5, 0.5], (n_piled, 1)), np.tile([0.3, 0.3, 0.4], (n_inside, 1))]
    frames = np.einsum("nk,kij->nij", x, np.stack(refs))
    return frames + rng.normal(0.0, noise, frames.shape), refs


def _plane_lstsq(frames, refs, noise):
    """Unconstrained least-squares weights (N, 3) on the plane sum x = 1 and their sd (3,)."""
    y = frames.reshape(len(frames), -1)
    r = np.stack(refs).reshape(3, -1)
    d = (r[:2] - r[2]).T  # x_2 = 1 - x_0 - x_1
    t, *_ = np.linalg.lstsq(d, (y - r[2]).T, rcond=None)
    lift = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    cov = noise**2 * lift @ np.linalg.inv(d.T @ d) @ lift.T
    return np.c_[t.T, 1.0 - t.sum(axis=0)], np.sqrt(np.diag(cov))


def test_hdi_k3_contains_zero_where_the_posterior_piles_up():
    noise = 0.3
    frames, refs = _simplex_frames(40, 0, noise)
    res = bayesmix.fit_map(frames, *refs, sigma=noise)
    lo, hi = res.interval(0.9, kind="hdi")
    eq_lo, eq_hi = res.interval(0.9)
    assert lo.shape == hi.shape == (40, 3)
    w, sd = _plane_lstsq(frames, refs, noise)
    # Piled at 0: the unconstrained weight is half an sd or more below 0 (its truncation to
    # [0, 1] has its density highest at 0, ~exp(z^2/2) above the density at Q(0.9)).
    piled = w[:, 0] < -0.5 * sd[0]
    assert piled.sum() >= 5
    assert np.all(lo[piled, 0] == 0.0)
    assert np.all(eq_lo[:, 0] > 0.0)
    # Within the support, never wider than the equal-tailed window (one of the candidates).
    assert np.all((lo >= 0) & (hi <= 1) & (lo <= hi))
    assert np.all(hi - lo <= eq_hi - eq_lo + 1e-12)


def test_k3_closed_form_frames():
    """Frames far inside the simplex: each weight's posterior is the Gaussian on the plane (the
    fit's closed form), whose HDI is mean +- z_{(1+p)/2} sd and whose CDF is Phi."""
    noise = 0.05
    frames, refs = _simplex_frames(0, 12, noise)
    res = bayesmix.fit_map(frames, *refs, sigma=noise)
    assert not res.simplex.sampled.any()
    mean, sd = _plane_lstsq(frames, refs, noise)
    lo, hi = res.interval(0.9, kind="hdi")
    z = stats.norm.ppf(0.95)
    np.testing.assert_array_less(np.abs(lo - (mean - z * sd)) / sd, TOL_TN)
    np.testing.assert_array_less(np.abs(hi - (mean + z * sd)) / sd, TOL_TN)
    # P(x <= mean - sd) = Phi(-1): the CDF read off the quantiles at levels 0.005 apart lies
    # between the two levels around it, so within 0.005.
    tol = mean[:, 0] - sd[0]
    for i in range(3):
        p_low, p_high = res.prob_near_bound(float(tol[i]))
        assert p_low.shape == p_high.shape == (12, 3)
        assert abs(p_low[i, 0] - stats.norm.cdf(-1.0)) <= 0.005
        # The far side: P(x >= 1 - tol) is below the first level's 0.005.
        assert p_high[i, 0] <= 0.005


@pytest.mark.parametrize("prior", [P.TruncatedNormal(0.55, 0.15), P.Uniform(0.2, 0.9)], ids=str)
def test_prob_near_bound_matches_truncnorm(prior):
    st, res = _fit(prior)
    m, s = _posterior_tn(st, prior)
    lo, hi = prior.bounds
    dist = stats.truncnorm((lo - m) / s, (hi - m) / s, loc=m, scale=s)
    for tol in (0.01, 0.1, 0.5 * (hi - lo)):
        p_low, p_high = res.prob_near_bound(tol)
        assert p_low.shape == p_high.shape == (N_FRAMES,)
        # Closed form in log space (relative error ~1e-13); p_high is 1 - CDF, so where it is
        # tiny its absolute error is the CDF's rounding near 1, half an ulp of 1: eps / 2.
        eps = np.finfo(float).eps
        np.testing.assert_allclose(p_low, dist.cdf(lo + tol), rtol=1e-10, atol=eps / 2)
        np.testing.assert_allclose(p_high, dist.sf(hi - tol), rtol=1e-10, atol=eps / 2)
    # Frames piled up at a bound (mode on it) are near it with high probability.
    p_low, p_high = res.prob_near_bound(0.01)
    assert np.median(p_low[m < lo - 3 * s]) > 0.5 and np.median(p_high[m > hi + 3 * s]) > 0.5


def test_prob_near_bound_beta_matches_quadrature():
    prior = P.Beta(1.0, 3.0)
    rng = np.random.default_rng(4)
    st = _frames(rng, 12)
    res = bayesmix.fit_map_stats(st, prior=prior, sigma=1.0)
    p_low, p_high = res.prob_near_bound(0.02)
    for i in range(st.n_frames):
        r = RefPosterior(prior, st.xhat[i], st.dd[i])
        # The grid CDF is off by f x (the quantiles' error) <= TOL_BETA_Q sd f_max, and
        # sd f_max <= 1 for these unimodal densities.
        assert abs(p_low[i] - r.cdf(0.02)) <= TOL_BETA_Q, i
        assert abs(p_high[i] - (1.0 - r.cdf(0.98))) <= TOL_BETA_Q, i


# --- bad inputs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fit():
    return _fit(P.TruncatedNormal(0.55, 0.15))[1]


@pytest.mark.parametrize("kind", ["hpd", "HDI", None, 1])
def test_bad_kind(fit, kind):
    with pytest.raises(bayesmix.InputError,
                       match=r"kind must be one of \('equal_tailed', 'hdi'\), got"):  # fmt: skip
        fit.interval(0.9, kind=kind)


@pytest.mark.parametrize("prob", [0.0, 1.0, 1.5, -0.1])
def test_bad_prob_hdi(fit, prob):
    with pytest.raises(bayesmix.InputError, match=r"prob must be in \(0, 1\)"):
        fit.interval(prob, kind="hdi")


@pytest.mark.parametrize("tol", [0.0, -0.01, 0.6, np.nan, True, "0.01"])
def test_bad_tol(fit, tol):
    with pytest.raises(bayesmix.InputError, match=r"tol must be a number in \(0, 0.5\]"):
        fit.prob_near_bound(tol)


def test_bad_tol_narrow_prior():
    res = _fit(P.Uniform(0.2, 0.9))[1]
    with pytest.raises(bayesmix.InputError,
                       match=r"tol must be a number in \(0, 0.35\]: .* \[0.2, 0.9\]"):  # fmt: skip
        res.prob_near_bound(0.4)
