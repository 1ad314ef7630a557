"""The full path: NUTS on the statistics against the exact analytic posterior; calibration."""

from __future__ import annotations

import os
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import bayesmix
from bayesmix import InverseGamma, TruncatedNormal
from bayesmix._likelihood import centred_loglik

FAST = {"num_warmup": 300, "num_samples": 300, "progress": False}


def _all_pixel_loglik(x, sigma, frames, a, b):
    r = frames - (x[:, None] * a + (1 - x[:, None]) * b)
    return -frames.size * np.log(sigma) - 0.5 * np.sum(r * r) / sigma**2


def test_centred_likelihood_equals_all_pixel_likelihood_and_is_float32_safe():
    sim = bayesmix.simulate(300, shape=(64, 64), noise=0.1, seed=0)
    f64 = sim.frames.astype(np.float64).reshape(300, -1)
    a, b = sim.ref_a.ravel(), sim.ref_b.ravel()
    st = bayesmix.frame_stats(f64, a, b)
    fit = bayesmix.fit_map_stats(st)
    sse_ref = float(np.sum(st.rss + st.dd * (fit.x - st.xhat) ** 2))
    rng = np.random.default_rng(1)
    pts = [
        (fit.x + fit.sd * rng.standard_normal(300), 1e-3 * rng.standard_normal()) for _ in range(4)
    ]
    with jax.enable_x64(True):
        st64 = bayesmix.FrameStats(*(jnp.asarray(np.asarray(v, float)) for v in st))

        def ours(x, u, stats, dtype):
            return float(
                centred_loglik(
                    jnp.asarray(x, dtype), jnp.asarray(u, dtype), stats,
                    jnp.asarray(fit.x, dtype), dtype(sse_ref), dtype(fit.sigma),
                )
            )  # fmt: skip

        diffs_ref = [
            _all_pixel_loglik(x, fit.sigma * np.exp(u), f64, a, b)
            - _all_pixel_loglik(*pts[0][:1], fit.sigma * np.exp(pts[0][1]), f64, a, b)
            for x, u in pts
        ]
        diffs64 = [ours(x, u, st64, jnp.float64) - ours(*pts[0], st64, jnp.float64) for x, u in pts]
    # Exact in float64 (differences of ~1e2 out of totals of ~1e6).
    np.testing.assert_allclose(diffs64, diffs_ref, atol=1e-6)
    st32 = bayesmix.FrameStats(*(jnp.asarray(np.asarray(v, float), jnp.float32) for v in st))
    diffs32 = [ours(x, u, st32, jnp.float32) - ours(*pts[0], st32, jnp.float32) for x, u in pts]
    # float32: far below 1 (HMC's energy scale); the naive total in float32 is off by far more
    # (its granularity at ~2e6 is 0.25 by itself).
    err32 = np.max(np.abs(np.subtract(diffs32, diffs_ref)))
    assert err32 < 0.05
    naive = [
        float(np.float32(-f64.size) * np.log(np.float32(fit.sigma * np.exp(u)))
              - 0.5 * np.sum(((f64 - (x[:, None] * a + (1 - x[:, None]) * b)) ** 2).astype(np.float32))
              / np.float32(fit.sigma * np.exp(u)) ** 2)
        for x, u in pts
    ]  # fmt: skip
    err_naive = np.max(np.abs(np.subtract(naive, naive[0]) - diffs_ref))
    assert err_naive > 0.1 and err_naive > 4 * err32


@pytest.fixture(scope="module")
def nuts_run():
    sim = bayesmix.simulate(2000, shape=(8, 8), noise=0.25, seed=7)
    idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=4, seed=3, **FAST)
    fit = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    return sim, idata, fit


def test_nuts_agrees_with_the_exact_posterior(nuts_run):
    _sim, idata, fit = nuts_run
    x = idata.posterior["x"]
    ess = az.ess(idata, var_names=["x"])["x"].values
    mean = x.mean(("chain", "draw")).values
    sd = x.std(("chain", "draw")).values
    # Monte-Carlo standard error of each mean: sd / sqrt(ESS). The analytic posterior is given
    # sigma-hat; sigma's own uncertainty (relative 1/sqrt(2n) ~ 0.4%) is far below that.
    z = (mean - fit.mean) / (fit.sd / np.sqrt(ess))
    assert np.mean(z**2) < 1.5 and np.max(np.abs(z)) < 5.5
    # sd: relative MC error of an sd estimate ~ 1/sqrt(2 ESS) ~ 2%; mean over frames is tight.
    assert abs(np.mean(sd / fit.sd) - 1) < 0.01
    assert float(idata.posterior["sigma"].mean()) == pytest.approx(fit.sigma, rel=2e-3)


def test_nuts_90_percent_intervals_cover_90_percent(nuts_run):
    sim, idata, _ = nuts_run
    draws = idata.posterior["x"].values.reshape(-1, 2000)
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    cover = np.mean((lo <= sim.x) & (sim.x <= hi))
    # 2,000 frames: binomial sd 0.67%; +/- 3% is 4.5 sd (quantiles from 1,200 draws add little).
    assert 0.87 <= cover <= 0.93


def test_inference_data_layout(nuts_run):
    _sim, idata, fit = nuts_run
    assert set(idata.groups()) >= {"posterior", "sample_stats", "log_likelihood", "observed_data"}
    assert idata.posterior["x"].dims == ("chain", "draw", "frame")
    assert idata.posterior["sigma"].dims == ("chain", "draw")
    np.testing.assert_array_equal(idata.posterior["frame"].values, np.arange(2000))
    assert idata.log_likelihood["y"].shape == (4, 300, 2000)
    for name in ("diverging", "tree_depth", "energy", "step_size"):
        assert name in idata.sample_stats
    np.testing.assert_allclose(idata.observed_data["xhat"].values, fit.stats.xhat)
    np.testing.assert_array_equal(idata.constant_data["x_map"].values, fit.x)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 2000


def test_diagnose_passes_a_healthy_run_and_explains_a_poor_one(nuts_run):
    _, idata, _ = nuts_run
    diag = bayesmix.diagnose(idata)
    assert diag.verdict == "pass", diag  # 2,001 variables: chance alone puts max R-hat > 1.01
    assert diag.divergences == 0 and diag.ess_bulk_min > 400
    assert set(diag.to_dataframe().columns) == {"rhat", "rhat_p", "rhat_limit", "ess_bulk",
                                                "ess_tail"}  # fmt: skip
    assert len(diag.to_dataframe()) == 2001
    sim = bayesmix.simulate(30, shape=(8, 8), noise=0.3, seed=1)
    short = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=1, num_warmup=50,
                            num_samples=20, progress=False)  # fmt: skip
    poor = bayesmix.diagnose(short)
    assert poor.verdict == "warn"
    assert any("one chain" in r for r in poor.reasons)
    assert any("ESS" in r for r in poor.reasons)


@pytest.mark.slow  # bit-identical seeds: tests/test_reproducible.py in the default run
def test_same_seed_same_draws():
    sim = bayesmix.simulate(40, shape=(8, 8), noise=0.3, seed=2)
    kw = {"num_chains": 2, "seed": 11, **FAST}
    first = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, **kw)
    again = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, **kw)
    np.testing.assert_array_equal(first.posterior["x"].values, again.posterior["x"].values)
    other = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, **{**kw, "seed": 12})
    assert not np.array_equal(first.posterior["x"].values, other.posterior["x"].values)


@pytest.mark.slow  # two full NUTS runs; float32 safety of the likelihood is tested directly
def test_float32_and_float64_samplers_agree():
    sim = bayesmix.simulate(100, shape=(16, 16), noise=0.3, seed=4)
    out = {
        dt: bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=2, dtype=dt, **FAST)
        for dt in ("float32", "float64")
    }
    m32, m64 = (out[dt].posterior["x"].mean(("chain", "draw")).values for dt in out)
    sd = out["float64"].posterior["x"].std(("chain", "draw")).values
    # Two independent runs: difference of two means, each with MC error sd/sqrt(ESS ~ 600).
    assert np.max(np.abs(m32 - m64) / sd) < 5 * np.sqrt(2 / 600)


@pytest.mark.slow  # 100 NUTS runs, ~3 min; make slow, make calibrate
def test_simulation_based_calibration():
    # Talts et al. (2018): draw (sigma, x) from the prior, simulate, sample, rank the truth among
    # the draws; ranks of a correct sampler are uniform. Proper priors needed: InverseGamma.
    prior, sigma_prior = TruncatedNormal(0.55, 0.15), InverseGamma(4.0, 3 * 0.3**2)
    rng = np.random.default_rng(0)
    reps, n_frames, keep = 100, 3, 100
    ranks = np.zeros((reps, n_frames + 1), int)
    a, b = bayesmix.sample_references((4, 4))
    for r in range(reps):
        sigma = np.sqrt(sigma_prior.scale / rng.gamma(sigma_prior.concentration))
        x = prior.sample(rng, n_frames)
        sim = bayesmix.simulate(n_frames, ref_a=a, ref_b=b, noise=sigma, x=x, seed=r)
        idata = bayesmix.sample(
            sim.frames, a, b, prior=prior, sigma_prior=sigma_prior, num_chains=1,
            num_warmup=150, num_samples=2 * keep, seed=r, progress=False, log_likelihood=False,
        )  # fmt: skip
        xs = idata.posterior["x"].values[0, ::2]  # thinned to ~independent draws
        ss = idata.posterior["sigma"].values[0, ::2]
        ranks[r, :n_frames] = np.sum(xs < x, axis=0)
        ranks[r, n_frames] = np.sum(ss < sigma)
    # 100 ranks in 0..100, 5 bins of 20 expected each: chi-square with 4 dof per quantity.
    for j in range(n_frames + 1):
        counts = np.histogram(ranks[:, j], bins=5, range=(0, keep + 1))[0]
        assert sps.chisquare(counts).pvalue > 1e-3, (j, counts)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_chains": 0}, "num_chains must be a positive integer"),
        ({"num_samples": 2.5}, "num_samples must be a positive integer"),
        ({"dtype": "float16"}, r"dtype must be one of \('float32', 'float64'\)"),
        ({"chain_method": "fast"}, r"chain_method must be one of \('auto', 'vectorized'"),
        ({"target_accept": 1.0}, r"target_accept must be in \(0, 1\)"),
    ],
)
def test_bad_sampler_options(kwargs, match):
    sim = bayesmix.simulate(5, shape=(4, 4), seed=0)
    with pytest.raises(ValueError, match=match):
        bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, progress=False, **kwargs)


def _memory_maps() -> int:
    with open("/proc/self/maps") as fh:
        return sum(1 for _ in fh)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_sample_compiles_once_and_does_not_leak():
    """40 calls on new data of one shape: one compilation, no growth of the memory mappings.

    Before the compiled-once program (numpyro's MCMC per call), later calls were 4x faster than
    the first and each added ~430 mappings: a process died after ~170 calls.
    """
    from bayesmix import _hmc

    _hmc._program.cache_clear()  # the first call below compiles, whatever ran before
    seconds, maps = [], []
    for i in range(40):
        sim = bayesmix.simulate(200, shape=(16, 16), seed=100 + i)
        t0 = time.perf_counter()
        idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=1, num_warmup=100,
                                num_samples=100, seed=i, progress=False)  # fmt: skip
        seconds.append(time.perf_counter() - t0)
        maps.append(_memory_maps())
        assert idata.posterior["x"].shape == (1, 100, 200)
    assert _hmc._program.cache_info().currsize == 1  # one program built
    assert np.median(seconds[1:]) * 5 < seconds[0], seconds
    # Flat after the first calls (a few mappings of Python's allocator may come and go).
    assert maps[-1] - maps[2] <= 16, maps
