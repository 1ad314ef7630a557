"""The random walk along a sequence (fast path): exactness against dense linear algebra and
scipy, the must-show figures of the temporal issue, sequences, times, chunks and bad input.

Tolerances: the frames are simulated with a per-frame posterior sd ``s = sigma / ||A - B||``
(the Cramer-Rao bound of a frame alone) of 0.05; a smoothed random walk of step q has a
posterior sd of about sqrt(s q / 2) (the local-level model's steady state), ~0.011 here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.optimize
from scipy.stats import truncnorm

import bayesmix
from bayesmix import _temporal as T
from bayesmix._precision import x64
from bayesmix._stats import FrameStats
from bayesmix._truncnorm import tn_quantile
from bayesmix.priors import TruncatedNormal, Uniform
from bayesmix.temporal import RandomWalk, check_temporal, temporal_spec

S_FRAME = 0.05  # the per-frame posterior sd the stacks are made for


def _stack(x, *, seed=0, shape=(16, 16), sd=S_FRAME):
    a, b = bayesmix.sample_references(shape)
    noise = sd * float(np.linalg.norm(a - b))
    return bayesmix.simulate(len(x), ref_a=a, ref_b=b, x=x, noise=noise, seed=seed)


def _rmse(est, x):
    return float(np.sqrt(np.mean((np.asarray(est) - x) ** 2)))


def _dense(stats: FrameStats, prior, q, s2=1.0):
    """The walk's posterior precision H and linear term b, without the bounds."""
    n = stats.n_frames
    dd, xhat = np.asarray(stats.dd), np.asarray(stats.xhat)
    h = np.diag(dd / s2)
    b = dd * xhat / s2
    mu0, prec0 = prior.gaussian_params()
    h[0, 0] += prec0
    b[0] += prec0 * mu0
    w = 1.0 / q**2
    for t in range(1, n):
        h[t, t] += w
        h[t - 1, t - 1] += w
        h[t, t - 1] -= w
        h[t - 1, t] -= w
    return h, b


# Frames pressing on both bounds, and one without signal (dd = 0).
XHAT = np.array([0.5, 0.45, 0.3, 0.1, -0.05, -0.1, 0.02, 0.2, 0.6, 0.95, 1.1, 1.05])
DD = np.array([90.0, 120.0, 60.0, 0.0, 140.0, 80.0, 100.0, 70.0, 110.0, 95.0, 130.0, 85.0])
Q = 0.08


def _small(prior):
    st = FrameStats(XHAT, np.ones(12), DD, np.full(12, 100.0))
    walk = T._walk(st, T._order(12, None, None))
    return st, walk


@pytest.mark.parametrize("prior", [TruncatedNormal(0.55, 0.15, 0.0, 1.0), Uniform(0.0, 1.0)])
def test_smoother_is_the_dense_solution(prior):
    """Kalman + RTS equal the tridiagonal system solved densely (means, marginal variances);
    the filter's log marginal likelihood equals the Gaussian integral in closed form."""
    st, walk = _small(prior)
    h, b = _dense(st, prior, Q)
    with x64():
        start = T._start(prior)
        ms, vs, ll = T._smooth(walk, walk.dd, walk.xhat, Q * Q, start)
    np.testing.assert_allclose(ms[:12], np.linalg.solve(h, b), rtol=0, atol=1e-13)
    np.testing.assert_allclose(vs[:12], np.diag(np.linalg.inv(h)), rtol=1e-12)
    mu0, prec0 = prior.gaussian_params()
    if prec0 > 0:
        # x ~ N(mu0, K), K_ij = 1/prec0 + q^2 min(i, j); xhat_i | x ~ N(x_i, 1/dd_i) where dd > 0
        i = np.arange(12)
        k = 1.0 / prec0 + Q**2 * np.minimum(i[:, None], i[None, :])
        keep = DD > 0
        c = k[np.ix_(keep, keep)] + np.diag(1.0 / DD[keep])
        r = XHAT[keep] - mu0
        dense = (-0.5 * r @ np.linalg.solve(c, r) - 0.5 * np.linalg.slogdet(2 * np.pi * c)[1]
                 + np.sum(0.5 * np.log(2 * np.pi / DD[keep])))  # fmt: skip
        assert ll[:12].sum() == pytest.approx(dense, abs=1e-10)


@pytest.mark.parametrize("prior", [TruncatedNormal(0.55, 0.15, 0.0, 1.0), Uniform(0.0, 1.0)])
def test_bounded_map_matches_scipy(prior):
    """Projected Newton on the tridiagonal system gives scipy's bounded minimiser."""
    st, walk = _small(prior)
    q = 0.3  # loose enough for the data to press on both bounds
    h, b = _dense(st, prior, q)
    with x64():
        start = T._start(prior)
        ms, _, _ = T._smooth(walk, walk.dd, walk.xhat, q * q, start)
        x, _ = T._bounded_map(walk, walk.dd, q * q, start, 0.0, 1.0, ms)
    ref = scipy.optimize.minimize(
        lambda v: 0.5 * v @ h @ v - b @ v, np.full(12, 0.5), jac=lambda v: h @ v - b,
        bounds=[(0.0, 1.0)] * 12, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12},
    )  # fmt: skip
    np.testing.assert_allclose(x[:12], ref.x, atol=1e-7)
    assert np.any(x[:12] == 0.0) and np.any(x[:12] == 1.0)  # the bounds are active


def test_ep_marginals_match_an_exact_gibbs_sampler():
    """Expectation propagation's truncated marginals against a long Gibbs run on the same
    truncated Gaussian (each coordinate's conditional is a truncated normal, drawn by scipy).
    The Monte Carlo error of the reference sets the tolerance."""
    prior = Uniform(0.0, 1.0)
    st, walk = _small(prior)
    h, b = _dense(st, prior, Q)
    with x64():
        start = T._start(prior)
        mc, sc, mean, sd, _ = T._ep(walk, walk.dd, Q * Q, start, 0.0, 1.0)
        e05 = np.asarray(tn_quantile(0.05, mc[:12], sc[:12], 0.0, 1.0))
        e95 = np.asarray(tn_quantile(0.95, mc[:12], sc[:12], 0.0, 1.0))
    rng = np.random.default_rng(0)
    chains = 1000
    x = np.tile(np.clip(np.linalg.solve(h, b), 0.01, 0.99), (chains, 1))
    draws = []
    for sweep in range(400):
        for t in range(12):
            m = (b[t] - h[t] @ x.T + h[t, t] * x[:, t]) / h[t, t]
            s = 1.0 / math.sqrt(h[t, t])
            x[:, t] = truncnorm.rvs(-m / s, (1 - m) / s, loc=m, scale=s, random_state=rng)
        if sweep >= 100 and sweep % 3 == 0:
            draws.append(x.copy())
    d = np.concatenate(draws)
    ref_sd = d.std(axis=0)
    # ~100 near-independent draws per chain (lag-3 thinning of a fast-mixing chain): the MC sd
    # of the mean is ref_sd / sqrt(1000 * 100) ~ 0.003 ref_sd; allow 5 of them.
    mc_err = 5.0 / math.sqrt(chains * 100)
    np.testing.assert_array_less(np.abs(mean[:12] - d.mean(axis=0)) / ref_sd, mc_err + 0.005)
    np.testing.assert_allclose(sd[:12] / ref_sd, 1.0, atol=0.02)
    q05, q95 = np.quantile(d, [0.05, 0.95], axis=0)
    np.testing.assert_array_less(np.abs(e05 - q05) / ref_sd, 0.05)
    np.testing.assert_array_less(np.abs(e95 - q95) / ref_sd, 0.05)


@pytest.fixture(scope="module")
def walk3000():
    x = bayesmix.simulate_walk(3000, 0.005, start=0.5, bounds=(0.05, 0.95), seed=1)
    sim = _stack(x, seed=0)
    alone = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, temporal="random_walk")
    return x, alone, res


def test_random_walk_must_show(walk3000):
    """The issue's figures on 3,000 frames (per-frame sd 0.05, q = 0.005): smoothed RMSE at
    least 2x lower than frame by frame, 90% coverage 85-95%, q within 20% of the truth."""
    x, alone, res = walk3000
    assert np.median(alone.sd) == pytest.approx(S_FRAME, rel=0.1)
    ratio = _rmse(alone.mean, x) / _rmse(res.mean, x)
    assert ratio >= 2.0, ratio
    lo, hi = res.interval(0.9)
    cover = np.mean((lo <= x) & (x <= hi))
    assert 0.85 <= cover <= 0.95, cover
    assert res.temporal.q == pytest.approx(0.005, rel=0.2)
    # The learned q's own uncertainty is reported and covers the truth (2 sd).
    assert 0 < res.temporal.q_sd < 0.2 * res.temporal.q
    assert abs(res.temporal.q - 0.005) < 2.0 * res.temporal.q_sd
    # Each frame on its own is kept beside the smoothed estimate.
    np.testing.assert_allclose(res.temporal.mean_alone, alone.mean)
    assert res.sigma == pytest.approx(alone.sigma, rel=1e-3)
    # The prequential log terms add up to the log marginal likelihood.
    assert res.loglik.sum() == pytest.approx(res.temporal.log_evidence, rel=1e-10)


def test_independent_frames_cost_little():
    """Independent weights: q is learned large and the error stays within 5% of frame by
    frame (with x from the walk's stationary law, uniform, and from the default prior)."""
    rng = np.random.default_rng(5)
    for x in (rng.uniform(0.05, 0.95, 3000), TruncatedNormal(0.55, 0.15, 0, 1).sample(rng, 3000)):
        sim = _stack(x, seed=2)
        alone = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
        res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, temporal="random_walk")
        assert _rmse(res.mean, x) <= 1.05 * _rmse(alone.mean, x)
        assert res.temporal.q > 2.0 * S_FRAME  # steps wider than a frame's own error


def test_a_jump_is_followed_within_a_few_frames():
    """x jumps from 0.3 to 0.7 (8 per-frame sds): the smoothed estimate is within one
    per-frame sd of the truth from 6 frames after the jump on (the smoother, two-sided, also
    starts to rise 6 frames before it): a ramp of about 2 s / q frames, q as learned."""
    n, t0 = 1000, 500
    x = np.where(np.arange(n) < t0, 0.3, 0.7)
    res = bayesmix.fit_map(*_args(_stack(x, seed=3)), temporal="random_walk")
    err = np.abs(res.mean - x)
    assert np.all(err[t0 + 6 :] < S_FRAME)
    assert np.all(err[: t0 - 6] < S_FRAME)
    # Away from the jump the walk's error is well below a frame's own.
    assert np.sqrt(np.mean(err[: t0 - 20] ** 2)) < 0.5 * S_FRAME


def _args(sim):
    return sim.frames, sim.ref_a, sim.ref_b


def test_limits_of_q():
    """q -> 0: one weight for the whole sequence (the pooled posterior); q -> inf: each frame
    alone under a flat prior (after the first)."""
    x = bayesmix.simulate_walk(200, 0.01, seed=4)
    sim = _stack(x, seed=4)
    st = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    alone = bayesmix.fit_map_stats(st)
    sigma = alone.sigma
    tiny = bayesmix.fit_map_stats(st, sigma=sigma, temporal=RandomWalk(q=1e-9))
    prec = np.sum(st.dd) / sigma**2 + 1 / 0.15**2
    pooled = (np.sum(st.dd * st.xhat) / sigma**2 + 0.55 / 0.15**2) / prec
    np.testing.assert_allclose(tiny.mean, pooled, atol=1e-6)
    np.testing.assert_allclose(tiny.sd, 1 / math.sqrt(prec), rtol=1e-4)
    huge = bayesmix.fit_map_stats(st, sigma=sigma, temporal=RandomWalk(q=1e4))
    flat = bayesmix.fit_map_stats(st, sigma=sigma, prior=Uniform(0.0, 1.0))
    np.testing.assert_allclose(huge.mean[1:], flat.mean[1:], atol=1e-6)
    np.testing.assert_allclose(huge.sd[1:], flat.sd[1:], rtol=1e-4)


def test_uneven_times_equal_missing_frames():
    """Frames at uneven times are the dense walk with the frames between them left out (a
    frame without signal, dd = 0, carries no information): the same posterior."""
    x = bayesmix.simulate_walk(300, 0.01, seed=6)
    sim = _stack(x, seed=6)
    st = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    keep = np.sort(np.random.default_rng(0).choice(300, 180, replace=False))
    gone = np.setdiff1d(np.arange(300), keep)
    # A frame with (almost) no signal: dd 1e-12 of a frame's carries no information.
    holes = st._replace(dd=np.where(np.isin(np.arange(300), gone), 1e-12 * st.dd, st.dd))
    kw = {"sigma": 0.3, "temporal": RandomWalk(q=0.01)}
    dense = bayesmix.fit_map_stats(holes, **kw)
    sub = FrameStats(*(np.asarray(v)[keep] for v in st))
    uneven = bayesmix.fit_map_stats(sub, times=keep * 2.5, **kw | {"temporal": RandomWalk(
        q=0.01 / math.sqrt(2.5))})  # the same walk per frame index, times in units of 2.5
    np.testing.assert_allclose(uneven.mean, dense.mean[keep], atol=1e-8)
    np.testing.assert_allclose(uneven.sd, dense.sd[keep], rtol=1e-7)
    np.testing.assert_allclose(uneven.x, dense.x[keep], atol=1e-8)


def test_sequences_are_independent_runs():
    """Two sequences fitted together (labels in any order) equal each fitted alone."""
    xa = bayesmix.simulate_walk(150, 0.01, start=0.3, seed=7)
    xb = bayesmix.simulate_walk(100, 0.01, start=0.8, seed=8)
    sa, sb = _stack(xa, seed=7), _stack(xb, seed=8)
    st_a = bayesmix.frame_stats(*_args(sa))
    st_b = bayesmix.frame_stats(sb.frames, sa.ref_a, sa.ref_b)
    both = FrameStats(*(np.concatenate([u, v]) for u, v in zip(st_a, st_b, strict=True)))
    kw = {"sigma": 0.25, "temporal": RandomWalk(q=0.01)}
    one = bayesmix.fit_map_stats(st_a, **kw)
    two = bayesmix.fit_map_stats(st_b, **kw)
    labels = np.array(["a"] * 150 + ["b"] * 100)
    perm = np.random.default_rng(0).permutation(250)
    # Shuffled frames: the times put each sequence back in order.
    together = bayesmix.fit_map_stats(FrameStats(*(np.asarray(v)[perm] for v in both)),
                                      sequence_id=labels[perm], times=perm * 1.0, **kw)  # fmt: skip
    mean = np.empty(250)
    mean[perm] = together.mean
    # EP stops at a change of 1e-7 sd per iteration: agreement to ~1e-9.
    np.testing.assert_allclose(mean, np.concatenate([one.mean, two.mean]), atol=1e-8)
    assert together.temporal.n_sequences == 2
    assert set(together.to_dataframe()["sequence"]) == {"a", "b"}


def test_chunks_carry_the_state_and_compile_once(monkeypatch):
    """The filter and smoother run over chunks, carrying their state: the same numbers as one
    chunk, and longer stacks reuse the compiled chunk functions."""
    x = bayesmix.simulate_walk(1500, 0.01, seed=9)
    st = bayesmix.frame_stats(*_args(_stack(x, seed=9)))
    kw = {"temporal": "random_walk"}
    whole = bayesmix.fit_map_stats(st, **kw)
    monkeypatch.setattr(T, "CHUNK", 256)
    chunked = bayesmix.fit_map_stats(st, **kw)
    np.testing.assert_allclose(chunked.mean, whole.mean, atol=1e-10)
    np.testing.assert_allclose(chunked.sd, whole.sd, rtol=1e-9)
    assert chunked.temporal.q == pytest.approx(whole.temporal.q, rel=1e-9)
    before = dict(T.TRACES)
    longer = FrameStats(*(np.concatenate([v, v[:700]]) for v in st))
    bayesmix.fit_map_stats(longer, **kw)
    assert dict(T.TRACES) == before


def test_bounds_pressed_by_the_data():
    """A sequence sitting near x = 0 (a nearly pure phase, 0.2 per-frame sds from the bound)
    and then rising: the joint MAP touches the bound exactly, the intervals stay within
    [0, 1], and they cover the truth about as often as stated (a fixed truth by a bound is
    covered a little less by equal-tailed intervals; the marginals themselves are checked
    against an exact sampler above)."""
    x = np.concatenate([np.full(300, 0.01), np.linspace(0.01, 0.31, 300)])
    res = bayesmix.fit_map(*_args(_stack(x, seed=11)), temporal="random_walk")
    assert res.x.min() == 0.0 and res.at_bound.any()
    lo, hi = res.interval(0.9)
    assert np.all(lo >= 0.0) and np.all(hi <= 1.0) and np.all(lo < hi)
    assert 0.85 <= np.mean((lo <= x) & (x <= hi)) <= 0.99


def test_model_combinations():
    """A background, a variance map and Student-t pixels combine with the walk; the models
    whose likelihood is not Gaussian in x are refused."""
    x = bayesmix.simulate_walk(400, 0.01, seed=12)
    sim = _stack(x, seed=12)
    offset = sim.frames + 0.3
    res = bayesmix.fit_map(offset, sim.ref_a, sim.ref_b, background="constant",
                           temporal="random_walk")  # fmt: skip
    alone = res.temporal.mean_alone
    assert _rmse(res.mean, x) < 0.5 * _rmse(alone, x)
    var = np.full(sim.ref_a.shape, sim.sigma**2)
    res_v = bayesmix.fit_map(*_args(sim), variance=var, sigma=1.0, temporal="random_walk")
    assert _rmse(res_v.mean, x) < 0.5 * _rmse(res_v.temporal.mean_alone, x)
    res_t = bayesmix.fit_map(*_args(sim), noise="student_t", temporal="random_walk")
    assert _rmse(res_t.mean, x) < 0.5 * _rmse(res_t.temporal.mean_alone, x)
    # The learned noise scale is reported, not the scale the intervals use. Measured: 0.20565
    # learned with the walk, 0.20566 with each frame alone; the intervals' scale is 0.2084.
    t_alone = bayesmix.fit_map(*_args(sim), noise="student_t")
    assert res_t.noise_params["noise_scale"] == pytest.approx(
        t_alone.noise_params["noise_scale"], rel=0.002)
    assert res_t.sigma == pytest.approx(t_alone.sigma, rel=0.002)
    for kw in ({"gain": True}, {"noise": "per_frame"},
               {"prior": bayesmix.Beta(2, 2)}):  # fmt: skip
        with pytest.raises(ValueError, match="needs each frame's likelihood Gaussian"):
            bayesmix.fit_map(*_args(sim), temporal="random_walk", **kw)
    with pytest.raises(ValueError, match="needs each frame's likelihood Gaussian"):
        bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, sim.ref_a * 0.5,
                         temporal="random_walk")  # fmt: skip


def test_units_do_not_change_x():
    """x and q are dimensionless: the same data in other units give the same answers."""
    x = bayesmix.simulate_walk(300, 0.01, seed=13)
    sim = _stack(x, seed=13)
    ref = bayesmix.fit_map(*_args(sim), temporal="random_walk")
    f = np.float64(1e-20)
    scaled = bayesmix.fit_map(sim.frames.astype(np.float64) * f, sim.ref_a * f, sim.ref_b * f,
                              temporal="random_walk")  # fmt: skip
    np.testing.assert_allclose(scaled.mean, ref.mean, atol=1e-6)
    assert scaled.temporal.q == pytest.approx(ref.temporal.q, rel=1e-4)
    assert scaled.sigma == pytest.approx(ref.sigma * 1e-20, rel=1e-4)


def test_spec_round_trip():
    assert temporal_spec(check_temporal("random_walk:q=0.02")) == "random_walk:q=0.02"
    assert check_temporal(None) == check_temporal("independent")
    assert "random walk" in bayesmix.make_model(temporal="random_walk").name


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"temporal": "walk"}, "temporal must be one of"),
        ({"temporal": "random_walk:q=-1"}, "q must be finite and > 0"),
        ({"temporal": "random_walk:step=1"}, "takes q as key=value"),
        ({"temporal": RandomWalk(q=0.01), "times": np.arange(5)}, "one entry per frame"),
        ({"temporal": "random_walk", "times": np.full(40, np.nan)}, "NaN or Inf"),
        ({"temporal": "random_walk", "times": np.zeros(40)}, "share the time"),
        ({"temporal": "random_walk", "times": np.array(["a"] * 40)}, "1-D array of numbers"),
        ({"temporal": "random_walk", "sequence_id": np.zeros(3)}, "1-D array of labels"),
        ({"temporal": "random_walk", "sequence_id": np.zeros(3, int)}, "one entry per frame"),
        ({"times": np.arange(40)}, "pass temporal='random_walk' as well"),
        ({"temporal": "random_walk", "sigma_method": "joint"}, "not available with temporal"),
    ],
)
def test_bad_input(kw, match):
    sim = bayesmix.simulate(40, shape=(8, 8), seed=0)
    with pytest.raises(ValueError, match=match):
        bayesmix.fit_map(*_args(sim), **kw)


def test_random_walk_q_validation():
    with pytest.raises(ValueError, match="q must be a number or None"):
        RandomWalk(q="0.1")
    with pytest.raises(ValueError, match="q must be finite and > 0"):
        RandomWalk(q=math.inf)


def test_q_for_unrelated_and_for_constant_frames():
    """Frames with no relation at all (x drawn from {0.05, 0.95} each frame): q is learned as
    the sd of the steps between them, 0.9 / sqrt(2) = 0.64 (half the steps 0, half +-0.9),
    inside its search range (the bounds keep the evidence finite as q grows). A constant x:
    q runs to the bottom of its range (1e-6 of the span), and the fit says so."""
    rng = np.random.default_rng(14)
    sim = _stack(rng.choice([0.05, 0.95], 500), seed=14, sd=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = bayesmix.fit_map(*_args(sim), temporal="random_walk")
    assert res.temporal.q == pytest.approx(0.9 / math.sqrt(2.0), rel=0.15)
    assert res.temporal.q_limit == ""
    assert not any("look independent" in str(w.message) for w in caught)
    const = bayesmix.fit_map(*_args(_stack(np.full(500, 0.4), seed=3)), temporal="random_walk")
    assert const.temporal.q_limit == "lower"
    assert const.temporal.q == pytest.approx(1e-6, rel=1e-6)


def test_compare_prefers_the_walk_on_a_walk_and_not_on_independent_frames():
    """compare scores a walk by its one-step-ahead densities, the same scale as independent
    frames' leave-one-out: it prefers the walk by many dse on a walk, and not on independent
    frames."""
    x = bayesmix.simulate_walk(800, 0.005, start=0.5, bounds=(0.05, 0.95), seed=15)
    sim = _stack(x, seed=15)
    fits = [bayesmix.fit_map(*_args(sim), temporal=t) for t in ("independent", "random_walk")]
    table = bayesmix.compare(*fits, names=["alone", "walk"])
    assert table.index[0] == "walk"
    assert -table.loc["alone", "elpd_diff"] > 5 * table.loc["alone", "dse"]
    assert table.loc["walk", "method"].startswith("one-step-ahead")
    rng = np.random.default_rng(16)
    sim = _stack(rng.uniform(0.1, 0.9, 800), seed=16)
    fits = [bayesmix.fit_map(*_args(sim), temporal=t) for t in ("independent", "random_walk")]
    table = bayesmix.compare(*fits, names=["alone", "walk"])
    # Independent frames: no clear preference for the walk (alone within 2 dse of the best).
    assert table.loc["alone", "elpd_diff"] > -2 * table.loc["alone", "dse"] - 1.0


def test_stxm_rows_as_sequences(stxm):
    """Real data: each row of the STXM map is a chain of neighbouring pixels. With the
    background-only model (no gain: the walk needs a likelihood Gaussian in x) the walk is
    preferred by hundreds of dse and halves the posterior sd. Measured: q = 0.0389 +/- 0.0006
    per pixel, sd median 0.0976 alone and 0.0491 along the rows, elpd difference 30,671 with
    dse 106."""
    od = -np.log(stxm["transmitted"] / stxm["i0"][:, None, None])
    fe3, fe2 = stxm["ref_fe3_oxidized"], stxm["ref_fe2_reduced"]
    _, h, w = od.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    kw = {"spectral_axis": 0, "background": "linear"}
    alone = bayesmix.fit_map(od, fe3, fe2, **kw)
    walk = bayesmix.fit_map(od, fe3, fe2, temporal="random_walk", sequence_id=rows, times=cols,
                            **kw)  # fmt: skip
    assert walk.map_shape == (h, w) and walk.temporal.n_sequences == h
    assert walk.temporal.q == pytest.approx(0.0389, rel=0.05)
    assert np.median(walk.sd) == pytest.approx(0.0491, rel=0.05)
    assert np.median(alone.sd) == pytest.approx(0.0976, rel=0.05)
    table = bayesmix.compare(alone, walk, names=["alone", "walk"])
    assert table.index[0] == "walk"
    assert -table.loc["alone", "elpd_diff"] > 100 * table.loc["alone", "dse"]
    assert walk.to_xarray()["mean"].dims == ("y", "x")
