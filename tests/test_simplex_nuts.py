"""NUTS with K >= 3 references: the joint posterior on the simplex against the fast path.

One small problem (K = 3, 30 frames of 8 x 8 pixels, weights from Dirichlet(1), distinct random
references, noise 0.1) is sampled once (2 chains x 300 draws after 200 warm-up) and shared.

Tolerances. The fast path's mean given sigma is exact up to its Gibbs Monte Carlo error
(``res.mc_se``, at most ~0.08 sd here, typically ~0.03 sd); NUTS' mean has Monte Carlo error
sd / sqrt(ESS) with a bulk ESS of 200-600 (~0.04-0.07 sd); plugging in sigma instead of
integrating it moves the mean by O(sd / sqrt(2 n)) with n = 30 x 64 pixels (~0.02 sd). So
``|diff| / sd`` is about |N(0, 0.07^2)|: median ~0.05, maximum over 90 values ~0.2. The test asks
median < 0.3 and max < 1.0 (a 6-fold and 5-fold margin), still far below a real bias: a wrong
prior, Jacobian or likelihood term moves frames near a face by O(1) sd.
"""

from __future__ import annotations

import numpy as np
import pytest

import bayesmix
from bayesmix._arviz import nuts_table
from bayesmix.priors import Dirichlet

NAMES = ("Fe", "Ni", "Co")


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    n, k = 30, 3
    refs = rng.uniform(0.0, 1.0, (k, 8, 8))
    x = rng.dirichlet(np.ones(k), n)
    frames = np.einsum("nk,khw->nhw", x, refs) + 0.1 * rng.standard_normal((n, 8, 8))
    res = bayesmix.fit_map(frames, *refs, ref_names=NAMES)
    idata = bayesmix.sample(frames, *refs, ref_names=NAMES, num_chains=2, num_warmup=200,
                            num_samples=300, progress=False, seed=1)  # fmt: skip
    return frames, refs, res, idata


def test_posterior_agrees_with_fast_path(problem):
    _, _, res, idata = problem
    post = idata.posterior["x"].transpose("chain", "draw", "frame", "reference")
    assert post.dims == ("chain", "draw", "frame", "reference")
    assert tuple(post.coords["reference"].values) == NAMES
    draws = post.values
    assert np.all(draws >= 0) and np.allclose(draws.sum(axis=-1), 1.0, atol=1e-5)
    mean = draws.mean(axis=(0, 1))
    sd = draws.std(axis=(0, 1), ddof=1)
    z = np.abs(mean - res.mean) / res.sd
    print(f"|diff|/sd: median {np.median(z):.3f}, max {z.max():.3f}")
    assert np.median(z) < 0.3, np.median(z)
    assert z.max() < 1.0, z.max()
    # The sds themselves: relative error ~1/sqrt(2 ESS) ~ 0.03.
    assert abs(np.median(sd / res.sd) - 1.0) < 0.1
    # sigma: its relative posterior sd is 1/sqrt(2 n) ~ 0.014.
    assert abs(float(idata.posterior["sigma"].mean()) / res.sigma - 1.0) < 0.05
    assert int(idata.sample_stats["diverging"].sum()) == 0


def test_pointwise_loglik_is_the_pixel_likelihood(problem):
    frames, refs, _, idata = problem
    from scipy.stats import norm

    ll = idata.log_likelihood["y"].values
    assert ll.shape == (2, 300, 30)
    x = idata.posterior["x"].transpose("chain", "draw", "frame", "reference").values[1, 7]
    sigma = float(idata.posterior["sigma"].values[1, 7])
    pred = np.einsum("nk,khw->nhw", x, refs)
    direct = norm.logpdf(frames, pred, sigma).sum(axis=(1, 2))
    np.testing.assert_allclose(ll[1, 7], direct, rtol=1e-9, atol=1e-6)


def test_table_and_diagnostics(problem):
    _, _, res, idata = problem
    assert idata.attrs["n_refs"] == 3
    assert idata.constant_data["x_map"].dims == ("frame", "reference")
    np.testing.assert_allclose(idata.constant_data["x_map"].values, res.x)
    df = nuts_table(idata)
    fast = res.to_dataframe()
    # The fast path's columns, in its order, then NUTS' per-reference diagnostics.
    assert list(df.columns[: fast.shape[1]]) == list(fast.columns)
    for r in NAMES:
        for c in ("rhat", "ess_bulk", "ess_tail"):
            assert f"{c}_{r}" in df
    np.testing.assert_array_equal(df["at_bound"].to_numpy(), res.at_bound)
    np.testing.assert_allclose(df["mean_Ni"], idata.posterior["x"].sel(reference="Ni")
                               .mean(("chain", "draw")).values)  # fmt: skip
    diag = bayesmix.diagnose(idata)
    assert diag.verdict in ("pass", "warn")
    assert len(diag.table) == 30 * 3 + 1
    assert "x[0, Fe]" in diag.table.index
    assert diag.rhat_max < 1.05


def test_dirichlet_of_wrong_length_is_refused():
    rng = np.random.default_rng(0)
    refs = rng.uniform(0.0, 1.0, (3, 4, 4))
    frames = np.broadcast_to(refs.mean(axis=0), (5, 4, 4))
    with pytest.raises(ValueError, match="2 concentrations but the fit has 3 references"):
        bayesmix.sample(frames, *refs, prior=Dirichlet([1.0, 2.0]), progress=False)


def test_report_shows_every_reference_and_its_chains(problem, tmp_path):
    frames, refs, _, idata = problem
    out = tmp_path / "report.html"
    bayesmix.report(idata, out, frames=frames, ref_a=refs[0], ref_b=refs[1], more_refs=refs[2:])
    text = out.read_text()
    assert "Trace and rank plots" in text and "Energy" in text
    for name in NAMES:
        assert name in text
