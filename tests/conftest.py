"""Shared fixtures and float64 reference implementations (plain numpy, no bayesmix code)."""

from __future__ import annotations

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
    """Drop JAX's compiled programs after a test module once they hold many memory maps. Every
    NumPyro run compiles a new program that JAX keeps (several hundred maps each): one process
    running the whole suite would otherwise reach the kernel's map limit and crash."""
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
