"""K >= 3 references: Dirichlet prior, exact simplex MAP, Gibbs summaries, results per reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import bayesmix
from bayesmix._precision import x64
from bayesmix._simplex import TRACES, fit_simplex, simplex_mode
from bayesmix._stats import SimplexStats
from bayesmix.priors import Beta, Dirichlet, TruncatedNormal, Uniform, check_prior


def _refs(k: int, shape=(8, 8), seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, 1.0, shape) for _ in range(k)]


def _simulate(k, n, noise, *, shape=(8, 8), alpha=1.0, seed=1):
    refs = _refs(k, shape, seed)
    rng = np.random.default_rng(seed + 100)
    x = rng.dirichlet(np.full(k, alpha), n)
    r = np.stack(refs).reshape(k, -1)
    frames = (x @ r).reshape(n, *shape) + rng.normal(0.0, noise, (n, *shape))
    return frames, refs, x


def test_dirichlet_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    for alpha in ([1.0, 1.0, 1.0], [0.5, 2.0, 3.0], [4.0, 0.7, 1.0, 2.5]):
        x = rng.dirichlet(np.ones(len(alpha)), 5)
        with x64():
            got = np.asarray(Dirichlet(alpha).log_prob(x))
        np.testing.assert_allclose(got, scipy.stats.dirichlet(alpha).logpdf(x.T), rtol=1e-12)
        with x64():
            from_logs = np.asarray(Dirichlet(alpha).log_prob_log(np.log(x)))
        np.testing.assert_allclose(from_logs, got, rtol=1e-12)
    with x64():
        assert float(Dirichlet(1.0).expand(3).log_prob(np.array([0.5, 0.6, -0.1]))) == -np.inf


def test_two_reference_dirichlet_is_beta():
    assert check_prior(Dirichlet([2.0, 3.0]), 2) == Beta(2.0, 3.0)
    frames, (a, b), _ = _simulate(2, 200, 0.3)
    r1 = bayesmix.fit_map(frames, a, b, prior=Dirichlet([2.0, 3.0]))
    r2 = bayesmix.fit_map(frames, a, b, prior=Beta(2.0, 3.0))
    np.testing.assert_array_equal(r1.mean, r2.mean)
    np.testing.assert_array_equal(r1.weights, np.stack([r2.x, 1 - r2.x], axis=1))


def _brute_force_qp(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """min (x - w)^T H (x - w) on the simplex by enumerating supports with numpy's lstsq: an
    implementation independent of the library's (KKT by elimination of the last weight)."""
    k = len(w)
    best, best_f = None, np.inf
    chol = np.linalg.cholesky(h).T
    for r in range(1, k + 1):
        for support in itertools.combinations(range(k), r):
            s = list(support)
            # x_s = e_last + D t with sum x_s = 1; least squares in t.
            last = s[-1]
            base = np.zeros(k)
            base[last] = 1.0
            d = np.zeros((k, r - 1))
            for j, i in enumerate(s[:-1]):
                d[i, j], d[last, j] = 1.0, -1.0
            t = np.linalg.lstsq(chol @ d, chol @ (w - base), rcond=None)[0] if r > 1 else []
            x = base + (d @ t if r > 1 else 0.0)
            if np.all(x >= -1e-12):
                f = (x - w) @ h @ (x - w)
                if f < best_f:
                    best, best_f = x, f
    return best


@pytest.mark.parametrize("k", [3, 4, 5])
def test_map_equals_brute_force_enumeration(k):
    rng = np.random.default_rng(k)
    n = 300
    m = np.triu(rng.normal(size=(k, k))) + 2.0 * np.eye(k)
    w = rng.dirichlet(np.ones(k), n) + rng.normal(0, 0.4, (n, k))  # many frames off the simplex
    chol = np.broadcast_to(m, (n, k, k))
    with x64():
        x, on_face = simplex_mode(w, chol, np.ones(k), 0.1, newton=False)
    x = np.asarray(x)
    ref = np.stack([_brute_force_qp(w[i], m.T @ m) for i in range(n)])
    np.testing.assert_allclose(x, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=1e-12)
    assert np.array_equal(np.asarray(on_face), np.any(ref <= 1e-12, axis=1))
    assert 0.2 < np.mean(on_face) < 0.99  # the test exercises faces and the interior


def test_map_with_alpha_above_one_matches_scipy():
    from scipy.optimize import minimize

    k, s2 = 3, 0.05
    rng = np.random.default_rng(3)
    m = np.triu(rng.normal(size=(k, k))) + 2.0 * np.eye(k)
    h = m.T @ m
    alpha = np.array([3.0, 1.0, 1.5])
    w = rng.dirichlet(np.ones(k), 40) + rng.normal(0, 0.3, (40, k))
    with x64():
        x, _ = simplex_mode(w, np.broadcast_to(m, (40, k, k)), alpha, s2, newton=True)
    x = np.asarray(x)
    for i in range(40):

        def f(v, i=i):
            return 0.5 * (v - w[i]) @ h @ (v - w[i]) / s2 - np.sum(
                (alpha - 1) * np.log(np.maximum(v, 1e-300))
            )

        best = min(
            (minimize(f, x0, method="SLSQP", bounds=[(1e-12, 1)] * k,
                      constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
                      options={"ftol": 1e-15, "maxiter": 1000})
             for x0 in (np.full(k, 1 / k), x[i])),
            key=lambda r: r.fun,
        )  # fmt: skip
        assert f(x[i]) <= best.fun + 1e-9
        np.testing.assert_allclose(x[i], best.x, atol=1e-5)


def test_two_references_through_the_simplex_code_give_todays_numbers():
    """K = 2 on the face-enumeration MAP equals the closed-form truncated MAP (flat prior) to
    1e-12, on the same basis statistics."""
    frames, (a, b), _ = _simulate(2, 300, 0.4)
    basis = bayesmix.frame_stats(frames, a, b, background="constant")
    res = bayesmix.fit_map_stats(basis, background="constant", prior=Uniform())
    with x64():
        x, _ = simplex_mode(basis.w, basis.chol, np.ones(2), res.sigma**2, newton=False)
    np.testing.assert_allclose(np.asarray(x)[:, 0], res.x, atol=1e-12, rtol=0)


# K = 4 is the same path as K = 3 (the default run's case) with one more weight.
@pytest.mark.parametrize("k", [3, pytest.param(4, marks=pytest.mark.slow)])
def test_intervals_are_calibrated_on_data_from_the_prior(k):
    """90% intervals per reference cover 88-92% over 3,000 frames (binomial sd 0.55%)."""
    frames, refs, x = _simulate(k, 3000, 0.25, seed=10 + k)
    res = bayesmix.fit_map(frames, *refs)
    assert res.x.shape == res.mean.shape == res.sd.shape == (3000, k)
    lo, hi = res.interval(0.9)
    cover = np.mean((lo <= x) & (x <= hi), axis=0)
    assert np.all((cover > 0.88) & (cover < 0.92)), cover
    # Monte Carlo error of the means is small against the posterior sd: about 1/sqrt(ESS),
    # 0.05 for 400 nearly independent draws.
    assert np.median(res.mc_se / res.sd) < 0.08
    # The noise is learned: REML is unbiased, sd sigma/sqrt(2 dof).
    dof = 3000 * (64 - k)
    assert abs(res.sigma / 0.25 - 1) < 4 / np.sqrt(2 * dof)
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, atol=1e-12)


def test_background_combines_with_three_references():
    frames, refs, x = _simulate(3, 1500, 0.2, shape=(12, 12), seed=4)
    rng = np.random.default_rng(5)
    offsets = rng.normal(0, 2.0, 1500)
    frames = frames + offsets[:, None, None]
    res = bayesmix.fit_map(frames, *refs, background="constant")
    lo, hi = res.interval(0.9)
    cover = np.mean((lo <= x) & (x <= hi))
    assert 0.87 < cover < 0.93  # 4,500 weights: binomial sd 0.45%
    # The offsets (sd 2) are recovered: each to about sigma / sqrt(n) = 0.017 plus what the
    # weights' uncertainty moves it, far below their spread.
    assert res.background.shape == (1500, 1)
    assert np.corrcoef(res.background[:, 0], offsets)[0, 1] > 0.99


def test_same_seed_same_numbers_and_no_recompile():
    frames, refs, _ = _simulate(3, 200, 0.3)
    r1 = bayesmix.fit_map(frames, *refs, seed=3)
    before = TRACES["summary"]
    r2 = bayesmix.fit_map(frames[::-1].copy(), *refs, seed=3)
    r3 = bayesmix.fit_map(frames, *refs, seed=3)
    assert TRACES["summary"] == before  # same shapes: no new trace
    np.testing.assert_array_equal(r1.mean, r3.mean)
    np.testing.assert_array_equal(r1.interval(0.8)[0], r3.interval(0.8)[0])
    assert not np.array_equal(r1.mean, r2.mean)


def test_alpha_below_one_mode_is_the_flat_mode_and_the_mean_moves_toward_faces():
    frames, refs, _ = _simulate(3, 300, 0.4, alpha=0.5)
    flat = bayesmix.fit_map(frames, *refs)
    sparse = bayesmix.fit_map(frames, *refs, prior=Dirichlet(0.5), sigma=flat.sigma)
    np.testing.assert_allclose(sparse.x, flat.x, atol=1e-12)
    # Mass is pulled toward the faces: the smallest weight's mean shrinks.
    assert np.mean(sparse.mean.min(axis=1)) < np.mean(flat.mean.min(axis=1))


def test_results_have_one_column_per_reference():
    frames, refs, _ = _simulate(3, 50, 0.3)
    res = bayesmix.fit_map(frames, *refs, ref_names=("fe2", "fe3", "oxide"))
    df = res.to_dataframe()
    for r in ("fe2", "fe3", "oxide"):
        for var in ("x_map", "mean", "sd", "q05", "q95", "mc_se"):
            assert f"{var}_{r}" in df.columns
    ds = res.to_xarray()
    assert ds["mean"].dims == ("frame", "reference")
    assert list(ds["reference"].values) == ["fe2", "fe3", "oxide"]
    assert res.quantiles([0.05, 0.5, 0.95]).shape == (50, 3, 3)
    assert "3 references" in res.summary()


def test_simplex_stats_from_the_pass_match_a_least_squares_fit():
    frames, refs, _ = _simulate(3, 20, 0.3)
    st = bayesmix.frame_stats(frames, *refs)
    design = np.stack(refs).reshape(3, -1).T
    coef, rss, *_ = np.linalg.lstsq(design, frames.reshape(20, -1).T, rcond=None)
    np.testing.assert_allclose(st.w, coef.T, atol=1e-6)
    np.testing.assert_allclose(st.rss, rss, rtol=1e-5)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", st.chol, st.chol)[0],
                               design.T @ design, rtol=1e-5)  # fmt: skip
    red = SimplexStats(w=st.w, chol=st.chol, rss=st.rss, n=st.n)
    assert bayesmix.fit_map_stats(st).mean.shape == (20, 3)
    with x64():
        fit = fit_simplex(red.w, red.chol, np.ones(3), 0.09, draws=200, seed=0)
    assert fit.mean.shape == (20, 3)


@pytest.mark.slow
def test_the_cpu_and_jax_samplers_agree_within_monte_carlo_error():
    """The numba kernel and the vectorised JAX chain (the GPU path) run the same chain with
    different random streams: their means differ by their Monte Carlo errors only."""
    rng = np.random.default_rng(8)
    k, n = 3, 200
    m = np.triu(rng.normal(size=(k, k))) + 2.0 * np.eye(k)
    w = rng.dirichlet(np.ones(k), n) + rng.normal(0, 0.15, (n, k))
    chol = np.broadcast_to(m, (n, k, k)).copy()
    for alpha in (np.ones(k), np.array([0.6, 1.0, 2.0])):
        with x64():
            a = fit_simplex(w, chol, alpha, 0.04, draws=600, seed=1, sampler="numba")
            b = fit_simplex(w, chol, alpha, 0.04, draws=600, seed=1, sampler="jax")
        z = (a.mean - b.mean) / np.sqrt(a.mc_se**2 + b.mc_se**2 + 1e-30)
        # |z| is about |N(0, 1)|: its rms is 1 (batch-means errors are themselves noisy).
        assert np.sqrt(np.mean(z[a.sampled] ** 2)) < 1.3, alpha
        rel = np.abs(a.sd / b.sd - 1)[a.sampled]
        # sd's relative Monte Carlo error is about 1/sqrt(2 ESS) ~ 4% for 600 draws.
        assert np.median(rel) < 0.05 and np.max(rel) < 0.5, (np.median(rel), np.max(rel))


# --- bad inputs -------------------------------------------------------------------------------


def test_linearly_dependent_references_are_refused():
    frames, (a, b, _), _ = _simulate(3, 10, 0.1)
    with pytest.raises(ValueError, match="linearly dependent"):
        bayesmix.fit_map(frames, a, b, 0.3 * a + 0.7 * b)


def test_more_references_than_pixels_are_refused():
    frames, refs, _ = _simulate(4, 10, 0.1, shape=(4,))
    with pytest.raises(ValueError, match="only 4 pixels"):
        bayesmix.fit_map(frames, *refs)


def test_references_of_different_shapes_are_refused():
    frames, (a, b, c), _ = _simulate(3, 10, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        bayesmix.fit_map(frames, a, b, c[:4])


@pytest.mark.parametrize(
    ("prior", "match"),
    [
        (lambda: Dirichlet([1.0, 1.0]), "2 concentrations but the fit has 3"),
        (lambda: Dirichlet([1.0, 0.0, 1.0]), "finite and > 0"),
        (lambda: Dirichlet(-1.0), "finite and > 0"),
        (lambda: Dirichlet("1"), "positive number"),
        (lambda: TruncatedNormal(), "must be Dirichlet"),
    ],
)
def test_bad_priors_for_three_references(prior, match):
    frames, refs, _ = _simulate(3, 10, 0.1)
    with pytest.raises(ValueError, match=match):
        bayesmix.fit_map(frames, *refs, prior=prior())


def _gain_frames(n, noise, seed):
    """Three references, weights from Dirichlet(1), a dose g ~ U(0.5, 2) per frame."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, 64)
    refs = np.stack([1 + 0.8 * np.sin(6 * t) ** 2, 1 + 0.8 * np.cos(5 * t + 0.3) ** 2,
                     0.3 + 1.5 * t**2])  # fmt: skip
    x = rng.dirichlet(np.ones(3), n)
    g = rng.uniform(0.5, 2.0, n)
    return rng, refs, x, g, (g[:, None] * x) @ refs


def test_gain_with_three_references_calibrated():
    """w = g x on the positive orthant: 90% intervals of every weight cover the truth for
    88-92% of 3,000 frames (binomial sd 0.55%), the weights' z-scores have sd 1 within
    4/sqrt(2N), and the gain is recovered to its posterior sd."""
    rng, refs, x, g, mean = _gain_frames(3000, 0.05, 20)
    frames = mean + 0.05 * rng.normal(size=mean.shape)
    res = bayesmix.fit_map(frames, *refs, gain=True, seed=3)
    lo, hi = res.interval(0.9)
    cov = ((lo <= x) & (x <= hi)).mean(axis=0)
    assert np.all((cov >= 0.88) & (cov <= 0.92)), cov
    z = (res.mean - x) / res.sd
    assert np.all(np.abs(z.std(axis=0) - 1.0) < 4.0 / np.sqrt(2 * 3000)), z.std(axis=0)
    zg = (res.gain - g) / res.gain_sd
    assert abs(zg.std() - 1.0) < 0.1 and abs(zg.mean()) < 0.1
    assert res.x.shape == (3000, 3) and np.allclose(res.x.sum(axis=1), 1.0)
    # Other interval levels rerun the same gain chains (same seed): the 90% ends again.
    lo2, _ = res.interval(0.8)
    assert np.all(lo2 >= lo - 1e-12)
    again = bayesmix.fit_map(frames[:50], *refs, gain=True, seed=3)
    same = bayesmix.fit_map(frames[:50], *refs, gain=True, seed=3)
    np.testing.assert_array_equal(again.mean, same.mean)


def test_poisson_counts_unknown_dose_three_references_beat_nnls():
    """A few counts per pixel, an unknown dose per frame, three references: the posterior
    mean's error is below per-frame NNLS-then-normalise on the same frames (measured: 0.120
    against 0.136 RMSE; the Gaussian model 0.124), and its 90% intervals are calibrated."""
    rng, refs, x, g, _ = _gain_frames(3000, 0.0, 21)
    lam = (g[:, None] * x) @ (3.0 * refs)  # 3 to 5 counts per pixel
    counts = rng.poisson(lam).astype(np.float64)
    res = bayesmix.fit_map(counts, *(3.0 * refs), gain=True, noise="poisson")
    gauss = bayesmix.fit_map(counts, *(3.0 * refs), gain=True)
    nn = np.array([scipy.optimize.nnls(3.0 * refs.T, y)[0] for y in counts])
    tot = nn.sum(axis=1, keepdims=True)
    nn_x = np.where(tot > 0, nn / np.maximum(tot, 1e-300), 1.0 / 3.0)
    err = np.sqrt(np.mean((res.mean - x) ** 2))
    err_nn = np.sqrt(np.mean((nn_x - x) ** 2))
    err_g = np.sqrt(np.mean((gauss.mean - x) ** 2))
    assert err < 0.95 * err_nn and err <= err_g, (err, err_nn, err_g)
    lo, hi = res.interval(0.9)
    cov = ((lo <= x) & (x <= hi)).mean(axis=0)
    assert np.all((cov >= 0.87) & (cov <= 0.93)), cov


@pytest.mark.parametrize(("kw", "match"), [({"draws": 10}, "draws"), ({"seed": -1}, "seed"),
                                           ({"ref_names": ("a", "a", "b")}, "distinct")])  # fmt: skip
def test_bad_sampler_options(kw, match):
    frames, refs, _ = _simulate(3, 10, 0.1)
    with pytest.raises(ValueError, match=match):
        bayesmix.fit_map(frames, *refs, **kw)


@pytest.mark.parametrize("k", [3, 4])
def test_shared_gram_shortcuts_equal_the_per_frame_computations(k):
    """Frames without masked pixels share one Gram matrix; the shortcuts (one KKT inverse per
    face, one plane covariance) give the per-frame computations' numbers."""
    from bayesmix._simplex import gaussian_marginals, mode_shared_flat

    rng = np.random.default_rng(k + 20)
    n = 500
    m = np.triu(rng.normal(size=(k, k))) + 2.0 * np.eye(k)
    w = rng.dirichlet(np.ones(k), n) + rng.normal(0, 0.3, (n, k))
    chol = np.broadcast_to(m, (n, k, k)).copy()
    with x64():
        x_jax, face_jax = simplex_mode(w, chol, np.ones(k), 0.1, newton=False)
    x_np, face_np = mode_shared_flat(w, m.T @ m)
    np.testing.assert_allclose(x_np, np.asarray(x_jax), atol=1e-10)
    assert np.array_equal(face_np, np.asarray(face_jax))
    shared = gaussian_marginals(w, chol, 0.1)
    chol[0, 0] *= -1.0  # another M with the same M^T M: breaks the sharing, not the numbers
    each = gaussian_marginals(w, chol, 0.1)
    for a, b in zip(shared, each, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
