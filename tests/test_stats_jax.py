"""The statistics pass in JAX (frames already on a device, or device='gpu'), on the CPU backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import reference_stats
from test_stats import RSS_RTOL_F32, _assert_stats

import bayesmix
from bayesmix import _stats, _stats_jax, frame_stats

EPS32 = float(np.finfo(np.float32).eps)


def _messy(sim):
    """float32 frames with a NaN pixel and a frame partly +Inf."""
    f = sim.frames.copy()
    f[5, 3, 4] = np.nan
    f[7, :6] = np.inf
    return f


def test_jax_pass_matches_the_float64_reference(sim_small):
    f = _messy(sim_small)
    with pytest.warns(RuntimeWarning, match="Inf"):
        st = frame_stats(jnp.asarray(f), sim_small.ref_a, sim_small.ref_b)
    ref = reference_stats(f, sim_small.ref_a, sim_small.ref_b)
    crb = 0.2 / np.sqrt(ref["dd"][0])  # noise 0.2: the likelihood sd of x
    _assert_stats(st, ref, 1e-3 * crb, RSS_RTOL_F32, dd_rtol=1e-6)


def test_jax_pass_is_stable_where_the_expanded_form_cancels():
    # As test_stats.test_high_snr_is_stable_where_expanded_form_cancels: noise 1e-2 on ~1000.
    rng = np.random.default_rng(0)
    p = 4096
    a, b = 1000.0 + rng.random(p), 1000.0 + rng.random(p)
    x = rng.uniform(0.2, 0.8, 50)
    f = (b + x[:, None] * (a - b) + rng.normal(0, 1e-2, (50, p))).astype(np.float32)
    st = frame_stats(jnp.asarray(f), a, b)
    np.testing.assert_allclose(st.rss, reference_stats(f, a, b)["rss"], rtol=1e-3)


@pytest.mark.parametrize("model", [{"background": "linear"}, {"gain": True}, {"refs": 3}])
def test_jax_basis_pass_equals_the_numba_pass(sim_small, model):
    """numba sums float32 products in blocks of _stats._BLOCK pixels added in float64, JAX sums
    them in float64: each projection differs by at most ~2 * _BLOCK * eps32 of
    sum |y - c| |q| <= ||y - c|| (q orthonormal), rss by as much of itself (bounds from the
    block sums' rounding; measured far below)."""
    f = _messy(sim_small)
    model = dict(model)
    more = (0.5 * (sim_small.ref_a + sim_small.ref_b) ** 2,) if model.pop("refs", 2) == 3 else ()
    mask = np.ones(sim_small.ref_a.shape, bool)
    mask[0] = False
    with pytest.warns(RuntimeWarning, match="Inf"):
        a = frame_stats(f, sim_small.ref_a, sim_small.ref_b, *more, mask=mask, **model)
    with pytest.warns(RuntimeWarning, match="Inf"):
        b = frame_stats(jnp.asarray(f), sim_small.ref_a, sim_small.ref_b, *more, mask=mask,
                        **model)  # fmt: skip
    bound = 2 * _stats._BLOCK * EPS32
    size = np.sqrt(np.nansum(np.where(mask, np.nan_to_num(f, posinf=0.0), 0.0) ** 2,
                             axis=(1, 2)))  # fmt: skip
    np.testing.assert_array_equal(a.n, b.n)
    np.testing.assert_allclose(a.rss, b.rss, rtol=bound)
    # z is the projection on the references' part of the basis (chol fixed): bounded by size.
    scale = size[:, None] * np.abs(np.asarray(a.chol)).max(axis=(1, 2))[:, None] + 1.0
    assert np.all(np.abs(np.asarray(a.z) - np.asarray(b.z)) <= bound * scale)
    np.testing.assert_array_equal(a.chol, b.chol)


def test_fit_map_on_a_jax_array_equals_fit_map_on_numpy():
    sim = bayesmix.simulate(2000, shape=(32, 32), seed=3)
    r_np = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    r_jax = bayesmix.fit_map(jnp.asarray(sim.frames), sim.ref_a, sim.ref_b)
    assert np.max(np.abs(r_np.x - r_jax.x)) < 1e-6
    assert np.max(np.abs(r_np.sd - r_jax.sd)) < 1e-6
    assert abs(r_jax.sigma / r_np.sigma - 1) < 1e-6


def test_jax_array_frames_never_come_to_the_host(monkeypatch):
    """The pass reads device arrays where they live: the numba kernel is never called, every
    chunk reaches the JAX kernel as a device array, no implicit transfer happens (the transfer
    guard; on a CPU backend a zero-copy view would slip past it, hence the rest), and what
    comes back by ``jax.device_get`` is O(N) statistics, never frame-sized."""
    sim = bayesmix.simulate(1000, shape=(16, 16), seed=4)
    frames = jnp.asarray(sim.frames)
    fetched: list[int] = []
    real_get = jax.device_get

    def spy(tree):
        fetched.extend(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))
        return real_get(tree)

    def no_numba(*args, **kw):
        raise AssertionError("the numba pass ran on device-resident frames")

    seen: list[bool] = []
    real_kernel = _stats_jax._frame_kernel

    def kernel(chunk, *rest):
        seen.append(isinstance(chunk, jax.Array))
        return real_kernel(chunk, *rest)

    monkeypatch.setattr(_stats_jax.jax, "device_get", spy)
    monkeypatch.setattr(_stats, "_stats_kernel", no_numba)
    monkeypatch.setattr(_stats, "_basis_kernel", no_numba)
    monkeypatch.setattr(_stats_jax, "_frame_kernel", kernel)
    with jax.transfer_guard_device_to_host("disallow"):
        st = frame_stats(frames, sim.ref_a, sim.ref_b, chunk_size=256)
        frame_stats(frames, sim.ref_a, sim.ref_b, background="linear")
    assert seen and all(seen)
    # Per-frame numbers only: at most the 5 projections (linear background, A, B) of each of the
    # 1024 frames (padded to a multiple of 256).
    assert max(fetched) <= 1024 * 5
    assert sum(fetched) < frames.size / 10
    np.testing.assert_array_equal(st.n, 256)
    assert st.n.shape == (1000,)


def test_jax_pass_compiles_at_most_twice_per_stack():
    """Host frames sent to a device go in chunks padded to a multiple of 256 frames: stacks of any
    length compile the kernel at most twice (the step and one remainder); a jax.Array is one
    chunk, compiled once per shape."""
    sim = bayesmix.simulate(1300, shape=(8, 8), seed=5)
    cpu = jax.devices("cpu")[0]
    c = (0.5 * (sim.ref_a + sim.ref_b)).astype(np.float32).ravel()
    d = (sim.ref_a - sim.ref_b).astype(np.float32).ravel()
    _stats_jax._frame_delta.clear_cache()
    for n in (1300, 1100, 900):
        sizes = []
        for chunk, k in _stats_jax.device_chunks(sim.frames[:n], 512, cpu):
            sizes.append(k)
            _stats_jax.frame_kernel(chunk, np.empty(0, np.int64), c, d, float(d @ d))
        assert sum(sizes) == n
    # chunks of 512 frames and the remainders 276, 76, 388 padded to 512, 256, 512
    assert _stats_jax._frame_delta._cache_size() == 2
    frames = jnp.asarray(sim.frames)
    frame_stats(frames, sim.ref_a, sim.ref_b)
    frame_stats(frames + 1.0, sim.ref_a, sim.ref_b)
    assert _stats_jax._frame_delta._cache_size() == 3
