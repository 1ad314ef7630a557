"""NUTS for the random walk along the frames (temporal='random_walk')."""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesmix
from bayesmix import TruncatedNormal, Uniform
from bayesmix._map import _fit
from bayesmix._model import make_model
from bayesmix._nuts import _sample_walk
from bayesmix.temporal import RandomWalk

RUN = {"progress": False, "chain_method": "vectorized"}


def _near_bound(n=30, seed=3):
    """Per-frame statistics of a walk pressing against x = 0 (several xhat below 0); the
    likelihood sd 0.05 at sigma = 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    truth = np.clip(0.12 - 0.006 * t + 0.01 * np.cumsum(rng.standard_normal(n)), 0.0, 1.0)
    xhat = truth + 0.05 * rng.standard_normal(n)
    stats = bayesmix.FrameStats(xhat=xhat, rss=np.full(n, 100.0), dd=np.full(n, 400.0),
                                n=np.full(n, 100, np.int64))  # fmt: skip
    return stats


def _reference(stats, prior, q, *, draws, seed=0):
    """The same truncated walk written the simple way: x on the interval through NumPyro's
    constraint (its logistic transform), the walk and the likelihood as one factor."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    lo, hi = prior.bounds
    mu0, prec = prior.gaussian_params()
    xhat, p = jnp.asarray(stats.xhat), jnp.asarray(stats.dd)  # sigma = 1

    def model():
        x = numpyro.sample(
            "x", dist.ImproperUniform(dist.constraints.interval(lo, hi), (), xhat.shape)
        )
        lp = -0.5 * prec * (x[0] - mu0) ** 2 - 0.5 * jnp.sum(jnp.diff(x) ** 2) / q**2
        numpyro.factor("lp", lp - 0.5 * jnp.sum(p * (x - xhat) ** 2))

    with jax.enable_x64(True):
        mcmc = MCMC(NUTS(model, target_accept_prob=0.95), num_warmup=1000, num_samples=draws,
                    num_chains=4, chain_method="vectorized", progress_bar=False)  # fmt: skip
        mcmc.run(jax.random.PRNGKey(seed))
        x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"], np.float64)
    return x


def _summaries(x):
    """Per frame: mean, 5% and 95% quantiles, and their Monte Carlo standard errors."""
    post = az.convert_to_dataset({"x": x})
    out = []
    for kind, stat in (("mean", None), (0.05, 0.05), (0.95, 0.95)):
        if stat is None:
            val = x.mean(axis=(0, 1))
            se = az.mcse(post, method="mean")["x"].values
        else:
            val = np.quantile(x.reshape(-1, x.shape[-1]), stat, axis=0)
            se = az.mcse(post, method="quantile", prob=stat)["x"].values
        out.append((kind, val, se))
    return out


@pytest.mark.slow  # long NUTS runs; the end-to-end walk test and the temporal CLI run by default
@pytest.mark.parametrize("prior", [TruncatedNormal(), Uniform()], ids=["truncnorm", "uniform"])
def test_noncentred_walk_matches_a_centred_reference_near_a_bound(prior):
    stats = _near_bound()
    assert np.sum(stats.xhat < 0) >= 5
    q = 0.02
    model = make_model(prior=prior, temporal=RandomWalk(q=q))
    fit = _fit(stats, model=model, sigma=1.0, sigma_method="marginal", max_iter=1000, tol=1e-8,
               frame=None, device=None)  # fmt: skip
    assert fit.sigma_fixed and fit.temporal.q_fixed
    idata = _sample_walk(
        fit, times=None, sequence_id=None, num_chains=4, num_warmup=500, num_samples=1500,
        seed=1, progress=False, method="vectorized", dtype="float32", target_accept=0.8,
        log_likelihood=False, offset=None, stats=stats,
    )  # fmt: skip
    post = idata.posterior
    assert np.all(post["sigma"].values == 1.0) and np.allclose(post["q"].values, q)
    assert int(idata.sample_stats["diverging"].values.sum()) == 0
    ours = post["x"].values
    assert ours.min() >= 0.0
    ref = _reference(stats, prior, q, draws=1500)
    for (kind, a, se_a), (_, b, se_b) in zip(_summaries(ours), _summaries(ref), strict=True):
        tol = 4.0 * np.sqrt(se_a**2 + se_b**2)
        bad = np.abs(a - b) > tol
        assert not bad.any(), (kind, np.flatnonzero(bad), a[bad], b[bad], tol[bad])


def _walk_frames(n=300, seed=1, q=0.01):
    """A simulated walk with a per-frame posterior sd near 0.05 and step q per frame."""
    rng = np.random.default_rng(seed)
    x = np.clip(0.5 + np.cumsum(q * rng.standard_normal(n)), 0.02, 0.98)
    sim = bayesmix.simulate(n, shape=(16, 16), noise=0.1, seed=0)
    a, b = sim.ref_a, sim.ref_b
    noise = 0.05 * np.linalg.norm(a - b) * rng.standard_normal((n, 16, 16))
    return x[:, None, None] * a + (1 - x[:, None, None]) * b + noise, a, b


@pytest.mark.slow
def test_nuts_matches_the_fast_path_on_300_frames():
    frames, a, b = _walk_frames()
    fast = bayesmix.fit_map(frames, a, b, temporal="random_walk")
    assert 0.03 < np.median(fast.temporal.sd_alone) < 0.07
    idata = bayesmix.sample(frames, a, b, temporal="random_walk", num_samples=1000, seed=0,
                            **RUN)  # fmt: skip
    diag = bayesmix.diagnose(idata)
    assert diag.divergences == 0
    assert diag.rhat_max < 1.02  # 1.01-1.015 at most over 300 frames, as without the walk
    assert "q" in diag.table.index
    assert diag.table.loc["q", "rhat"] < 1.01 and diag.table.loc["q", "ess_bulk"] > 1000
    x = idata.posterior["x"].values.reshape(-1, 300)
    sd = x.std(axis=0)
    lo, hi = np.quantile(x, [0.05, 0.95], axis=0)
    flo, fhi = fast.interval(0.9)
    for name, d in (("mean", np.abs(x.mean(axis=0) - fast.mean) / sd),
                    ("5%", np.abs(lo - flo) / sd), ("95%", np.abs(hi - fhi) / sd)):  # fmt: skip
        assert d.max() < 0.3, (name, d.max(), np.median(d))
    q = idata.posterior["q"].values
    assert abs(np.median(q) / fast.temporal.q - 1.0) < 0.2
    assert abs(np.std(q) / fast.temporal.q_sd - 1.0) < 0.3


def test_sample_with_times_and_sequences_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    frames, a, b = _walk_frames(n, seed=2, q=0.04)
    # Two sequences, shuffled input order, uneven times (the second in steps of 2).
    perm = rng.permutation(n)
    seq = np.where(np.arange(n) < 30, "left", "right")[perm]
    times = np.where(np.arange(n) < 30, np.arange(n), 2.0 * np.arange(n))[perm] * 0.5
    frames = frames[perm]
    idata = bayesmix.sample(frames, a, b, temporal="random_walk", times=times, sequence_id=seq,
                            num_chains=2, num_warmup=200, num_samples=200, **RUN)  # fmt: skip
    post = idata.posterior
    assert post["x"].dims == ("chain", "draw", "frame")
    assert post["q"].dims == ("chain", "draw") and post["sigma"].dims == ("chain", "draw")
    assert idata.log_likelihood["y"].shape == (2, 200, n)
    np.testing.assert_array_equal(idata.constant_data["time"].values, times)
    np.testing.assert_array_equal(idata.constant_data["sequence"].values, seq)
    assert idata.attrs["temporal"] == "random_walk"
    fast = bayesmix.fit_map(frames, a, b, temporal="random_walk", times=times, sequence_id=seq)
    # Input order kept: the posterior means follow the fast path's frame by frame.
    xm = post["x"].values.mean(axis=(0, 1))
    assert np.corrcoef(xm, fast.mean)[0, 1] > 0.95
    # q per unit of the caller's time, as the fast path reports it.
    assert 0.5 < np.median(post["q"].values) / fast.temporal.q < 2.0
    assert int(idata.sample_stats["diverging"].values.sum()) == 0
    diag = bayesmix.diagnose(idata)
    assert "q" in diag.table.index
    path = tmp_path / "walk.nc"
    bayesmix.write_idata(idata, str(path))
    back = bayesmix.read_idata(path)
    np.testing.assert_array_equal(back.constant_data["sequence"].values, seq)


@pytest.mark.slow  # test_sample_with_times_and_sequences_end_to_end runs by default
def test_sample_stats_walk_with_fixed_q():
    frames, a, b = _walk_frames(40, seed=4)
    stats = bayesmix.frame_stats(frames, a, b)
    idata = bayesmix.sample_stats(stats, temporal="random_walk:q=0.02", num_chains=2,
                                  num_warmup=150, num_samples=150, **RUN)  # fmt: skip
    assert np.allclose(idata.posterior["q"].values, 0.02)
    assert "q" not in bayesmix.diagnose(idata).table.index  # fixed: not a sampled variable
    assert idata.attrs["temporal"] == "random_walk:q=0.02"


def test_refusals():
    frames, a, b = _walk_frames(20, seed=5)
    with pytest.raises(ValueError, match="pixel-level likelihood"):
        bayesmix.sample(np.abs(frames), a, b, temporal="random_walk", noise="poisson", **RUN)
    with pytest.raises(ValueError, match="pixel-level likelihood"):
        bayesmix.sample(frames, a, b, temporal="random_walk", noise="student_t", **RUN)
    with pytest.raises(ValueError, match="one entry per frame"):
        bayesmix.sample(frames, a, b, temporal="random_walk", times=np.arange(19), **RUN)
    stats = bayesmix.frame_stats(frames, a, b)
    with pytest.raises(ValueError, match="one entry per frame"):
        bayesmix.sample_stats(stats, temporal="random_walk", sequence_id=np.zeros(21, int), **RUN)
    with pytest.raises(ValueError, match="temporal='random_walk' as well"):
        bayesmix.sample(frames, a, b, times=np.arange(20), **RUN)
    with pytest.raises(ValueError, match="not supported"):
        bayesmix.sample(frames, a, b, temporal="random_walk", gain=True, **RUN)
