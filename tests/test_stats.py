"""The one pass over the pixels: per-frame statistics against float64 references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from conftest import reference_stats

import bayesmix
from bayesmix import frame_stats
from bayesmix._likelihood import frame_loglik

# float32 data carry ~6e-8 relative rounding; sums over a few thousand pixels in float32 blocks
# keep xhat to ~1e-6 of the likelihood sd and rss to ~1e-5 relative (measured: 3e-8 and 2e-5).
RSS_RTOL_F32 = 1e-4


def _assert_stats(st, ref, xhat_atol, rss_rtol, dd_rtol=1e-12):
    np.testing.assert_allclose(st.xhat, ref["xhat"], rtol=0, atol=xhat_atol)
    np.testing.assert_allclose(st.rss, ref["rss"], rtol=rss_rtol)
    np.testing.assert_allclose(st.dd, ref["dd"], rtol=dd_rtol)
    np.testing.assert_array_equal(st.n, ref["n"])


def test_float64_matches_reference(sim_small):
    f = sim_small.frames.astype(np.float64)
    st = frame_stats(f, sim_small.ref_a, sim_small.ref_b)
    _assert_stats(st, reference_stats(f, sim_small.ref_a, sim_small.ref_b), 1e-12, 1e-10)


def test_float32_matches_reference(sim_small):
    f = sim_small.frames
    st = frame_stats(f, sim_small.ref_a, sim_small.ref_b)
    # A float32 stack is computed with the references rounded to float32 (~6e-8 relative).
    ref = reference_stats(f, sim_small.ref_a, sim_small.ref_b)
    crb = 0.2 / np.sqrt(ref["dd"][0])
    _assert_stats(st, ref, 1e-3 * crb, RSS_RTOL_F32, dd_rtol=1e-6)


def test_high_snr_is_stable_where_expanded_form_cancels():
    # Noise 1e-2 on a level of ~1000. The statistics expanded into raw sums (y.y, y.b, y.d: one
    # matrix product) lose every digit of rss in float32; the centred pass must not.
    rng = np.random.default_rng(0)
    p = 4096
    a = 1000.0 + rng.random(p)
    b = 1000.0 + rng.random(p)
    x = rng.uniform(0.2, 0.8, 50)
    f = (b + x[:, None] * (a - b) + rng.normal(0, 1e-2, (50, p))).astype(np.float32)
    ref = reference_stats(f, a, b)
    st = frame_stats(f, a, b)
    np.testing.assert_allclose(st.rss, ref["rss"], rtol=1e-3)
    b32, d32 = b.astype(np.float32), (a - b).astype(np.float32)
    s = f @ d32 - b32 @ d32
    rr = np.einsum("ij,ij->i", f, f) - 2 * (f @ b32) + b32 @ b32
    naive = rr - s**2 / (d32 @ d32)
    assert np.max(np.abs(naive / ref["rss"] - 1)) > 1.0  # the trap is real


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float16])
def test_integer_and_half_inputs_are_converted_exactly(dtype):
    rng = np.random.default_rng(1)
    top = 200 if dtype in (np.uint8, np.int16) else 60000
    if dtype is np.float16:
        top = 2000
    a = rng.integers(0, top, 300).astype(np.float64)
    b = rng.integers(0, top, 300).astype(np.float64)
    x = rng.uniform(0, 1, 30)
    f = np.clip(np.rint(b + x[:, None] * (a - b) + rng.normal(0, 3, (30, 300))), 0, top)
    f = f.astype(dtype)
    st = frame_stats(f, a, b)
    ref = reference_stats(f.astype(np.float64), a, b)
    _assert_stats(st, ref, 1e-6, 1e-4)


def test_nan_pixels_are_left_out_and_inf_warns():
    rng = np.random.default_rng(2)
    a, b = rng.random(200), rng.random(200)
    f = b + 0.4 * (a - b) + rng.normal(0, 0.05, (6, 200))
    f[1, :7] = np.nan
    f[2, 50] = np.inf
    f[3, [3, 9]] = -np.inf
    with pytest.warns(RuntimeWarning, match=r"3 pixel\(s\) in 2 frame\(s\) are \+/-Inf"):
        st = frame_stats(f, a, b)
    ref = reference_stats(np.where(np.isfinite(f), f, np.nan), a, b)
    _assert_stats(st, ref, 1e-12, 1e-10)
    assert st.n.tolist() == [200, 193, 199, 198, 200, 200]


@pytest.mark.parametrize("gather", [False, True])
def test_mask_selects_pixels(sim_small, gather):
    mask = np.zeros(sim_small.ref_a.shape, bool)
    mask[4:20, 2:22] = True
    f = sim_small.frames.astype(np.float64)
    if gather:
        f[0, 0, 0] = np.nan  # outside the mask: must not matter
    st = frame_stats(f, sim_small.ref_a, sim_small.ref_b, mask=mask)
    ref = reference_stats(np.nan_to_num(f), sim_small.ref_a, sim_small.ref_b, mask=mask)
    _assert_stats(st, ref, 1e-12, 1e-10)


@pytest.mark.parametrize("shape", [(50,), (6, 7), (5, 4, 3)])
def test_frame_shapes(shape):
    rng = np.random.default_rng(3)
    a, b = rng.random(shape), rng.random(shape)
    f = b + rng.random((9, 1) + (1,) * (len(shape) - 1)) * (a - b) + rng.normal(0, 0.1, (9, *shape))
    _assert_stats(frame_stats(f, a, b), reference_stats(f, a, b), 1e-12, 1e-10)


def test_non_contiguous_and_chunking_do_not_change_numbers(sim_small):
    f = np.asfortranarray(sim_small.frames.astype(np.float64))
    base = frame_stats(sim_small.frames.astype(np.float64), sim_small.ref_a, sim_small.ref_b)
    for chunk in (1, 7, 1000):
        st = frame_stats(f, sim_small.ref_a, sim_small.ref_b, chunk_size=chunk)
        for k in base._fields:
            np.testing.assert_array_equal(getattr(st, k), getattr(base, k))


def test_likelihood_from_stats_equals_all_pixel_likelihood(sim_small):
    # The collapsed likelihood is exact: compare with the sum over pixels, float64.
    f = sim_small.frames[:20].astype(np.float64).reshape(20, -1)
    a, b = sim_small.ref_a.ravel(), sim_small.ref_b.ravel()
    st = frame_stats(f, a, b)
    for x, sigma in [(0.3, 0.2), (0.91, 0.05), (-0.5, 1.7)]:
        resid = f - (x * a + (1 - x) * b)
        full = -a.size * np.log(sigma * np.sqrt(2 * np.pi)) - 0.5 * np.sum(resid**2, 1) / sigma**2
        import jax

        with jax.enable_x64(True):
            ours = np.asarray(frame_loglik(x, sigma, st))
        np.testing.assert_allclose(ours, full, rtol=1e-11)


def test_r2_and_xhat_equal_the_classic_lstsq_answer(sim_small):
    st = frame_stats(sim_small.frames, sim_small.ref_a, sim_small.ref_b)
    a = (sim_small.ref_a - sim_small.ref_b).reshape(-1, 1)
    for i in range(0, 400, 40):
        bvec = (sim_small.frames[i].astype(np.float64) - sim_small.ref_b).reshape(-1, 1)
        sol, res, _, _ = scipy.linalg.lstsq(a, bvec)
        r2 = 1 - res / np.sum(bvec**2)
        assert st.xhat[i] == pytest.approx(sol[0, 0], abs=1e-6)
        assert st.r2[i] == pytest.approx(float(np.squeeze(r2)), abs=1e-5)


def test_real_stxm_spectra_match_lstsq(stxm):
    # Real data: optical density spectra of 15,625 pixels, references Fe3+ / Fe2+.
    od = -np.log(stxm["transmitted"] / stxm["i0"][:, None, None])
    spectra = np.moveaxis(od, 0, -1).reshape(-1, od.shape[0]).astype(np.float32)
    a, b = stxm["ref_fe3_oxidized"], stxm["ref_fe2_reduced"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real stack must need no masking
        st = frame_stats(spectra, a, b)
    ref = reference_stats(spectra[::97], a, b)
    np.testing.assert_allclose(st.xhat[::97], ref["xhat"], atol=1e-6)
    np.testing.assert_allclose(st.rss[::97], ref["rss"], rtol=RSS_RTOL_F32)
    assert st.n_frames == 125 * 125


def test_simulate_is_reproducible():
    s1 = bayesmix.simulate(5, shape=(8, 8), seed=4)
    s2 = bayesmix.simulate(5, shape=(8, 8), seed=4)
    np.testing.assert_array_equal(s1.frames, s2.frames)
    assert not np.array_equal(s1.frames, bayesmix.simulate(5, shape=(8, 8), seed=5).frames)
