"""fit_map on dask arrays: the statistics are a dask computation, so a dask.distributed cluster
runs them where the blocks live and only the (N, 5) statistics come back."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

import bayesmix


@pytest.fixture(scope="module")
def sim():
    return bayesmix.simulate(4000, shape=(24, 24), noise=0.25, seed=4)


@pytest.mark.parametrize("chunks", [(700, 24, 24), (700, 12, 24)])
def test_dask_threads_equal_in_memory(sim, chunks):
    ref = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    res = bayesmix.fit_map(da.from_array(sim.frames, chunks=chunks), sim.ref_a, sim.ref_b)
    np.testing.assert_array_equal(res.x, ref.x)
    assert res.sigma == ref.sigma


@pytest.mark.slow  # starts a cluster of processes; the threaded dask tests above run by default
def test_dask_distributed_cluster_of_processes(sim):
    ref = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    # Frames made on the workers (not shipped from here): a stack that lives on the cluster.
    rng = da.random.default_rng(0)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        frames = da.from_array(sim.frames, chunks=(500, 24, 24)).persist()
        res = bayesmix.fit_map(frames, sim.ref_a, sim.ref_b)
        noise = rng.normal(0.0, 0.25, size=(2000, 24, 24), chunks=(250, 24, 24))
        made = 0.5 * (sim.ref_a + sim.ref_b) + noise.astype(np.float32)
        on_cluster = bayesmix.fit_map(made, sim.ref_a, sim.ref_b)
        workers = {w for w in client.run(lambda: __import__("os").getpid()).values()}
    np.testing.assert_array_equal(res.x, ref.x)
    assert res.sigma == ref.sigma
    assert len(workers) == 2
    # x = 1/2 everywhere; the posterior means scatter around it by about their sd.
    z = (on_cluster.mean - 0.5) / on_cluster.sd
    assert abs(float(z.mean())) < 0.1 and 0.9 < float(z.std()) < 1.1
