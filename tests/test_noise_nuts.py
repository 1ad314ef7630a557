"""NUTS for the noise models: each on data simulated from it, against the fast path and the truth.

Weights are drawn from the default prior (truncated normal 0.55, 0.15 on [0, 1]), so a calibrated
posterior's 90% intervals cover the truth for 90% of frames, independently across frames: the
count of covered frames is Binomial(N, 0.9), sd sqrt(0.09 / N) in coverage. At N = 300 that is
0.017, so the 80-97% band is -5.8 / +4.1 sd (false alarm < 1e-4); the slow tests at N = 3000
(sd 0.0055) use 88-92%, +-3.7 sd. The Monte Carlo error of the interval end points (1000 draws)
only adds a little spread to that.

Agreement with the fast path is measured per frame in units of the NUTS posterior sd: the fast
path is exact given its plug-in noise parameters, so the two differ by the plug-in's effect (a
relative order 1/sqrt(pixels) in the scale) and the Monte Carlo error of a 600-draw mean (about
0.05-0.1 sd); the median over frames must stay below 0.3 sd.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

import bayesmix
from bayesmix.noise import PoissonGaussian, StudentT

P = 64
RUN = {"num_chains": 2, "num_warmup": 300, "num_samples": 300, "progress": False}


def _refs(level: float = 1.0, n_pix: int = P):
    t = np.linspace(0.0, 1.0, n_pix)
    a = level * (1.0 + 0.8 * np.sin(6.0 * t) ** 2)
    b = level * (1.0 + 0.8 * np.cos(5.0 * t + 0.3) ** 2)
    return a, b


def _x(rng: np.random.Generator, n: int) -> np.ndarray:
    return scipy.stats.truncnorm.rvs(-0.55 / 0.15, 0.45 / 0.15, loc=0.55, scale=0.15, size=n,
                                     random_state=rng)  # fmt: skip


def _summary(idata, name="x"):
    post = idata.posterior[name]
    n = post.sizes["frame"]
    draws = post.values.reshape(-1, n)
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    return draws.mean(axis=0), draws.std(axis=0, ddof=1), lo, hi


def _check_against(idata, fast, x, *, cov_band=(0.80, 0.97), tol=0.3):
    """Agreement with the fast path (median over frames, in posterior sd) and 90% coverage."""
    mean, sd, lo, hi = _summary(idata)
    diff = np.median(np.abs(mean - fast.mean) / sd)
    cov = float(np.mean((lo <= x) & (x <= hi)))
    print(f"median |NUTS - fast| = {diff:.3f} sd, 90% coverage {cov:.3f}")
    assert diff < tol, diff
    assert cov_band[0] <= cov <= cov_band[1], cov
    assert int(idata.sample_stats["diverging"].sum()) == 0
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "frame") and np.all(np.isfinite(ll.values))
    return diff, cov


def _variance_data(n, seed):
    rng = np.random.default_rng(seed)
    a, b = _refs()
    x = _x(rng, n)
    var = (0.05 * rng.uniform(0.3, 3.0, P)) ** 2  # a 10x spread of pixel variances
    frames = x[:, None] * a + (1 - x[:, None]) * b + np.sqrt(var) * rng.normal(size=(n, P))
    return frames, a, b, x, var


def _per_frame_data(n, seed):
    rng = np.random.default_rng(seed)
    a, b = _refs()
    x = _x(rng, n)
    sigma = np.exp(np.log(0.05) + 0.3 * rng.normal(size=n))  # log sigma ~ N(log 0.05, 0.3^2)
    frames = x[:, None] * a + (1 - x[:, None]) * b + sigma[:, None] * rng.normal(size=(n, P))
    return frames, a, b, x, sigma


def _poisson_data(n, seed, level, n_pix=P):
    rng = np.random.default_rng(seed)
    a, b = _refs(level, n_pix)
    x = _x(rng, n)
    frames = rng.poisson(x[:, None] * a + (1 - x[:, None]) * b).astype(np.float64)
    return frames, a, b, x


def _t_data(n, seed, df=4.0, scale=0.05):
    rng = np.random.default_rng(seed)
    a, b = _refs()
    x = _x(rng, n)
    noise = scale * rng.standard_t(df, size=(n, P))
    return x[:, None] * a + (1 - x[:, None]) * b + noise, a, b, x


# -- Gaussian noise with a variance map ------------------------------------------------------


def test_variance_map_nuts_agrees_with_fast_path():
    frames, a, b, x, var = _variance_data(300, 0)
    fast = bayesmix.fit_map(frames, a, b, variance=var)
    idata = bayesmix.sample(frames, a, b, variance=var, **RUN)
    _check_against(idata, fast, x)
    # sigma scales the map: its truth is 1, known to about sqrt(1 / (2 n)) relatively.
    sig = idata.posterior["sigma"].values.ravel()
    assert abs(sig.mean() - 1.0) < 4.0 * sig.std() + 4.0 / np.sqrt(2 * 300 * P)
    assert abs(sig.mean() - fast.sigma) < 2.0 * sig.std()
    # The pointwise likelihood is that of the original pixels: the whitening's Jacobian
    # (1/2 sum log w) is in it, so it matches fit_map's Gaussian log-likelihood at sigma, x.
    ll = idata.log_likelihood["y"].values[0, 0]
    xs = idata.posterior["x"].values[0, 0]
    s = float(idata.posterior["sigma"].values[0, 0])
    r = frames - (xs[:, None] * a + (1 - xs[:, None]) * b)
    direct = scipy.stats.norm.logpdf(r, scale=s * np.sqrt(var)).sum(axis=1)
    np.testing.assert_allclose(ll, direct, rtol=1e-9, atol=1e-6)


@pytest.mark.slow
def test_variance_map_nuts_coverage_many_frames():
    frames, a, b, x, var = _variance_data(3000, 10)
    fast = bayesmix.fit_map(frames, a, b, variance=var)
    idata = bayesmix.sample(frames, a, b, variance=var, num_chains=2, num_warmup=500,
                            num_samples=500, progress=False)  # fmt: skip
    _check_against(idata, fast, x, cov_band=(0.88, 0.92))


# -- a noise scale per frame --------------------------------------------------------------------


@pytest.mark.slow  # coverage; test_sample_stats_per_frame runs by default
def test_per_frame_nuts_agrees_with_fast_path_and_covers():
    frames, a, b, x, sigma = _per_frame_data(300, 1)
    fast = bayesmix.fit_map(frames, a, b, noise="per_frame")
    idata = bayesmix.sample(frames, a, b, noise="per_frame", **RUN)
    _check_against(idata, fast, x)
    post = idata.posterior
    assert post["sigma_frame"].dims == ("chain", "draw", "frame")
    assert post["log_sigma_mu"].dims == ("chain", "draw")
    assert post["log_sigma_tau"].dims == ("chain", "draw")
    assert idata.attrs["noise"] == "per_frame"
    # Each frame's sigma: agrees with the fast path's integrated posterior, and covers.
    m, sd, lo, hi = _summary(idata, "sigma_frame")
    assert np.median(np.abs(m - fast.sigma_frame) / sd) < 0.3
    cov = np.mean((lo <= sigma) & (sigma <= hi))
    print(f"per-frame sigma: 90% coverage {cov:.3f}")
    assert 0.80 <= cov <= 0.97, cov
    # The population: mu = log 0.05, tau = 0.3 (with N = 300, sd about 0.02 and 0.013).
    mu = post["log_sigma_mu"].values.ravel()
    tau = post["log_sigma_tau"].values.ravel()
    assert abs(mu.mean() - np.log(0.05)) < 4 * mu.std()
    assert abs(tau.mean() - 0.3) < 4 * tau.std()
    assert abs(mu.mean() - fast.noise_params["log_sigma_mu"]) < mu.std()


@pytest.mark.slow
def test_per_frame_nuts_coverage_many_frames():
    frames, a, b, x, sigma = _per_frame_data(3000, 11)
    fast = bayesmix.fit_map(frames, a, b, noise="per_frame")
    idata = bayesmix.sample(frames, a, b, noise="per_frame", num_chains=2, num_warmup=500,
                            num_samples=500, progress=False)  # fmt: skip
    _check_against(idata, fast, x, cov_band=(0.88, 0.92))
    _, _, lo, hi = _summary(idata, "sigma_frame")
    cov = np.mean((lo <= sigma) & (sigma <= hi))
    print(f"per-frame sigma: 90% coverage {cov:.3f}")
    assert 0.88 <= cov <= 0.92, cov


def test_sample_stats_per_frame():
    frames, a, b, _, _ = _per_frame_data(100, 6)
    st = bayesmix.frame_stats(frames, a, b)
    idata = bayesmix.sample_stats(st, noise="per_frame", num_chains=1, num_warmup=100,
                                  num_samples=100, progress=False)  # fmt: skip
    assert idata.posterior["sigma_frame"].sizes["frame"] == 100


# -- bad inputs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    frames, a, b, _ = _poisson_data(20, 7, level=5.0)
    return frames, a, b


def test_bad_noise_name(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="noise must be one of"):
        bayesmix.sample(frames, a, b, noise="cauchy")


def test_bad_student_df(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="StudentT df must be finite and > 0"):
        bayesmix.sample(frames, a, b, noise=StudentT(df=-1.0))


def test_bad_poisson_gain(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="PoissonGaussian gain must be finite and > 0"):
        bayesmix.sample(frames, a, b, noise=PoissonGaussian(gain=0.0, read_sd=1.0))


def test_variance_with_poisson_refused(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="both set each pixel's variance"):
        bayesmix.sample(frames, a, b, noise="poisson", variance=np.ones(P))


def test_bad_variance_shape(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="variance must have the frame shape"):
        bayesmix.sample(frames, a, b, variance=np.ones(P + 1))


def test_bad_variance_values(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="must be > 0 at every pixel"):
        bayesmix.sample(frames, a, b, variance=-np.ones(P))


def test_pixel_level_size_guard():
    a, b = _refs()
    big = np.broadcast_to(a, (40_000, P))  # 2.56e6 values, no memory: refused before any work
    with pytest.raises(ValueError, match=r"exceed the limit of 2,000,000.*fit_map.*subset"):
        bayesmix.sample(big, a, b, noise="student_t")


def test_pixel_level_three_references_refused(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="two references only"):
        bayesmix.sample(frames, a, b, 0.5 * (a + b) + 0.3 * np.sin(np.arange(P)),
                        noise="poisson")  # fmt: skip


def test_pixel_level_gain_refused(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="does not support gain=True"):
        bayesmix.sample(frames, a, b, noise="student_t", gain=True)


def test_negative_counts_refused(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="takes counts"):
        bayesmix.sample(frames - 10.0, a, b, noise="poisson")


def test_per_frame_with_gain_refused(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="noise='per_frame' is supported for two references"):
        bayesmix.sample(frames, a, b, noise="per_frame", gain=True)


def test_sample_stats_refuses_pixel_models(small):
    frames, a, b = small
    st = bayesmix.frame_stats(frames, a, b)
    with pytest.raises(ValueError, match="pixel-level likelihood"):
        bayesmix.sample_stats(st, noise="student_t")


def test_bad_run_option_checked_before_work(small):
    frames, a, b = small
    with pytest.raises(ValueError, match="dtype must be one of"):
        bayesmix.sample(frames, a, b, noise="poisson", dtype="float16")


@pytest.mark.slow  # a wide population; test_sample_stats_per_frame runs by default
def test_per_frame_auto_centring_mixes_a_wide_population(monkeypatch):
    # tau = 1 with 64 pixels per frame: each frame's data pin log sigma_i (sd ~0.09) far better
    # than the population does, where the non-centred form mixes slowly (measured ESS of tau
    # ~20 in 600 draws, R-hat 1.08); 'auto' samples those frames centred (ESS ~800).
    import arviz as az

    import bayesmix._nuts as nuts

    rng = np.random.default_rng(8)
    a, b = _refs()
    n = 300
    x = _x(rng, n)
    sigma = np.exp(np.log(0.05) + 1.0 * rng.normal(size=n))
    frames = x[:, None] * a + (1 - x[:, None]) * b + sigma[:, None] * rng.normal(size=(n, P))
    fast = bayesmix.fit_map(frames, a, b, noise="per_frame")
    monkeypatch.setattr(nuts, "PER_FRAME_CENTRING", "auto")  # the default; explicit here
    idata = bayesmix.sample(frames, a, b, noise="per_frame", **RUN)
    _check_against(idata, fast, x)
    tau = idata.posterior["log_sigma_tau"].values
    assert az.ess(tau) > 300
    assert abs(tau.mean() - 1.0) < 4 * tau.std()
