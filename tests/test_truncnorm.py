"""Truncated-normal special functions against mpmath at 50 digits, tails included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy import stats

from bayesmix._truncnorm import log_diff_ndtr, log_ndtr, ndtri_log, tn_moments, tn_quantile

mp.mp.dps = 50


def _mp_log_ndtr(z):
    z = mp.mpf(z)
    return mp.log(mp.ncdf(z)) if z <= 0 else mp.log1p(-mp.ncdf(-z))


def _mp_tn(m, s, lo, hi):
    """Mean, sd and a quantile function of Normal(m, s) on [lo, hi], by mpmath (50 digits).

    Written for mass in the lower tail; an upper-tail case is reflected first."""
    if (lo - m) + (hi - m) > 0:
        mean, sd, quant = _mp_tn(-m, s, -hi, -lo)
        return -mean, sd, lambda q: -quant(1 - q)
    m, s, lo, hi = map(mp.mpf, (m, s, lo, hi))
    a, b = (lo - m) / s, (hi - m) / s
    z = mp.ncdf(b) - mp.ncdf(a)
    pa, pb = mp.npdf(a), mp.npdf(b)
    mean = m + s * (pa - pb) / z
    var = s**2 * (1 + (a * pa - b * pb) / z - ((pa - pb) / z) ** 2)

    def quantile(q):
        return m + s * _inv_ncdf(mp.ncdf(a) + mp.mpf(q) * z, a, b)

    return float(mean), float(mp.sqrt(var)), quantile


def _inv_ncdf(target, a, b):
    lo, hi = mp.mpf(a), mp.mpf(b)
    for _ in range(200):  # bisection: slow, sure
        mid = (lo + hi) / 2
        if mp.ncdf(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-13), (jnp.float32, 1e-5)])
def test_log_ndtr_over_the_whole_line(dtype, rtol):
    zs = np.r_[
        -1e4, -1e3, -300, -50, -35.001, -34.999, -20, -12.001, -11.999, -5, -1, 0, 1, 5, 8, 20
    ]
    if dtype == jnp.float32:
        zs = zs[np.abs(zs) < 40]  # float32's range
    ref = np.array([float(_mp_log_ndtr(z)) for z in zs])
    with jax.enable_x64(dtype == jnp.float64):
        got = np.asarray(log_ndtr(jnp.asarray(zs, dtype)), np.float64)
    ok = np.abs(ref) > 1e-30  # float32 cannot hold smaller log-probabilities
    np.testing.assert_allclose(got[ok], ref[ok], rtol=rtol)


def test_ndtri_log_inverts_log_ndtr_far_into_the_tail():
    logs = -np.logspace(-12, 5, 60)
    with jax.enable_x64(True):
        z = ndtri_log(jnp.asarray(logs))
        back = np.asarray(log_ndtr(z))
    np.testing.assert_allclose(back, logs, rtol=1e-12)
    assert np.all(np.diff(np.asarray(z)) < 0)  # log p decreasing: z decreasing
    # log p = -1e5 (z ~ -447), checked at 50 digits
    assert float(_mp_log_ndtr(float(z[-1]))) == pytest.approx(logs[-1], rel=1e-12)


def test_log_diff_ndtr_in_both_tails():
    cases = [(-1.0, 2.0), (30.0, 30.5), (-40.0, -39.0), (5.0, 1e3), (-1e3, -900.0)]
    with jax.enable_x64(True):
        for a, b in cases:
            # upper tail written as Q(a) - Q(b), so that 50 digits resolve it
            diff = mp.ncdf(-a) - mp.ncdf(-b) if a > 0 else mp.ncdf(b) - mp.ncdf(a)
            ref = float(mp.log(diff))
            assert float(log_diff_ndtr(jnp.float64(a), jnp.float64(b))) == pytest.approx(
                ref, rel=1e-12
            )


@pytest.mark.parametrize(
    "m, s",
    [
        (0.5, 0.1),
        (0.02, 0.05),
        (-0.3, 0.1),
        (1.2, 0.04),
        (-5.0, 0.1),
        (-50.0, 0.1),
        (60.0, 0.1),
        (0.5, 30.0),
        (-2.1, 0.1),  # 21 sd below: exact formulas
        (-2.3, 0.1),  # 23 sd below: tail expansion
        (-1e3, 1e-3),  # a million sd below
        (2.0, 1e3),  # an uninformative frame: nearly flat on [0, 1]
    ],
)
def test_moments_and_quantiles_match_mpmath(m, s):
    # Exact formulas up to 22 sd beyond a bound, the tail expansion past it: both ~1e-8 relative
    # (measured). Absolute results cannot beat float64's resolution of m itself: eps * |m|.
    mean_ref, sd_ref, quant = _mp_tn(m, s, 0.0, 1.0)
    with jax.enable_x64(True):
        mean, sd = (float(v) for v in tn_moments(jnp.float64(m), jnp.float64(s), 0.0, 1.0))
        qs = [
            float(tn_quantile(jnp.float64(q), jnp.float64(m), jnp.float64(s), 0.0, 1.0))
            for q in (0.05, 0.5, 0.95)
        ]
    tol = 1e-7 * sd_ref + 4e-16 * max(abs(m), 1.0)
    assert mean == pytest.approx(mean_ref, abs=tol)
    assert sd == pytest.approx(sd_ref, rel=1e-7)
    for q, got in zip((0.05, 0.5, 0.95), qs, strict=True):
        assert got == pytest.approx(float(quant(q)), abs=10 * tol)


def _mp_tail_moments(b, w):
    """Mean and sd of t = b - z, z ~ N(0, 1) on [b - w, b], by 50-digit quadrature in t.

    Quadrature in t, not the closed form: that cancels in the variance however many digits."""
    b, w = mp.mpf(b), mp.mpf(w)
    dens = lambda t: mp.exp(-((b - t) ** 2) / 2 + b * b / 2)  # noqa: E731
    knots = sorted({mp.mpf(0), *(min(w, k / abs(b)) for k in (1, 10, 60)), w})
    z = mp.quad(dens, knots)
    mean = mp.quad(lambda t: t * dens(t), knots) / z
    var = mp.quad(lambda t: (t - mean) ** 2 * dens(t), knots) / z
    return float(mean), float(mp.sqrt(var))


@pytest.mark.parametrize("b", [-5.0, -21.9, -22.01, -25.0, -100.0, -1e3, -1e5])
@pytest.mark.parametrize("width", [1e-6, 0.01, 1.5, 2.1, 12.0, 39.0, 41.0, 1e4])
def test_deep_and_narrow_match_mpmath(b, width):
    # An interval `width` mean free paths (1/|b|) wide, |b| sd below the mode: every regime of
    # tn_moments (exact formulas, Gauss-Legendre, the tail expansion). Its distance from the near
    # bound is measured to float64's spacing at b; the sd to 1e-8 (exact formulas: ~2e-8 at 22 sd).
    w = width / abs(b)
    a = b - w
    t_mean, t_sd = _mp_tail_moments(b, b - a)
    with jax.enable_x64(True):
        mean, sd = (float(v) for v in tn_moments(jnp.float64(0.0), jnp.float64(1.0), a, b))
    assert b - mean == pytest.approx(t_mean, abs=1e-8 * t_sd + 2 * np.spacing(abs(b)))
    assert sd == pytest.approx(t_sd, rel=5e-8)


def test_moments_match_scipy_on_a_grid():
    m = np.linspace(-0.5, 1.5, 41)
    s = np.full_like(m, 0.2)
    with jax.enable_x64(True):
        mean, sd = (np.asarray(v) for v in tn_moments(jnp.asarray(m), jnp.asarray(s), 0.0, 1.0))
        q = np.asarray(tn_quantile(jnp.asarray(0.9), jnp.asarray(m), jnp.asarray(s), 0.0, 1.0))
    ref = stats.truncnorm((0 - m) / s, (1 - m) / s, loc=m, scale=s)
    np.testing.assert_allclose(mean, ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(sd, ref.std(), rtol=1e-10)
    np.testing.assert_allclose(q, ref.ppf(0.9), rtol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("m", [-1e6, 0.3, 1e6])
def test_huge_scale_is_uniform(dtype, m):
    # s -> inf: the truncated normal tends to Uniform(0, 1), mean 1/2 and sd 1/sqrt(12), whatever
    # m is. A float32 s of 1e30 once gave sd 0 (var underflowed) and mean 0.4375 (m + s*z).
    with jax.enable_x64(dtype == jnp.float64):
        mean, sd = tn_moments(jnp.asarray(m, dtype), jnp.asarray(1e30, dtype), 0.0, 1.0)
    assert float(mean) == pytest.approx(0.5, rel=1e-6)
    assert float(sd) == pytest.approx(1 / np.sqrt(12), rel=1e-6)
