"""Shared fixtures and float64 reference implementations (plain numpy, no bayesmix code)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "stxm_fe_l_edge.npz"


def reference_stats(frames, ref_a, ref_b, mask=None):
    """Per-frame statistics by the textbook float64 formulas, one frame at a time."""
    f = np.asarray(frames, np.float64).reshape(len(frames), -1)
    a = np.asarray(ref_a, np.float64).ravel()
    b = np.asarray(ref_b, np.float64).ravel()
    keep = np.ones(a.size, bool) if mask is None else np.asarray(mask).ravel()
    out = {k: np.empty(len(f)) for k in ("xhat", "rss", "dd", "n")}
    for i, y in enumerate(f):
        v = keep & np.isfinite(y)
        d = (a - b)[v]
        r = (y - b)[v]
        xh = (r @ d) / (d @ d)
        out["xhat"][i] = xh
        out["rss"][i] = np.sum((r - xh * d) ** 2)
        out["dd"][i] = d @ d
        out["n"][i] = v.sum()
    return out


@pytest.fixture(scope="session")
def sim_small():
    import bayesmix

    return bayesmix.simulate(400, shape=(24, 24), noise=0.2, seed=11)


@pytest.fixture(scope="session")
def stxm():
    if not REALDATA.exists():
        pytest.skip(f"real STXM data not found at {REALDATA}")
    with np.load(REALDATA, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def scipy_logpdf(prior, x):
    """Log density of a bayesmix prior by scipy.stats: an independent reference."""
    from scipy import stats

    if type(prior).__name__ == "TruncatedNormal":
        a = (prior.low - prior.loc) / prior.scale
        b = (prior.high - prior.loc) / prior.scale
        return stats.truncnorm.logpdf(x, a, b, loc=prior.loc, scale=prior.scale)
    if type(prior).__name__ == "Uniform":
        return stats.uniform.logpdf(x, prior.low, prior.high - prior.low)
    return stats.beta.logpdf(x, prior.a, prior.b)


# Drop compiled programs once the process holds this many memory maps (the kernel's limit,
# vm.max_map_count, is 65530 by default).
_MAPS_BEFORE_CLEARING = 30_000


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Drop JAX's compiled programs after a test module once they hold many memory maps. NUTS
    compiles once per model, options and shape (bayesmix._hmc), but the suite runs hundreds of
    distinct ones (several hundred maps each): one process running it all could otherwise reach
    the kernel's map limit."""
    yield
    try:
        with open("/proc/self/maps") as fh:
            n_maps = sum(1 for _ in fh)
    except OSError:  # not Linux: no such limit to watch
        return
    if n_maps > _MAPS_BEFORE_CLEARING:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


# Test files, longest first (measured by `pytest --durations=0`, 2 workers): `make test` runs the
# files on two workers (pytest-xdist, --dist loadfile), handed out in collection order, so the
# long ones start first and the short ones fill in at the end. Order within a file is kept.
_LONGEST_FIRST = (
    "test_cli", "test_noise", "test_temporal", "test_nuts", "test_learn", "test_notebook",
    "test_learn_nuts", "test_map",
    "test_temporal_cli", "test_truncnorm", "test_noise_nuts", "test_properties",
    "test_noise_nuts_pixels", "test_model_paths", "test_runs", "test_model_quadrature",
    "test_noise_cli", "test_simplex", "test_verdicts", "test_report", "test_browser",
    "test_cli_safety", "test_units", "test_readers_sweep", "test_hdi",
)  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))


# The two xdist workers share JAX's compiled programs through a persistent cache for this run
# (a test process may set JAX's configuration; the library never does): a program one worker
# compiled is read by the other instead of compiled again. The controller makes the folder
# before it starts the workers (they inherit the variable) and removes it at the end.
_CACHE_VAR = "BAYESMIX_TEST_JAX_CACHE"
_OWN_CACHE = os.environ.get("PYTEST_XDIST_WORKER") is None and _CACHE_VAR not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_VAR] = tempfile.mkdtemp(prefix="bayesmix-test-jax-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VAR])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ.pop(_CACHE_VAR), ignore_errors=True)
