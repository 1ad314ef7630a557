"""Streaming statistics: bounded memory on stacks larger than the limit, chunked sources of every
kind, iterators of chunks; the answer never depends on how the stack was fed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import zarr

import bayesmix

# What the process holds beyond the frame data: a constant (allocator slack, thread stacks, the
# fit's buffers) and the O(N) statistics and results, ~120 bytes a frame as measured by
# benchmarks/bench_scale.py at 10^6 frames. Documented in docs/scale.md.
RSS_CONSTANT = 48 << 20
RSS_PER_FRAME = 150


@pytest.fixture(scope="module")
def sim():
    return bayesmix.simulate(3000, shape=(16, 16), noise=0.2, seed=8)


@pytest.fixture(scope="module")
def expected(sim):
    return bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)


def test_iterator_of_chunks_gives_the_same_answer(sim, expected):
    chunks = (sim.frames[i : i + 211] for i in range(0, 3000, 211))
    res = bayesmix.fit_map(chunks, sim.ref_a, sim.ref_b)
    np.testing.assert_array_equal(res.x, expected.x)
    assert res.sigma == expected.sigma


@pytest.mark.parametrize("chunk_size", [1, 7, 512, 5000])
def test_chunk_size_does_not_change_the_statistics(sim, chunk_size):
    ref = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    got = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b, chunk_size=chunk_size)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_lazy_sources_are_read_ahead_and_agree(tmp_path, sim, expected):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("frames", data=sim.frames, chunks=(100, 16, 16))
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=sim.frames.shape,
                        chunks=(250, 16, 16), dtype=sim.frames.dtype)  # fmt: skip
    z[:] = sim.frames
    with h5py.File(tmp_path / "s.h5") as f:
        res_h5 = bayesmix.fit_map(f["frames"], sim.ref_a, sim.ref_b, memory_limit=100_000)
    res_zarr = bayesmix.fit_map(
        zarr.open(str(tmp_path / "s.zarr"), mode="r"), sim.ref_a, sim.ref_b, chunk_size=333
    )
    np.testing.assert_array_equal(res_h5.x, expected.x)
    np.testing.assert_array_equal(res_zarr.x, expected.x)


def test_a_consumed_iterator_is_an_error(sim):
    from bayesmix._io import ChunkStream

    stream = ChunkStream(iter([sim.frames[:10]]))
    bayesmix.frame_stats(stream, sim.ref_a, sim.ref_b)
    with pytest.raises(ValueError, match="already consumed; pass a new one"):
        bayesmix.frame_stats(stream, sim.ref_a, sim.ref_b)


def test_chunks_must_agree(sim):
    chunks = iter([sim.frames[:5], sim.frames[5:10].astype(np.float64)])
    with pytest.raises(ValueError, match="chunks of frames must share shape and dtype"):
        bayesmix.fit_map(chunks, sim.ref_a, sim.ref_b)


def test_empty_iterator(sim):
    with pytest.raises(ValueError, match="empty iterator"):
        bayesmix.fit_map(iter([]), sim.ref_a, sim.ref_b)


def test_bad_memory_limit(sim):
    with pytest.raises(ValueError, match="memory_limit must be a positive number of bytes"):
        bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, memory_limit=0)


_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import bayesmix

    path, limit, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    frames = np.load(path, mmap_mode="r")
    a, b = np.load(sys.argv[4]), np.load(sys.argv[5])
    # Compile everything first (numba kernel, the JAX core at this N's size bucket), so that
    # what follows measures the pass, not the compilers.
    bayesmix.fit_map(frames[:50], a, b)
    stats = bayesmix.frame_stats(frames[:n], a, b, chunk_size=n)  # an in-memory copy: n frames
    bayesmix.fit_map_stats(stats)
    del stats

    def rss(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = rss("VmRSS:")
    res = bayesmix.fit_map(frames, a, b, memory_limit=limit)
    peak = rss("VmHWM:")
    np.save(sys.argv[6], res.x)
    print(json.dumps({"before": before, "peak": peak, "sigma": res.sigma}))
    """
)


def test_memory_stays_bounded_on_a_stack_larger_than_the_limit(tmp_path):
    # 40,000 frames of 32x32 float32: 164 MB on disk, 5x the 32 MiB limit.
    n, limit = 40_000, 32 << 20
    sim = bayesmix.simulate(n, shape=(32, 32), noise=0.3, seed=2)
    np.save(tmp_path / "frames.npy", sim.frames)
    np.save(tmp_path / "a.npy", sim.ref_a)
    np.save(tmp_path / "b.npy", sim.ref_b)
    assert (tmp_path / "frames.npy").stat().st_size > 4 * limit
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "frames.npy"), str(limit), str(1000),
         str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    growth = got["peak"] - got["before"]
    bound = limit + RSS_CONSTANT + RSS_PER_FRAME * n
    assert growth <= bound, f"resident set grew by {growth / 2**20:.0f} MiB"
    expected = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), expected.x)
    assert got["sigma"] == expected.sigma
