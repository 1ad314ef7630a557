"""The fast path: recovery, independent references, coverage, batching, tracing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
from conftest import scipy_logpdf
from quadrature import RefPosterior

import bayesmix
from bayesmix import Beta, InverseGamma, Jeffreys, TruncatedNormal, Uniform, fit_map
from bayesmix._map import TRACES


def _crb(sim) -> float:
    """Cramer-Rao bound of one frame's weight: sigma / ||A - B||."""
    d = sim.ref_a - sim.ref_b
    return sim.sigma / float(np.sqrt(np.sum(d * d)))


def test_recovers_x_at_the_cramer_rao_bound():
    n = 3000
    rng = np.random.default_rng(0)
    sim = bayesmix.simulate(n, shape=(32, 32), noise=0.3, x=rng.uniform(0.2, 0.8, n), seed=0)
    res = fit_map(sim.frames, sim.ref_a, sim.ref_b, prior=Uniform())
    crb = _crb(sim)
    z = (res.x - sim.x) / crb
    # With a flat prior and x far from the bounds, z ~ N(0, 1) exactly: bounds are 4-5 standard
    # errors of the sample mean / mean square, and the max of 3000 |N(0,1)| is < 5 w.p. 0.998.
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(np.mean(z**2) - 1) < 4 * np.sqrt(2 / n)
    assert np.max(np.abs(z)) < 5
    # Reported sd is the bound itself (sigma learned to ~1/sqrt(2n) relative).
    np.testing.assert_allclose(res.sd, crb, rtol=5e-3)
    # sigma recovered within 5 posterior sd, sigma / sqrt(2 n_pixels).
    assert abs(res.sigma - sim.sigma) < 5 * res.sigma_sd
    assert res.converged and not res.at_bound.any()


def _joint_neg_log_post(theta, frames, a, b, prior, sigma_prior):
    """-log p(x, sigma | y) from the all-pixel likelihood (no bayesmix statistics)."""
    x, sigma = theta[:-1], theta[-1]
    resid = frames - (x[:, None] * a + (1 - x[:, None]) * b)
    n = frames.size
    conc, scale = sigma_prior.ig_params
    lp_sigma = -(2 * conc + 1) * np.log(sigma) - scale / sigma**2
    lp_x = np.sum(scipy_logpdf(prior, x))
    return n * np.log(sigma) + 0.5 * np.sum(resid**2) / sigma**2 - lp_sigma - lp_x


@pytest.mark.parametrize(
    "prior, sigma_prior",
    [
        (TruncatedNormal(), Jeffreys()),
        (Uniform(0.1, 0.9), Jeffreys()),
        (Beta(5.5, 4.5), Jeffreys()),
        (TruncatedNormal(0.5, 0.05, 0.3, 0.8), InverseGamma(3.0, 0.5)),
    ],
)
def test_joint_map_equals_scipy_optimize_on_all_pixels(prior, sigma_prior):
    sim = bayesmix.simulate(25, shape=(6, 6), noise=0.6, seed=2)
    frames = sim.frames.astype(np.float64).reshape(25, -1)
    a, b = sim.ref_a.ravel(), sim.ref_b.ravel()
    res = fit_map(frames, a, b, prior=prior, sigma_prior=sigma_prior, sigma_method="joint")
    lo, hi = prior.bounds
    eps = 1e-9
    start = np.concatenate([np.full(25, 0.5 * (lo + hi)), [1.0]])
    bounds = [(lo + eps, hi - eps)] * 25 + [(1e-3, 10.0)]
    opt = scipy.optimize.minimize(
        _joint_neg_log_post, start, args=(frames, a, b, prior, sigma_prior),
        method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000},
    )  # fmt: skip
    # L-BFGS-B stops ~1e-6 from the optimum in x; the closed form is exact.
    np.testing.assert_allclose(res.x, np.clip(opt.x[:-1], lo, hi), atol=2e-5)
    assert res.sigma == pytest.approx(opt.x[-1], rel=1e-6)


@pytest.mark.parametrize("prior", [TruncatedNormal(), Uniform(0.2, 0.9), Beta(3.0, 2.0)])
def test_posterior_given_sigma_equals_quadrature_of_all_pixel_posterior(prior):
    """From the pixels to the posterior: the all-pixel Gaussian likelihood is quadratic in x,
    ``-||r - x d||^2 / (2 sigma^2) = const - dd (x - xhat)^2 / (2 sigma^2)`` with xhat and dd
    from numpy's float64 least squares on the pixels, so the shared quadrature reference
    (tests/quadrature.py) on those gives the exact posterior."""
    sim = bayesmix.simulate(8, shape=(5, 5), noise=0.5, seed=3, prior=prior)
    frames = sim.frames.astype(np.float64).reshape(8, -1)
    a, b = sim.ref_a.ravel(), sim.ref_b.ravel()
    res = fit_map(frames, a, b, prior=prior)
    lo_q, hi_q = res.interval(0.9)
    d = a - b
    for i in range(8):
        xhat = np.linalg.lstsq(d[:, None], frames[i] - b, rcond=None)[0][0]
        ref = RefPosterior(prior, xhat, (d @ d) / res.sigma**2)
        # Truncated-normal family: closed form, so ~1e-8 sd; Beta: 2048-point grid quadrature
        # (test_posterior._tols).
        tol = 1e-7 * ref.sd if not isinstance(prior, Beta) else 1e-4 * ref.sd
        assert res.mean[i] == pytest.approx(ref.mean, abs=tol)
        assert res.sd[i] == pytest.approx(ref.sd, abs=tol)
        assert lo_q[i] == pytest.approx(ref.quantile(0.05), abs=10 * tol)
        assert hi_q[i] == pytest.approx(ref.quantile(0.95), abs=10 * tol)


@pytest.mark.parametrize("prior", [TruncatedNormal(), Beta(5.5, 4.5)])
def test_vmapped_equals_per_frame_loop(sim_small, prior):
    res = fit_map(sim_small.frames, sim_small.ref_a, sim_small.ref_b, prior=prior)
    lo, hi = res.interval(0.8)
    for i in range(0, 400, 57):
        one = fit_map(sim_small.frames[i : i + 1], sim_small.ref_a, sim_small.ref_b,
                      prior=prior, sigma=res.sigma)  # fmt: skip
        l1, h1 = one.interval(0.8)
        np.testing.assert_allclose(
            [one.x[0], one.mean[0], one.sd[0], l1[0], h1[0]],
            [res.x[i], res.mean[i], res.sd[i], lo[i], hi[i]],
            rtol=1e-12, atol=1e-14,
        )  # fmt: skip


@pytest.mark.parametrize(
    "prior", [TruncatedNormal(), Uniform(0.0, 1.0), Beta(5.5, 4.5)], ids=lambda p: type(p).__name__
)
def test_90_percent_intervals_cover_90_percent(prior):
    # x drawn from the prior: Bayesian intervals then cover at their nominal rate exactly (up to
    # the plug-in sigma). 20,000 frames: binomial sd 0.21%, so 90% +/- 2% is a > 9 sd band.
    n = 20_000
    sim = bayesmix.simulate(n, shape=(8, 8), noise=0.25, prior=prior, seed=5)
    res = fit_map(sim.frames, sim.ref_a, sim.ref_b, prior=prior)
    lo, hi = res.interval(0.9)
    cover = np.mean((lo <= sim.x) & (sim.x <= hi))
    assert 0.88 <= cover <= 0.92
    # and the posterior is informative here, not the prior echoed back
    assert np.median(res.sd) < 0.8 * np.std(sim.x)


def test_float32_and_float64_agree(sim_small):
    r32 = fit_map(sim_small.frames, sim_small.ref_a, sim_small.ref_b)
    r64 = fit_map(sim_small.frames.astype(np.float64), sim_small.ref_a, sim_small.ref_b)
    # float32 rounding of 576-pixel sums: far below a thousandth of a posterior sd.
    np.testing.assert_allclose(r32.x, r64.x, atol=1e-3 * r64.sd.min())
    np.testing.assert_allclose(r32.sd, r64.sd, rtol=1e-5)
    assert r32.sigma == pytest.approx(r64.sigma, rel=1e-5)


def test_jitted_core_traces_once_per_shape():
    sims = [
        bayesmix.simulate(n, shape=(8, 8), noise=0.3, seed=s)
        for s, n in [(1, 300), (2, 300), (3, 290)]
    ]
    fit_map(sims[0].frames, sims[0].ref_a, sims[0].ref_b)
    before = TRACES["map"]
    for sim in sims:  # 290 frames pad to the same bucket as 300
        fit_map(sim.frames, sim.ref_a, sim.ref_b)
        fit_map(sim.frames, sim.ref_a, sim.ref_b, prior=TruncatedNormal(0.5, 0.2))
    assert TRACES["map"] == before


def test_frames_beyond_the_bounds_are_flagged():
    x = np.array([-0.3, 0.5, 1.4, 0.999])
    sim = bayesmix.simulate(4, shape=(16, 16), noise=0.05, x=x, seed=1)
    res = fit_map(sim.frames, sim.ref_a, sim.ref_b)
    assert res.at_bound.tolist() == [True, False, True, False]
    assert res.x[0] == 0.0 and res.x[2] == 1.0
    lo, hi = res.interval(0.9)
    # Piled up on 0: the whole 90% interval hugs the bound.
    assert 0.0 <= lo[0] < hi[0] < 0.01 and np.isfinite(res.sd).all()


def test_known_sigma_is_used_as_given(sim_small):
    res = fit_map(sim_small.frames, sim_small.ref_a, sim_small.ref_b, sigma=0.25)
    assert res.sigma == 0.25 and res.sigma_fixed and res.sigma_sd == 0.0


def test_tables(sim_small):
    res = fit_map(sim_small.frames, sim_small.ref_a, sim_small.ref_b)
    df = res.to_dataframe(0.8)
    assert list(df.columns[:5]) == ["x_map", "mean", "sd", "q10", "q90"]
    np.testing.assert_array_equal(df["x_map"].to_numpy(), res.x)
    np.testing.assert_array_equal(df["q10"].to_numpy(), res.interval(0.8)[0])
    ds = res.to_xarray()
    assert ds.sizes["frame"] == 400 and ds.attrs["sigma"] == res.sigma
    np.testing.assert_array_equal(ds["q95"].values, res.interval(0.9)[1])
