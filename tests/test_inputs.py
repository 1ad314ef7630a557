"""Every bad input gets a clear ValueError (never a wrong number): one test per input."""

from __future__ import annotations

import numpy as np
import pytest

import bayesmix
from bayesmix import Beta, InverseGamma, TruncatedNormal, Uniform, fit_map

RNG = np.random.default_rng(0)
A = RNG.random((6, 5))
B = RNG.random((6, 5))
FRAMES = B + 0.5 * (A - B) + RNG.normal(0, 0.05, (4, 6, 5))


def test_frame_shape_mismatch():
    with pytest.raises(
        ValueError,
        match=r"frames must have shape \(N, \*S\) with S = reference shape \(6, 5\), got \(4, 5, 6\)",
    ):
        fit_map(FRAMES.transpose(0, 2, 1), A, B)


def test_single_frame_without_leading_axis():
    with pytest.raises(ValueError, match=r"a single frame needs a leading axis"):
        fit_map(FRAMES[0], A, B)


def test_reference_shape_mismatch():
    with pytest.raises(
        ValueError, match=r"ref_a and ref_b must have the same shape, got \(6, 5\) and \(5, 6\)"
    ):
        fit_map(FRAMES, A, B.T)


def test_identical_references():
    with pytest.raises(ValueError, match=r"ref_a and ref_b are identical .* not identifiable"):
        fit_map(FRAMES, A, A.copy())


def test_references_identical_on_the_mask():
    b = A.copy()
    b[0, 0] += 1.0
    mask = np.ones(A.shape, bool)
    mask[0, 0] = False
    with pytest.raises(ValueError, match="identical on the selected pixels"):
        fit_map(FRAMES, A, b, mask=mask)


def test_all_nan_frame():
    f = FRAMES.copy()
    f[2] = np.nan
    with pytest.raises(ValueError, match=r"1 frame\(s\) have no finite pixel .* frame\(s\) \[2\]"):
        fit_map(f, A, B)


def test_frame_finite_only_where_references_agree():
    b = B.copy()
    b[0, 0] = A[0, 0]
    f = FRAMES.copy()
    f[1] = np.nan
    f[1, 0, 0] = 0.3
    with pytest.raises(ValueError, match=r"finite only where ref_a == ref_b"):
        fit_map(f, A, b)


def test_empty_stack():
    with pytest.raises(ValueError, match=r"empty stack \(0 frames\)"):
        fit_map(np.empty((0, 6, 5)), A, B)


def test_empty_reference():
    with pytest.raises(ValueError, match=r"ref_a is empty"):
        fit_map(np.empty((3, 0)), np.empty(0), np.empty(0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_reference(bad):
    a = A.copy()
    a[1, 1] = bad
    with pytest.raises(ValueError, match=r"ref_a has 1 non-finite pixel\(s\)"):
        fit_map(FRAMES, a, B)


def test_complex_frames():
    with pytest.raises(ValueError, match=r"frames must hold real numbers .* got dtype complex128"):
        fit_map(FRAMES.astype(complex), A, B)


def test_mask_not_boolean():
    with pytest.raises(
        ValueError, match=r"mask must be a boolean array, got dtype int64; use mask.astype\(bool\)"
    ):
        fit_map(FRAMES, A, B, mask=np.ones(A.shape, np.int64))


def test_mask_wrong_shape():
    with pytest.raises(
        ValueError, match=r"mask must have the reference shape \(6, 5\), got \(5, 6\)"
    ):
        fit_map(FRAMES, A, B, mask=np.ones((5, 6), bool))


def test_mask_selects_nothing():
    with pytest.raises(ValueError, match="mask selects no pixel"):
        fit_map(FRAMES, A, B, mask=np.zeros(A.shape, bool))


@pytest.mark.parametrize(
    "make", [lambda: Uniform(0.8, 0.2), lambda: TruncatedNormal(0.5, 0.1, 1.0, 0.0)]
)
def test_inverted_bounds(make):
    with pytest.raises(ValueError, match="prior bounds must satisfy low < high"):
        make()


def test_prior_outside_its_bounds():
    with pytest.raises(ValueError, match=r"prior loc=1.5 is outside its bounds \[0.0, 1.0\]"):
        TruncatedNormal(1.5, 0.1)


@pytest.mark.parametrize("scale", [0.0, -0.1, np.nan])
def test_prior_scale_not_positive(scale):
    with pytest.raises(ValueError, match="scale must be"):
        TruncatedNormal(0.5, scale)


def test_beta_shape_below_one():
    with pytest.raises(ValueError, match=r"Beta shapes must both be >= 1, got a=0.5"):
        Beta(0.5, 2.0)


def test_inverse_gamma_not_positive():
    with pytest.raises(ValueError, match="InverseGamma needs concentration > 0 and scale > 0"):
        InverseGamma(0.0, 1.0)


def test_prior_of_the_wrong_type():
    with pytest.raises(ValueError, match="prior must be one of TruncatedNormal, Uniform, Beta"):
        fit_map(FRAMES, A, B, prior="normal")


def test_sigma_prior_of_the_wrong_type():
    with pytest.raises(ValueError, match=r"sigma_prior must be Jeffreys\(\) or InverseGamma"):
        fit_map(FRAMES, A, B, sigma_prior=TruncatedNormal())


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.inf])
def test_known_sigma_not_positive(sigma):
    with pytest.raises(ValueError, match="sigma must be a positive finite noise scale"):
        fit_map(FRAMES, A, B, sigma=sigma)


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        fit_map(FRAMES, A, B, chunk_size=0)


@pytest.mark.parametrize("prob", [0.0, 1.0, 1.5])
def test_interval_probability_outside_0_1(prob):
    res = fit_map(FRAMES, A, B)
    with pytest.raises(ValueError, match=r"prob must be in \(0, 1\)"):
        res.interval(prob)


def test_quantiles_outside_0_1():
    res = fit_map(FRAMES, A, B)
    with pytest.raises(ValueError, match=r"quantile probabilities must lie in \(0, 1\)"):
        res.quantiles([0.1, 1.2])


def test_simulate_bad_arguments():
    with pytest.raises(ValueError, match="n_frames must be a positive integer"):
        bayesmix.simulate(0)
    with pytest.raises(ValueError, match="pass both ref_a and ref_b, or neither"):
        bayesmix.simulate(3, ref_a=A)
    with pytest.raises(ValueError, match="default references exist for 1-D"):
        bayesmix.simulate(3, shape=(4, 4, 3))


def test_integer_frames_are_accepted_and_lists_too():
    res = fit_map([[1, 2, 3], [2, 3, 5]], [2, 4, 6], [0, 0, 1])
    assert res.x.shape == (2,) and np.isfinite(res.x).all()
