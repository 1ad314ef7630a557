"""NUTS with a learned prior (prior='learn'): the truncated-normal population (loc, scale)
sampled with every weight and sigma, against the fast path's maximum marginal likelihood and a
scipy reference of it; diagnostics; the combinations it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps

import bayesmix
from bayesmix.priors import TruncatedNormal, learn

N = 600  # one compiled sampler (same shapes) for every run of this module
RUN = {"num_chains": 2, "num_warmup": 400, "num_samples": 400, "seed": 0, "progress": False}


def _refs():
    return bayesmix.sample_references((8, 8))


def _sim(rel_sd: float, seed: int = 1):
    """N frames whose weights come from TruncatedNormal(0.25, 0.1) (not the default prior),
    with sigma / ||A - B|| = rel_sd (each frame's own sd of x)."""
    a, b = _refs()
    x = TruncatedNormal(0.25, 0.1).sample(np.random.default_rng(5), N)
    return bayesmix.simulate(N, ref_a=a, ref_b=b, x=x, noise=rel_sd * np.linalg.norm(a - b),
                             seed=seed)  # fmt: skip


def _log_marginal(theta, xhat, s2):
    """sum_i log of int_0^1 N(x; xhat_i, s2_i) TN(x; loc, scale, 0, 1) dx (closed form)."""
    loc, scale = theta
    v = s2 + scale**2
    m = (xhat * scale**2 + loc * s2) / v
    sd = np.sqrt(s2 * scale**2 / v)

    def log_mass(lo, hi):
        return np.log(np.clip(sps.norm.cdf(hi) - sps.norm.cdf(lo), 1e-300, None))

    return np.sum(sps.norm.logpdf(xhat, loc, np.sqrt(v)) + log_mass(-m / sd, (1 - m) / sd)
                  - log_mass(-loc / scale, (1 - loc) / scale))  # fmt: skip


def _scipy_mml(stats, sigma):
    """(loc, scale) maximising the marginal likelihood at sigma, and their sds from the
    curvature (Laplace): independent of bayesmix's own learning code."""
    xhat = np.asarray(stats.xhat, np.float64)
    s2 = sigma**2 / np.asarray(stats.dd, np.float64)

    def f(t):
        return -_log_marginal(t, xhat, s2)

    th = optimize.minimize(f, [0.5, 0.2], bounds=[(1e-6, 1 - 1e-6), (1e-4, 5.0)],
                           method="L-BFGS-B").x  # fmt: skip
    h, e = np.zeros((2, 2)), 1e-4
    for i in range(2):
        for j in range(2):

            def g(di, dj, i=i, j=j):
                t = th.copy()
                t[i] += di
                t[j] += dj
                return f(t)

            h[i, j] = (g(e, e) - g(e, -e) - g(-e, e) + g(-e, -e)) / (4 * e * e)
    return th, np.sqrt(np.diag(np.linalg.inv(h)))


def _mcse(draws):
    """Monte Carlo error of the mean of draws (chain, draw)."""
    import arviz as az

    return float(np.asarray(az.mcse(np.asarray(draws))).item())


# The weak frames (non-centred form) run with make slow; the informative ones (centred) and
# test_per_frame_choice_on_mixed_frames (both forms in one run) cover the path by default.
@pytest.fixture(scope="module", params=[
    pytest.param(0.06, id="informative"), pytest.param(0.2, id="weak", marks=pytest.mark.slow)])
def learned_run(request):
    """Frames that pin x down to ~0.06 (well inside the population's scale 0.1: centred) and
    to ~0.2 (wider than it: non-centred); the fast path's learned fit and NUTS on the same."""
    sim = _sim(request.param)
    fit = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, prior="learn")
    idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, prior="learn", **RUN)
    return request.param, sim, fit, idata


def test_hyperparameters_agree_with_the_fast_path_and_scipy(learned_run):
    rel, sim, fit, idata = learned_run
    post = idata.posterior
    assert post["prior_loc"].dims == post["prior_scale"].dims == ("chain", "draw")
    assert post["prior_mean"].dims == ("chain", "draw")
    stats = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    ref, ref_sd = _scipy_mml(stats, fit.sigma)
    pop = fit.population
    assert pop.family == "truncnormal"
    for k, name in enumerate(("loc", "scale")):
        # The fast path's maximum is scipy's (same sigma); its sd the same curvature.
        assert abs(pop.params[name] - ref[k]) < 0.02 * ref_sd[k]
        assert pop.sd[name] == pytest.approx(ref_sd[k], rel=0.02)
        draws = post[f"prior_{name}"].values
        mean, sd, mcse = draws.mean(), draws.std(ddof=1), _mcse(draws)
        tol = 3.0 * np.sqrt(sd**2 + pop.sd[name] ** 2 + mcse**2)
        assert abs(mean - pop.params[name]) <= tol, (name, mean, pop.params[name], tol)
        if rel < 0.1:
            # The posterior's width is the marginal likelihood's curvature (hundreds of
            # frames: the hyperpriors barely matter). Not where the frames say little: there
            # the marginal likelihood is skewed along a ridge of (loc, scale) (loc's
            # posterior sd measured 0.028 in 4,000 draws against the curvature's 0.022).
            assert 0.8 < sd / pop.sd[name] < 1.25, (name, sd, pop.sd[name])
    if "mean" in pop.params:
        # The population's mean is well determined in both regimes.
        draws = post["prior_mean"].values
        sd = draws.std(ddof=1)
        tol = 3.0 * np.sqrt(sd**2 + pop.sd["mean"] ** 2 + _mcse(draws) ** 2)
        assert abs(draws.mean() - pop.params["mean"]) <= tol
        assert 0.8 < sd / pop.sd["mean"] < 1.25, (sd, pop.sd["mean"])
    # The population mean of x: the truncated normal's mean at each draw.
    loc, scale = post["prior_loc"].values, post["prior_scale"].values
    a, b = -loc / scale, (1 - loc) / scale
    np.testing.assert_allclose(post["prior_mean"].values,
                               sps.truncnorm.mean(a, b, loc=loc, scale=scale), rtol=1e-6)  # fmt: skip
    attrs = idata.attrs
    assert attrs["prior_learned"] == "truncnormal"
    assert attrs["prior_loc_prior"] == "uniform(0, 1)"
    assert attrs["prior_scale_prior"] == "half_normal(1)"
    assert attrs["prior_loc_map"] == pytest.approx(pop.params["loc"])
    # Centred where the frames pin x down well within the population's scale, else not.
    assert attrs["n_centred"] == (N if rel < 0.1 else 0)


def test_diagnostics_cover_the_population(learned_run):
    _, _, _, idata = learned_run
    diag = bayesmix.diagnose(idata)
    for name in ("prior_loc", "prior_scale", "prior_mean", "sigma"):
        assert name in diag.table.index
    assert not diag.failed, str(diag)
    assert diag.divergences == 0, str(diag)
    assert diag.table.loc[["prior_loc", "prior_scale"], "rhat"].max() < 1.05, str(diag)
    assert diag.table.loc[["prior_loc", "prior_scale"], "ess_bulk"].min() > 100, str(diag)


@pytest.mark.parametrize("learned_run", [0.06], indirect=True, ids=["informative"])
def test_same_seed_same_draws_and_sample_stats_agrees(learned_run):
    _, sim, _, idata = learned_run
    stats = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    again = bayesmix.sample_stats(stats, prior=learn("truncnormal"), **RUN)
    for name in ("x", "sigma", "prior_loc", "prior_scale"):
        np.testing.assert_array_equal(again.posterior[name].values, idata.posterior[name].values)


def test_per_frame_choice_on_mixed_frames():
    """Frames of very different information (their dd spread over 10^2.4): some centred, some
    not; the population still matches the fast path."""
    rng = np.random.default_rng(5)
    x = TruncatedNormal(0.25, 0.1).sample(rng, N)
    sigma, npx = 0.1, 64.0
    dd = (sigma / 0.07) ** 2 * 10 ** rng.uniform(-1.2, 1.2, N)
    stats = bayesmix.FrameStats(xhat=x + sigma / np.sqrt(dd) * rng.standard_normal(N),
                                rss=sigma**2 * rng.chisquare(npx - 1, N), dd=dd,
                                n=np.full(N, npx))  # fmt: skip
    fit = bayesmix.fit_map_stats(stats, prior="learn")
    idata = bayesmix.sample_stats(stats, prior="learn", **RUN)
    assert 0.2 * N < idata.attrs["n_centred"] < 0.8 * N
    post, pop = idata.posterior, fit.population
    for name in ("loc", "scale"):
        draws = post[f"prior_{name}"].values
        tol = 3.0 * np.sqrt(draws.var() + pop.sd[name] ** 2 + _mcse(draws) ** 2)
        assert abs(draws.mean() - pop.params[name]) <= tol
    diag = bayesmix.diagnose(idata)
    assert diag.divergences == 0 and not diag.failed, str(diag)


# The combinations NUTS with a learned prior does not sample: refused before any work.
_SIM = bayesmix.simulate(20, shape=(6, 6), noise=0.1, seed=0)
_THIRD = np.random.default_rng(3).uniform(0, 1, (6, 6))
_HEAD = r"NUTS with prior='learn' samples the population \(loc, scale\) of a truncated-normal"


@pytest.mark.parametrize(("kw", "more", "match"), [
    ({"prior": learn("beta")}, (), r"not with the 'beta' family: learn it with the fast path"),
    ({"prior": learn("dirichlet")}, (), r"not with the 'beta' family"),
    ({"prior": learn("point_mass")}, (), r"the 'point_mass' family: use the fast path's exact"),
    ({"prior": "learn"}, (_THIRD,), r"not with the 'dirichlet' family, 3 references"),
    ({"prior": "learn", "gain": True}, (), r"not with gain=True: give a fixed prior instead"),
    ({"prior": "learn", "noise": "per_frame"}, (), r"not with noise='per_frame': give a fixed"),
    ({"prior": "learn", "noise": "poisson"}, (), r"noise='poisson' \(a pixel-level likelihood\)"),
    ({"prior": "learn", "noise": "student_t"}, (), r"noise='student_t' \(a pixel-level"),
    ({"prior": "learn", "temporal": "random_walk"}, (), r"not with temporal='random_walk'"),
], ids=["beta", "dirichlet-2", "point-mass", "three-refs", "gain", "per-frame", "poisson",
        "student-t", "walk"])  # fmt: skip
def test_refused_before_any_work(kw, more, match, monkeypatch):
    from bayesmix import _nuts

    def no_work(*a, **k):
        raise AssertionError("work started before the check")

    monkeypatch.setattr(_nuts, "prepare", no_work)
    monkeypatch.setattr(_nuts, "_sample_stats", no_work)
    with pytest.raises(bayesmix.InputError, match=_HEAD) as info:
        bayesmix.sample(_SIM.frames, _SIM.ref_a, _SIM.ref_b, *more, **kw, **RUN)
    assert info.match(match)


def test_refused_on_statistics_too(monkeypatch):
    from bayesmix import _nuts

    monkeypatch.setattr(_nuts, "_sample_stats", lambda *a, **k: pytest.fail("work started"))
    stats = bayesmix.frame_stats(_SIM.frames, _SIM.ref_a, _SIM.ref_b)
    with pytest.raises(bayesmix.InputError, match=r"not with the 'beta' family"):
        bayesmix.sample_stats(stats, prior=learn("beta"), **RUN)
    with pytest.raises(bayesmix.InputError, match=r"not with noise='per_frame'"):
        bayesmix.sample_stats(stats, prior="learn", noise="per_frame", **RUN)
    with pytest.raises(bayesmix.InputError, match=r"not with temporal='random_walk'"):
        bayesmix.sample_stats(stats, prior="learn", temporal="random_walk", **RUN)
