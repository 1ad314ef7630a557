"""device= on the public functions: CPU explicitly, a clear error for a missing GPU, and frames
sharded across several devices giving the single-device answer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import bayesmix


@pytest.fixture(scope="module")
def sim():
    return bayesmix.simulate(600, shape=(16, 16), noise=0.2, seed=6)


def test_cpu_device_is_the_default_answer(sim):
    ref = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, device="cpu")
    np.testing.assert_array_equal(res.x, ref.x)
    assert res.device == f"cpu:{len(jax.devices('cpu'))}"
    assert res.to_dataframe().attrs["device"] == res.device


@pytest.mark.skipif(any(d.platform == "gpu" for d in jax.devices()), reason="a GPU is present")
def test_missing_gpu_is_an_error_not_a_fallback(sim):
    with pytest.raises(ValueError, match=r"device='gpu': JAX sees no GPU \(it has: cpu\)"):
        bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, device="gpu")
    with pytest.raises(ValueError, match=r"device='gpu': JAX sees no GPU"):
        bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, device="gpu", progress=False)


def test_unknown_device(sim):
    with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'gpu'\) or None"):
        bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, device="tpu")


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import bayesmix

    sim = bayesmix.simulate(2500, shape=(16, 16), noise=0.2, seed=6)
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, device="cpu")
    idata = bayesmix.sample(sim.frames[:40], sim.ref_a, sim.ref_b, num_chains=4,
                            num_warmup=50, num_samples=50, progress=False, device="cpu")
    np.save(sys.argv[1], np.stack([res.x, res.mean, res.sd]))
    print(res.device, res.sigma, idata.attrs["chain_method"])
    """
)


@pytest.mark.slow  # a subprocess with 4 host devices; the other device tests run by default
def test_frames_sharded_over_four_devices_agree(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "r.npy")], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    device, sigma, method = out.stdout.split()
    assert device == "cpu:4" and method == "parallel"
    sim = bayesmix.simulate(2500, shape=(16, 16), noise=0.2, seed=6)
    ref = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    got = np.load(tmp_path / "r.npy")
    # Sums split across devices may round differently in the last bits, nothing more.
    np.testing.assert_allclose(got, np.stack([ref.x, ref.mean, ref.sd]), rtol=1e-12, atol=1e-14)
    assert float(sigma) == pytest.approx(ref.sigma, rel=1e-12)
