"""Noise models on the fast path: each on data simulated from it, outliers, compare, bad inputs.

Weights are drawn from the default prior (truncated normal 0.55, 0.15 on [0, 1]), so the exact
posterior's 90% intervals cover the truth for 90% of frames; over N frames the coverage has a
binomial sd of sqrt(0.09 / N) (0.0047 at N = 4000: the 88-92% band is +-4.2 sd). Estimation
tolerances come from the Cramer-Rao bound of each frame, sigma_i / ||A - B||_W.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.stats

import bayesmix
from bayesmix.noise import PerFrame, PoissonGaussian, StudentT, check_noise, parse_noise

N = 4000
P = 64


def _refs(rng: np.random.Generator, n_pix: int = P, level: float = 1.0):
    t = np.linspace(0.0, 1.0, n_pix)
    a = level * (1.0 + 0.8 * np.sin(6.0 * t) ** 2)
    b = level * (1.0 + 0.8 * np.cos(5.0 * t + 0.3) ** 2)
    return a, b


def _x(rng: np.random.Generator, n: int = N) -> np.ndarray:
    return scipy.stats.truncnorm.rvs(-0.55 / 0.15, 0.45 / 0.15, loc=0.55, scale=0.15, size=n,
                                     random_state=rng)  # fmt: skip


def _coverage(res, x, prob=0.9) -> np.ndarray:
    lo, hi = res.interval(prob)
    return (lo <= x) & (x <= hi)


def _crlb(sd_pix: np.ndarray, a, b) -> np.ndarray:
    """Per-frame Cramer-Rao bound on x: 1 / sqrt(sum_p (a - b)^2 / var_p)."""
    var = np.broadcast_to(np.asarray(sd_pix, float) ** 2, (len(np.atleast_2d(sd_pix)), len(a)))
    return 1.0 / np.sqrt(np.sum((a - b) ** 2 / var, axis=1))


def test_variance_map_calibrated_and_at_the_bound():
    rng = np.random.default_rng(0)
    a, b = _refs(rng)
    x = _x(rng)
    var = (0.05 * rng.uniform(0.3, 3.0, P)) ** 2  # a 10x spread of pixel variances
    frames = x[:, None] * a + (1 - x[:, None]) * b + np.sqrt(var) * rng.normal(size=(N, P))
    res = bayesmix.fit_map(frames, a, b, variance=var, sigma=1.0)
    cov = _coverage(res, x).mean()
    assert 0.88 <= cov <= 0.92, cov
    crlb = _crlb(np.sqrt(var)[None], a, b)[0]
    rmse = np.sqrt(np.mean((res.mean - x) ** 2))
    # The exact posterior mean with the true prior beats the CRLB; an unweighted fit does not.
    assert rmse <= crlb, (rmse, crlb)
    plain = bayesmix.fit_map(frames, a, b)
    assert np.sqrt(np.mean((plain.mean - x) ** 2)) > 1.1 * rmse
    # Learned sigma scales the map: the truth is 1 (sd of sigma^2's estimate ~ sqrt(2 / (N P))).
    learned = bayesmix.fit_map(frames, a, b, variance=var)
    assert abs(learned.sigma - 1.0) < 5 * np.sqrt(0.5 / (N * (P - 1)))
    # compare: the weighted model explains the frames better than one sigma.
    assert bayesmix.compare(plain, learned, names=["one sigma", "map"]).index[0] == "map"


def test_variance_per_frame_equals_shared_map_when_equal():
    rng = np.random.default_rng(1)
    a, b = _refs(rng)
    x = _x(rng, 200)
    var = rng.uniform(0.5, 2.0, P) * 0.01
    frames = x[:, None] * a + (1 - x[:, None]) * b + np.sqrt(var) * rng.normal(size=(200, P))
    one = bayesmix.fit_map(frames, a, b, variance=var)
    per = bayesmix.fit_map(frames, a, b, variance=np.broadcast_to(var, frames.shape).copy())
    np.testing.assert_allclose(per.mean, one.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per.loglik, one.loglik, rtol=1e-12)


def test_per_frame_sigma_spread_10x_calibrated_on_the_noisiest_half():
    rng = np.random.default_rng(2)
    a, b = _refs(rng)
    x = _x(rng)
    sig = np.exp(rng.uniform(np.log(0.02), np.log(0.2), N))  # spread over 10x
    frames = x[:, None] * a + (1 - x[:, None]) * b + sig[:, None] * rng.normal(size=(N, P))
    res = bayesmix.fit_map(frames, a, b, noise="per_frame")
    gauss = bayesmix.fit_map(frames, a, b)
    cov, cov_g = _coverage(res, x), _coverage(gauss, x)
    noisy = sig > np.median(sig)
    assert 0.87 <= cov.mean() <= 0.93 and 0.87 <= cov[noisy].mean() <= 0.93, (cov.mean(),
                                                                               cov[noisy].mean())
    # One shared sigma is too narrow where the noise is high (measured: ~0.75 there).
    assert cov_g[noisy].mean() < 0.85
    # Each frame's noise scale: within a few of its own posterior sd (n = 64 pixels).
    z = (res.sigma_frame - sig) / res.sigma_frame_sd
    assert np.sqrt(np.mean(z**2)) < 1.3
    crlb = _crlb(sig[:, None], a, b)
    assert np.sqrt(np.mean(((res.mean - x) / crlb) ** 2)) < 1.05
    # The population: log sigma uniform on [log .02, log .2]: mean -2.76, sd 0.665.
    mu, tau = res.noise_params["log_sigma_mu"], res.noise_params["log_sigma_tau"]
    assert abs(mu - 0.5 * np.log(0.004)) < 0.05 and abs(tau - np.log(10) / np.sqrt(12)) < 0.05
    assert bayesmix.compare(gauss, res).index[0] == "per_frame"


def test_per_frame_posterior_equals_two_dimensional_quadrature():
    """One frame of 8 pixels (sigma poorly known): mean, sd and quantiles of x against scipy's
    quadrature of the joint density of (x, log sigma) with the learned population."""
    rng = np.random.default_rng(3)
    a, b = _refs(rng, 8)
    x = _x(rng, 300)
    sig = np.exp(rng.normal(np.log(0.3), 0.5, 300))
    frames = x[:, None] * a + (1 - x[:, None]) * b + sig[:, None] * rng.normal(size=(300, 8))
    res = bayesmix.fit_map(frames, a, b, noise="per_frame")
    mu, tau = res.noise_params["log_sigma_mu"], res.noise_params["log_sigma_tau"]
    st = res.stats
    i = 7

    def joint(s, xv):
        sse = st.rss[i] + st.dd[i] * (xv - st.xhat[i]) ** 2
        return np.exp(-st.n[i] * s - 0.5 * sse * np.exp(-2 * s)
                      - 0.5 * ((s - mu) / tau) ** 2 + prior_log(xv) + shift)  # fmt: skip

    def prior_log(xv):
        return -0.5 * ((xv - 0.55) / 0.15) ** 2

    s0 = np.log(np.sqrt(st.rss[i] / (st.n[i] - 1)))
    shift = st.n[i] * s0 + 0.5 * (st.n[i] - 1)
    lo, hi = s0 - 4, s0 + 4
    z = scipy.integrate.dblquad(joint, 0, 1, lo, hi, epsabs=0, epsrel=1e-10)[0]
    m1 = scipy.integrate.dblquad(lambda s, xv: xv * joint(s, xv), 0, 1, lo, hi, epsrel=1e-10)[0]
    m2 = scipy.integrate.dblquad(lambda s, xv: xv**2 * joint(s, xv), 0, 1, lo, hi,
                                 epsrel=1e-10)[0]  # fmt: skip
    mean, sd = m1 / z, np.sqrt(m2 / z - (m1 / z) ** 2)
    assert abs(res.mean[i] - mean) < 1e-6 and abs(res.sd[i] - sd) < 1e-6
    q05 = res.quantiles([0.05])[i, 0]
    cdf = scipy.integrate.dblquad(joint, 0, q05, lo, hi, epsrel=1e-10)[0] / z
    assert abs(cdf - 0.05) < 1e-6


def test_gaussian_evidence_equals_quadrature():
    """MapResult.loglik: log of the frame's likelihood integrated over x's prior (scipy quad)."""
    rng = np.random.default_rng(4)
    a, b = _refs(rng, 16)
    x = _x(rng, 50)
    frames = x[:, None] * a + (1 - x[:, None]) * b + 0.2 * rng.normal(size=(50, 16))
    res = bayesmix.fit_map(frames, a, b)
    s = res.sigma
    norm = scipy.stats.norm.cdf(0.45 / 0.15) - scipy.stats.norm.cdf(-0.55 / 0.15)
    for i in (0, 17):
        y = frames[i]

        def lik(xv, y=y, ll=res.loglik[i]):
            mu = xv * a + (1 - xv) * b
            return np.exp(np.sum(scipy.stats.norm.logpdf(y, mu, s)) - ll) * (
                scipy.stats.norm.pdf(xv, 0.55, 0.15) / norm)

        val = scipy.integrate.quad(lik, 0, 1, epsabs=0, epsrel=1e-11, points=[x[i]])[0]
        assert abs(val - 1.0) < 1e-8


def test_poisson_counts_calibrated_and_learned_gain_read_noise():
    rng = np.random.default_rng(5)
    t = np.linspace(0.0, 1.0, P)
    # A few counts per pixel (0.5 to 12.5, mean ~6): the means span a wide range, which is
    # what separates gain from read noise.
    a, b = 0.5 + 12.0 * np.sin(6.0 * t) ** 2, 0.5 + 12.0 * np.cos(5.0 * t + 0.3) ** 2
    x = _x(rng)
    lam = x[:, None] * a + (1 - x[:, None]) * b
    counts = rng.poisson(lam).astype(np.float64)
    res = bayesmix.fit_map(counts, a, b, noise="poisson")
    gauss = bayesmix.fit_map(counts, a, b)
    cov = _coverage(res, x).mean()
    assert 0.88 <= cov <= 0.92, cov
    crlb = _crlb(np.sqrt(lam), a, b)
    assert np.sqrt(np.mean(((res.mean - x) / crlb) ** 2)) < 1.05
    assert res.sigma == 1.0 and res.noise_params["noise_passes"] <= 8
    assert bayesmix.compare(gauss, res).index[0] == "poisson"
    # A detector: 2.5 units per photon and read noise of 2 units, both learned.
    dn = 2.5 * counts + 2.0 * rng.normal(size=counts.shape)
    pg = bayesmix.fit_map(dn, 2.5 * a, 2.5 * b, noise="poisson_gaussian")
    assert abs(pg.noise_params["noise_gain"] / 2.5 - 1) < 0.03
    assert abs(pg.noise_params["noise_read_sd"] / 2.0 - 1) < 0.08
    assert 0.88 <= _coverage(pg, x).mean() <= 0.92
    # x is dimensionless: the same detector in other units gives the same weights.
    scaled = bayesmix.fit_map(dn * 1e-20, 2.5e-20 * a, 2.5e-20 * b, noise="poisson_gaussian")
    # (equal up to where the re-weighting stops: 1% of a posterior sd)
    assert np.all(np.abs(scaled.mean - pg.mean) <= 0.01 * pg.sd)
    ratio = scaled.noise_params["noise_gain"] / pg.noise_params["noise_gain"]
    assert abs(ratio / 1e-20 - 1) < 1e-3


def test_student_t_pixels_calibrated_df_learned():
    rng = np.random.default_rng(6)
    a, b = _refs(rng)
    x = _x(rng)
    frames = x[:, None] * a + (1 - x[:, None]) * b + 0.05 * rng.standard_t(4, size=(N, P))
    res = bayesmix.fit_map(frames, a, b, noise="student_t")
    assert 0.88 <= _coverage(res, x).mean() <= 0.92
    assert abs(np.log(res.noise_params["noise_df"] / 4.0)) < 0.2
    gauss = bayesmix.fit_map(frames, a, b)
    assert bayesmix.compare(gauss, res).index[0] == "student_t"
    fixed = bayesmix.fit_map(frames, a, b, noise=StudentT(df=4))
    assert fixed.noise_params["noise_df"] == 4.0


def test_hot_pixels_do_not_drag_x():
    """1% of pixels hot: Student-t within 1.3x of the clean-data RMSE; the Gaussian model's
    degradation measured in the same data (6x here)."""
    rng = np.random.default_rng(7)
    a, b = _refs(rng, 256)
    x = _x(rng)
    clean = x[:, None] * a + (1 - x[:, None]) * b + 0.05 * rng.normal(size=(N, 256))
    hot = clean.copy()
    where = rng.uniform(size=hot.shape) < 0.01
    hot[where] += rng.uniform(1.0, 5.0, where.sum())
    base = bayesmix.fit_map(clean, a, b)
    rmse0 = np.sqrt(np.mean((base.mean - x) ** 2))
    t = bayesmix.fit_map(hot, a, b, noise="student_t")
    g = bayesmix.fit_map(hot, a, b)
    rmse_t = np.sqrt(np.mean((t.mean - x) ** 2))
    rmse_g = np.sqrt(np.mean((g.mean - x) ** 2))
    assert rmse_t <= 1.3 * rmse0, (rmse_t, rmse0)
    assert rmse_g > 3.0 * rmse0, (rmse_g, rmse0)
    assert 0.87 <= _coverage(t, x).mean() <= 0.93
    assert bayesmix.compare(g, t).index[0] == "student_t"


def test_compare_prefers_gaussian_on_gaussian_frames():
    rng = np.random.default_rng(8)
    a, b = _refs(rng)
    x = _x(rng, 2000)
    frames = x[:, None] * a + (1 - x[:, None]) * b + 0.05 * rng.normal(size=(2000, P))
    fits = [bayesmix.fit_map(frames, a, b, noise=nz) for nz in ("per_frame", "student_t",
                                                                 "gaussian")]  # fmt: skip
    table = bayesmix.compare(*fits)
    assert table.index[0] == "gaussian"
    assert list(table.columns) == ["elpd", "se", "elpd_diff", "dse", "weight", "n_frames",
                                   "method"]  # fmt: skip
    # The simpler true model wins by a little (the others nest it): no large differences.
    assert table["elpd_diff"].min() > -50


def test_noise_models_combine_with_background_and_three_references():
    rng = np.random.default_rng(9)
    a, b = _refs(rng)
    c = np.linspace(0.5, 1.5, P) ** 2
    w = rng.dirichlet([2, 2, 2], size=1500)
    mean = w @ np.stack([a, b, c]) + 0.3 + 0.2 * np.linspace(-1, 1, P)
    frames = mean + 0.05 * rng.standard_t(3, size=mean.shape)
    res = bayesmix.fit_map(frames, a, b, c, background="linear", noise="student_t")
    gauss = bayesmix.fit_map(frames, a, b, c, background="linear")
    err_t = np.sqrt(np.mean((res.mean - w) ** 2))
    err_g = np.sqrt(np.mean((gauss.mean - w) ** 2))
    assert err_t < 0.9 * err_g, (err_t, err_g)
    assert res.mean.shape == (1500, 3) and res.loglik is None


def test_results_record_noise_and_read_back(tmp_path):
    rng = np.random.default_rng(10)
    a, b = _refs(rng)
    x = _x(rng, 100)
    sig = np.exp(rng.normal(np.log(0.05), 0.5, 100))
    frames = x[:, None] * a + (1 - x[:, None]) * b + sig[:, None] * rng.normal(size=(100, P))
    res = bayesmix.fit_map(frames, a, b, noise="per_frame")
    df = res.to_dataframe()
    assert {"sigma_frame", "sigma_frame_sd", "loglik"} <= set(df.columns)
    assert df.attrs["noise"] == "per_frame" and "log_sigma_tau" in df.attrs
    path = bayesmix.write_results(res, tmp_path / "r.csv")
    back = bayesmix.read_results(path)
    np.testing.assert_allclose(back["sigma_frame"], res.sigma_frame, rtol=1e-9)
    assert "per_frame" in res.summary()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise": "laplace"}, "noise must be one of"),
        ({"noise": 3}, "noise must be one of"),
        ({"variance": np.ones(5)}, "variance must have the frame shape"),
        ({"variance": -np.ones(P)}, "variance must be > 0"),
        ({"variance": np.full(P, np.nan)}, "variance must be > 0"),
        ({"variance": np.full(P, np.inf)}, "variance is \\+inf at every pixel"),
        ({"variance": np.array(["a"] * P)}, "variance must hold real numbers"),
        ({"variance": np.ones(P), "noise": "poisson"}, "give one"),
        ({"noise": "per_frame", "sigma": 0.1}, "learns a noise scale per frame"),
        ({"noise": "per_frame", "prior": bayesmix.Beta(2, 2)}, "truncated-normal or uniform"),
        ({"noise": "per_frame", "gain": True}, "without gain"),
    ],
)
def test_bad_noise_inputs(kwargs, match):
    rng = np.random.default_rng(11)
    a, b = _refs(rng)
    frames = 0.5 * (a + b) + 0.01 * rng.normal(size=(20, P))
    with pytest.raises(ValueError, match=match):
        bayesmix.fit_map(frames, a, b, **kwargs)


def test_bad_noise_inputs_elsewhere():
    rng = np.random.default_rng(12)
    a, b = _refs(rng)
    frames = 0.5 * (a + b) + 0.01 * rng.normal(size=(20, P))
    with pytest.raises(ValueError, match="gain must be finite and > 0"):
        PoissonGaussian(gain=-1.0)
    with pytest.raises(ValueError, match="read_sd must be finite and >= 0"):
        PoissonGaussian(read_sd=float("nan"))
    with pytest.raises(ValueError, match="df must be finite and > 0"):
        StudentT(df=0)
    with pytest.raises(ValueError, match="takes df as key=value"):
        parse_noise("student_t:nu=3")
    with pytest.raises(ValueError, match="must be a number"):
        parse_noise("student_t:df=many")
    with pytest.raises(ValueError, match="noise must be one of"):
        parse_noise("cauchy")
    with pytest.raises(ValueError, match="supported for two references"):
        bayesmix.fit_map(frames, a, b, a * b, noise="per_frame")
    st = bayesmix.frame_stats(frames, a, b)
    with pytest.raises(ValueError, match="needs the frames, not their statistics"):
        bayesmix.fit_map_stats(st, noise="student_t")
    with pytest.raises(ValueError, match="reads the frames several times"):
        bayesmix.fit_map(iter([frames[:10], frames[10:]]), a, b, noise="poisson")
    per = bayesmix.fit_map(frames, a, b, noise="student_t", sigma=0.01)
    with pytest.raises(ValueError, match="at least two fits"):
        bayesmix.compare(per)
    with pytest.raises(ValueError, match="different numbers of frames"):
        bayesmix.compare(per, bayesmix.fit_map(frames[:10], a, b))
    with pytest.raises(ValueError, match="differ in background"):
        bayesmix.compare(per, bayesmix.fit_map(frames, a, b, background="constant"))
    with pytest.raises(ValueError, match="no per-frame marginal likelihood"):
        gained = bayesmix.fit_map(frames, a, b, gain=True)
        bayesmix.compare(gained, gained)
    assert check_noise(None) == check_noise("gaussian")
    assert isinstance(check_noise(PerFrame()), PerFrame)
    for spec in ("gaussian", "per_frame", "poisson", "student_t:df=4",
                 "poisson_gaussian:gain=2,read_sd=1.5"):  # fmt: skip
        from bayesmix.noise import noise_spec

        assert noise_spec(parse_noise(spec)) == spec


def test_units_do_not_change_x_for_any_noise_model():
    rng = np.random.default_rng(13)
    a, b = _refs(rng)
    x = _x(rng, 300)
    sig = np.exp(rng.normal(np.log(0.05), 0.4, 300))
    frames = x[:, None] * a + (1 - x[:, None]) * b + sig[:, None] * rng.standard_t(5, (300, P))
    for noise in ("per_frame", "student_t"):
        ref = bayesmix.fit_map(frames, a, b, noise=noise)
        for scale in (1e-25, 1e25):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = bayesmix.fit_map(frames * scale, a * scale, b * scale, noise=noise)
            np.testing.assert_allclose(got.mean, ref.mean, atol=1e-8, err_msg=noise)
            np.testing.assert_allclose(got.sd, ref.sd, rtol=1e-6, err_msg=noise)
    var = sig.mean() ** 2 * np.ones(P)
    ref = bayesmix.fit_map(frames, a, b, variance=var)
    got = bayesmix.fit_map(frames * 1e-20, a * 1e-20, b * 1e-20, variance=var * 1e-40)
    np.testing.assert_allclose(got.mean, ref.mean, atol=1e-9)


def test_per_frame_core_compiles_once_per_bucket():
    """New frames of a similar count (same padded bucket) and new numbers reuse the compiled
    per-frame core (bayesmix._perframe.TRACES unchanged)."""
    from bayesmix._perframe import TRACES

    rng = np.random.default_rng(14)
    a, b = _refs(rng)
    for k, n in enumerate((900, 930, 960)):
        x = _x(rng, n)
        sig = np.exp(rng.normal(np.log(0.05), 0.3, n))
        frames = x[:, None] * a + (1 - x[:, None]) * b + sig[:, None] * rng.normal(size=(n, P))
        prior = bayesmix.TruncatedNormal(0.5 + 0.01 * k, 0.2, 0.0, 1.0)
        bayesmix.fit_map(frames, a, b, noise="per_frame", prior=prior)
        if k == 0:
            before = TRACES["per_frame"]
    assert TRACES["per_frame"] == before
