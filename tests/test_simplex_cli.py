"""K >= 3 references end to end: the CLI (--ref), results files that rebuild the fit, the
report; and the user errors of a K-reference fit as one line with exit status 2."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli import _one_line_error

import bayesmix
from bayesmix.cli import main, reference_names
from bayesmix.priors import Dirichlet

NAMES = ("fe_metal", "fe2o3", "fe3o4")


@pytest.fixture(scope="module")
def simplex_dir(tmp_path_factory):
    """80 frames of 10x12 mixing three references (some frames without the third), noise 0.05,
    saved as .npy files named after the references (one with a '-' to sanitise)."""
    d = tmp_path_factory.mktemp("simplex")
    rng = np.random.default_rng(3)
    refs = rng.random((3, 10, 12))
    x = rng.dirichlet([2.0, 2.0, 2.0], 80)
    x[:10, 2] = 0.0
    x[:10] /= x[:10].sum(axis=1, keepdims=True)
    frames = np.einsum("nk,kij->nij", x, refs) + 0.05 * rng.standard_normal((80, 10, 12))
    np.save(d / "frames.npy", frames)
    for name, r in zip(("fe-metal", "fe2o3", "fe3o4"), refs, strict=True):
        np.save(d / f"{name}.npy", r)
    return d, x


def _refs(d):
    return [a for name in ("fe-metal", "fe2o3", "fe3o4") for a in ("--ref", str(d / f"{name}.npy"))]


def test_reference_names_are_sanitised_and_unique():
    assert reference_names(["a/fe-metal.npy", "b/fe-metal.tif", "x.h5:/entry/ref c", "@.npy"]) == (
        "fe_metal", "fe_metal_2", "ref_c", "ref"
    )  # fmt: skip


def test_fit_three_refs_writes_named_columns_that_rebuild_the_fit(simplex_dir, tmp_path, capsys):
    d, x = simplex_dir
    out, rep = tmp_path / "res.csv", tmp_path / "fit.html"
    argv = ["fit", str(d / "frames.npy"), *_refs(d), "--out", str(out), "--report", str(rep),
            "--draws", "100", "--seed", "7"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert all(n in printed for n in NAMES)
    df = bayesmix.read_results(out)
    for var in ("x_map", "mean", "sd", "q05", "q95", "mc_se"):
        assert [f"{var}_{n}" for n in NAMES] == [c for c in df.columns if c.startswith(var + "_")]
    assert "mean" not in df.columns and df.attrs["method"] == "map"
    assert df.attrs["draws"] == 100 and df.attrs["seed"] == 7
    mean = df[[f"mean_{n}" for n in NAMES]].to_numpy()
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, atol=1e-9)
    # 80 frames of 120 pixels at noise 0.05: the weights to a few hundredths.
    assert np.sqrt(np.mean((mean - x) ** 2)) < 0.05
    html = rep.read_text()
    assert all(n in html for n in NAMES) and "Residual image" in html

    # The results file rebuilds the fit: the same numbers, and the same sampler (draws, seed).
    back = bayesmix._writers.map_result_from_table(df)
    assert back.ref_names == NAMES and back.simplex is not None
    np.testing.assert_allclose(back.simplex.mean, back.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.simplex.sd, back.sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.simplex.x, back.x, rtol=0, atol=1e-12)
    lo, hi = back.interval(0.9)
    np.testing.assert_allclose(lo, df[[f"q05_{n}" for n in NAMES]].to_numpy(), atol=1e-12)
    np.testing.assert_allclose(hi, df[[f"q95_{n}" for n in NAMES]].to_numpy(), atol=1e-12)

    # bayesmix report on the results file shows every reference.
    again = tmp_path / "again.html"
    assert main(["report", str(out), "--out", str(again)]) == 0
    html = again.read_text()
    assert all(n in html for n in NAMES) and "Ternary plot" in html
    assert html.count("data:image/png;base64,") >= 3


@pytest.mark.parametrize("ext", ["parquet", "nc"])
def test_results_round_trip_every_format(simplex_dir, tmp_path, ext):
    d, _ = simplex_dir
    frames = np.load(d / "frames.npy")
    refs = [np.load(d / f"{n}.npy") for n in ("fe-metal", "fe2o3", "fe3o4")]
    # The sampler's compiled program is shared with the other tests: the same draws and prior.
    res = bayesmix.fit_map(frames, *refs, ref_names=NAMES, prior=Dirichlet(1.0), draws=100,
                           seed=2)  # fmt: skip
    path = bayesmix.write_results(res, tmp_path / f"r.{ext}")
    back = bayesmix._writers.map_result_from_table(bayesmix.read_results(path))
    assert back.ref_names == NAMES and back.prior == res.prior and back.sigma == res.sigma
    for name in ("x", "mean", "sd", "mc_se"):
        np.testing.assert_allclose(getattr(back, name), getattr(res, name), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.interval(0.9), res.interval(0.9), rtol=0, atol=1e-12)


def test_report_of_a_spectrum_image_has_a_map_per_reference(tmp_path):
    rng = np.random.default_rng(0)
    refs = rng.random((3, 40))
    x = rng.dirichlet([2.0, 2.0, 2.0], (8, 10))
    cube = np.einsum("hwk,kp->phw", x, refs) + 0.02 * rng.standard_normal((40, 8, 10))
    res = bayesmix.fit_map(cube, *refs, spectral_axis=0, ref_names=("a", "b", "c"), draws=100)
    html = bayesmix.report(res, tmp_path / "r.html").read_text()
    assert "<h2>Maps</h2>" in html and "Trace and rank plots" not in html
    assert "Ternary plot" in html and "Residual image" in html


def test_two_refs_given_with_ref_keep_the_two_reference_columns(simplex_dir, tmp_path, capsys):
    d, _ = simplex_dir
    out = tmp_path / "r.csv"
    argv = ["fit", str(d / "frames.npy"), "--ref", str(d / "fe2o3.npy"), "--ref",
            str(d / "fe3o4.npy"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    df = bayesmix.read_results(out)
    assert {"x_map", "mean", "q05"} <= set(df.columns) and df.attrs["ref_b"].endswith("fe3o4.npy")


def test_ref_a_ref_b_then_ref_adds_a_third(simplex_dir, tmp_path, capsys):
    d, _ = simplex_dir
    out = tmp_path / "r.parquet"
    argv = ["fit", str(d / "frames.npy"), "--ref-a", str(d / "fe-metal.npy"), "--ref-b",
            str(d / "fe2o3.npy"), "--ref", str(d / "fe3o4.npy"), "--out", str(out), "--quiet",
            "--prior", "dirichlet:1,1,1", "--draws", "100"]  # fmt: skip
    assert main(argv) == 0
    df = bayesmix.read_results(out)
    assert [c for c in df.columns if c.startswith("mean_")] == [f"mean_{n}" for n in NAMES]
    assert df.attrs["prior"].startswith("dirichlet:1")


def test_user_errors_of_a_k_reference_fit(simplex_dir, tmp_path, capsys):
    d, _ = simplex_dir
    out = tmp_path / "r.csv"
    base = ["fit", str(d / "frames.npy"), "--out", str(out)]
    np.save(tmp_path / "small.npy", np.ones((10, 11)))
    _one_line_error(capsys, [*base, *_refs(d), "--ref", str(tmp_path / "small.npy")],
                    r"all references must have the same shape: .*fe-metal.npy has \(10, 12\), "
                    r".*small.npy has \(10, 11\)")  # fmt: skip
    _one_line_error(capsys, [*base, "--ref", str(d / "fe2o3.npy")],
                    r"at least two references, got 1")  # fmt: skip
    _one_line_error(capsys, [*base, "--ref-a", str(d / "fe2o3.npy"), "--ref", str(d / "fe3o4.npy")],
                    r"--ref-a needs --ref-b")  # fmt: skip
    _one_line_error(capsys, [*base, *_refs(d), "--prior", "dirichlet:1,1"],
                    r"Dirichlet alpha has 2 concentrations but the fit has 3 references")  # fmt: skip
    _one_line_error(capsys, [*base, *_refs(d), "--prior", "truncnormal:0.5,0.1"],
                    r"with 3 references .* must be Dirichlet")  # fmt: skip
    _one_line_error(capsys, [*base, *_refs(d), "--gain", "--method", "nuts"],
                    r"NUTS with gain=True and 3 references is not supported yet")  # fmt: skip
    _one_line_error(capsys, [*base, *_refs(d), "--draws", "50"], r"--draws must be at least 100")
    assert not out.exists()


def _nuts_takes_more_refs() -> bool:
    import inspect

    kinds = [p.kind for p in inspect.signature(bayesmix.sample).parameters.values()]
    return inspect.Parameter.VAR_POSITIONAL in kinds


@pytest.mark.slow  # NUTS compiles for ~30 s
@pytest.mark.skipif(not _nuts_takes_more_refs(), reason="NUTS does not take K >= 3 references")
def test_nuts_with_three_refs_writes_the_same_columns_and_report(simplex_dir, tmp_path, capsys):
    d, _ = simplex_dir
    out, rep = tmp_path / "r.csv", tmp_path / "r.html"
    argv = ["fit", str(d / "frames.npy"), *_refs(d), "--method", "nuts", "--chains", "1",
            "--warmup", "100", "--samples", "100", "--out", str(out), "--report", str(rep),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    df = bayesmix.read_results(out)
    assert df.attrs["method"] == "nuts"
    assert [c for c in df.columns if c.startswith("mean_")] == [f"mean_{n}" for n in NAMES]
    html = rep.read_text()
    assert all(n in html for n in NAMES) and "Ternary plot" in html
