"""Reproducibility: the same seed gives bit-identical results on the same machine, a different
seed different draws, and every results file says how it was made (version, priors, method,
seed).

"Bit-identical" is checked on the bytes of the arrays (``tobytes``), so -0.0 against 0.0 or two
NaN payloads would count as differences, and on the bytes of the files the CLI writes.
"""

from __future__ import annotations

import numpy as np
import pytest

import bayesmix
from bayesmix import Jeffreys, TruncatedNormal
from bayesmix.cli import main
from bayesmix.priors import parse_prior, parse_sigma_prior

NUTS = {"num_chains": 2, "num_warmup": 100, "num_samples": 100, "progress": False}
PRIOR = TruncatedNormal(0.5, 0.2, 0.1, 0.9)
PRIOR_SPEC = "truncnormal:0.5,0.2,0.1,0.9"  # the CLI's --prior form of PRIOR (docs/cli.md)


def assert_same_bytes(a, b, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: not bit-identical"


@pytest.fixture(scope="module")
def sim():
    return bayesmix.simulate(20, shape=(8, 8), noise=0.3, seed=1)


# ---------------------------------------------------------------------------------------------
# simulate and fit_map


def test_simulate_same_seed_same_stack_other_seed_other_stack():
    one, two = (bayesmix.simulate(50, shape=(8, 8), noise=0.3, seed=4) for _ in range(2))
    for field in ("frames", "ref_a", "ref_b", "x"):
        assert_same_bytes(getattr(one, field), getattr(two, field), field)
    other = bayesmix.simulate(50, shape=(8, 8), noise=0.3, seed=5)
    # Same references (scikit-image's sample images), new weights and new noise everywhere.
    assert_same_bytes(one.ref_a, other.ref_a, "ref_a")
    assert np.all(one.x != other.x)
    assert np.mean(one.frames != other.frames) > 0.99


def test_fit_map_twice_is_bit_identical(sim):
    runs = [bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, prior=PRIOR) for _ in range(2)]
    for field in ("x", "mean", "sd", "r2", "at_bound"):
        assert_same_bytes(getattr(runs[0], field), getattr(runs[1], field), field)
    for field in ("xhat", "rss", "dd", "n"):
        assert_same_bytes(getattr(runs[0].stats, field), getattr(runs[1].stats, field), field)
    assert runs[0].sigma.hex() == runs[1].sigma.hex()
    assert runs[0].n_iter == runs[1].n_iter
    q = [r.quantiles([0.05, 0.5, 0.95]) for r in runs]
    assert_same_bytes(q[0], q[1], "quantiles")


# ---------------------------------------------------------------------------------------------
# NUTS


@pytest.fixture(scope="module")
def nuts_runs(sim):
    """Three runs on the same data: seed 7 twice, then seed 8."""
    return [
        bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, prior=PRIOR, seed=s, **NUTS)
        for s in (7, 7, 8)
    ]


def _arrays(idata):
    """Every array of every group, by (group, variable)."""
    return {(g, k): idata[g][k].values for g in idata.groups() for k in idata[g].data_vars}


def test_sample_same_seed_is_bit_identical(nuts_runs):
    first, again, _ = nuts_runs
    a, b = _arrays(first), _arrays(again)
    assert a.keys() == b.keys()
    assert {("posterior", "x"), ("posterior", "sigma"), ("log_likelihood", "y")} <= a.keys()
    for key in a:
        assert_same_bytes(a[key], b[key], "/".join(key))
    assert first.posterior["x"].shape == (2, 100, 20)
    # Provenance equal too, except the wall-clock time.
    strip = {"sampling_time", "created_at"}
    assert {k: v for k, v in first.attrs.items() if k not in strip} == {
        k: v for k, v in again.attrs.items() if k not in strip
    }


def test_sample_other_seed_other_draws(nuts_runs):
    first, _, other = nuts_runs
    x1, x2 = first.posterior["x"].values, other.posterior["x"].values
    # Continuous draws from independent streams: a draw equal in both runs would mean a shared
    # stream (or a float32 draw rounded onto a prior bound, hence "> 99%" and not "all").
    assert np.mean(x1 != x2) > 0.99
    assert np.mean(first.posterior["sigma"].values != other.posterior["sigma"].values) > 0.99
    # Both start from the same analytic fit, which depends on the data only.
    assert_same_bytes(first.constant_data["x_map"].values, other.constant_data["x_map"].values)
    assert first.attrs["seed"] == 7 and other.attrs["seed"] == 8


# ---------------------------------------------------------------------------------------------
# Provenance in results files


FORMATS = ("csv", "parquet", "nc")


@pytest.mark.parametrize("fmt", FORMATS)
def test_map_results_file_records_version_priors_method_and_seed(tmp_path, sim, fmt):
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, prior=PRIOR)
    path = bayesmix.write_results(res, tmp_path / f"res.{fmt}", meta={"seed": 3})
    attrs = bayesmix.read_results(path).attrs
    assert attrs["seed"] == 3
    assert attrs["bayesmix_version"] == bayesmix.__version__
    assert attrs["method"] == "map"
    assert attrs["prior"] == PRIOR_SPEC and parse_prior(attrs["prior"]) == PRIOR
    assert attrs["sigma_prior"] == "jeffreys" and parse_sigma_prior("jeffreys") == Jeffreys()
    assert float(attrs["sigma"]) == res.sigma  # written with 17 significant digits or binary


@pytest.mark.parametrize("fmt", FORMATS)
def test_nuts_results_file_records_version_priors_method_and_seed(tmp_path, nuts_runs, fmt):
    idata = nuts_runs[0]
    # No meta: the seed must come from the InferenceData itself.
    path = bayesmix.write_results(idata, tmp_path / f"res.{fmt}")
    attrs = bayesmix.read_results(path).attrs
    assert attrs["seed"] == 7
    assert attrs["bayesmix_version"] == bayesmix.__version__
    assert attrs["method"] == "nuts"
    assert attrs["prior"] == PRIOR_SPEC
    assert attrs["sigma_prior"] == "jeffreys"


def test_inference_data_file_records_version_priors_and_seed(tmp_path, nuts_runs):
    path = bayesmix.write_idata(nuts_runs[0], tmp_path / "posterior.nc")
    back = bayesmix.read_idata(path)
    assert back.attrs["seed"] == 7
    assert back.attrs["bayesmix_version"] == bayesmix.__version__
    assert back.attrs["prior"] == PRIOR_SPEC and back.attrs["sigma_prior"] == "jeffreys"
    assert_same_bytes(back.posterior["x"].values, nuts_runs[0].posterior["x"].values, "x")


# ---------------------------------------------------------------------------------------------
# The command line


SIMULATE = ["--frames", "50", "--shape", "8", "8", "--seed", "4"]


def test_cli_simulate_twice_writes_byte_identical_files(tmp_path, capsys):
    dirs = [tmp_path / "one", tmp_path / "two"]
    for d in dirs:
        assert main(["simulate", str(d), *SIMULATE]) == 0
    names = sorted(p.name for p in dirs[0].iterdir())
    assert names == ["frames.npy", "ref_a.npy", "ref_b.npy", "x_true.csv",
                     "x_true.csv-metadata.json"]  # fmt: skip
    assert sorted(p.name for p in dirs[1].iterdir()) == names
    for name in names:
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name
    assert bayesmix.read_results(dirs[0] / "x_true.csv").attrs["seed"] == 4
    # and a different seed gives a different stack
    assert main(["simulate", str(tmp_path / "three"), *SIMULATE[:-1], "5"]) == 0
    assert (tmp_path / "three" / "frames.npy").read_bytes() != (dirs[0] / "frames.npy").read_bytes()


def test_cli_fit_twice_writes_byte_identical_csv(tmp_path, capsys):
    src = tmp_path / "sim"
    assert main(["simulate", str(src), *SIMULATE]) == 0
    args = [
        "fit", str(src / "frames.npy"), "--ref-a", str(src / "ref_a.npy"),
        "--ref-b", str(src / "ref_b.npy"), "--prior", PRIOR_SPEC, "--seed", "3", "--quiet",
    ]  # fmt: skip
    outs = [tmp_path / "one.csv", tmp_path / "two.csv"]
    for out in outs:
        assert main([*args, "--out", str(out)]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    attrs = bayesmix.read_results(outs[0]).attrs
    assert attrs["seed"] == 3 and attrs["prior"] == PRIOR_SPEC and attrs["method"] == "map"
    assert attrs["bayesmix_version"] == bayesmix.__version__
