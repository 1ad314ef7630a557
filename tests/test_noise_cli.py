"""Noise models on the command line (``bayesmix fit --noise SPEC --variance PATH``) and in the
report: the model and what it learned recorded in every output, the "Noise model" section, and
every bad value refused as one line with exit status 2 before any work."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
from test_cli import _one_line_error

import bayesmix
from bayesmix._report import SECTIONS
from bayesmix._schema import model_attrs
from bayesmix._writers import map_result_from_table
from bayesmix.cli import main
from bayesmix.noise import StudentT


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """``bayesmix simulate``: 120 frames of 12x16, noise 0.1; plus variance maps beside it."""
    d = tmp_path_factory.mktemp("noise_cli")
    assert main(["simulate", str(d / "s"), "--frames", "120", "--shape", "12", "16",
                 "--noise", "0.1", "--seed", "5"]) == 0  # fmt: skip
    s = d / "s"
    np.save(s / "var.npy", np.full((12, 16), 4.0))
    tifffile.imwrite(s / "var_frames.tif", np.full((120, 12, 16), 4.0, np.float32))
    np.save(s / "var_negative.npy", -np.ones((12, 16)))
    np.save(s / "var_shape.npy", np.ones((5, 5)))
    np.save(s / "var_nan.npy", np.full((12, 16), np.nan))
    return s


def _fit(s, tmp_path, *extra, out="res.csv"):
    return ["fit", str(s / "frames.npy"), "--ref-a", str(s / "ref_a.npy"), "--ref-b",
            str(s / "ref_b.npy"), "--out", str(tmp_path / out), *extra]  # fmt: skip


def _section(page: str, name: str) -> str:
    anchor = name.lower().replace(" ", "-")
    match = re.search(rf"<section id='{anchor}'>(.*?)</section>", page, flags=re.S)
    return "" if match is None else match.group(1)


def test_per_frame_noise_is_recorded_in_results_and_report(sim, tmp_path, capsys):
    rep = tmp_path / "fit.html"
    assert main(_fit(sim, tmp_path, "--noise", "per_frame", "--report", str(rep))) == 0
    printed = capsys.readouterr().out
    assert "per_frame noise" in printed and "log_sigma_mu" in printed and "elpd" in printed
    df = bayesmix.read_results(tmp_path / "res.csv")
    assert df.attrs["noise"] == "per_frame"
    # Simulated at one noise scale 0.1: the population of log sigma sits at log 0.1, narrow.
    assert abs(df.attrs["log_sigma_mu"] - np.log(0.1)) < 0.05
    assert df.attrs["log_sigma_tau"] < 0.1
    for col in ("sigma_frame", "sigma_frame_sd", "loglik"):
        assert col in df.columns and np.all(np.isfinite(df[col]))
    section = _section(rep.read_text(), "Noise model")
    assert "per_frame" in section and "log_sigma_tau" in section and "elpd" in section
    assert section.count("data:image/png;base64,") == 1  # sigma_i with the population curve

    # `bayesmix report` on the results file: the noise model comes back with its intervals.
    again = tmp_path / "again.html"
    assert main(["report", str(tmp_path / "res.csv"), "--out", str(again)]) == 0
    assert "log_sigma_mu" in _section(again.read_text(), "Noise model")
    back = map_result_from_table(df)
    lo, hi = back.interval(0.9)
    np.testing.assert_allclose(lo, df["q05"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(hi, df["q95"], rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "spec, out, attrs",
    [
        ("student_t:df=4", "res.parquet", {"noise": "student_t:df=4", "noise_df": 4.0}),
        ("student_t", "res.nc", {"noise": "student_t"}),
        ("poisson_gaussian:gain=2,read_sd=1", "res.csv",
         {"noise": "poisson_gaussian:gain=2,read_sd=1", "noise_gain": 2.0, "noise_read_sd": 1.0}),
    ],
)  # fmt: skip
# gain 2 and read noise 1 on frames of noise 0.1: far more noise than the data hold, so the fit
# says the references barely inform x (as it should).
@pytest.mark.filterwarnings("ignore:the references differ little:RuntimeWarning")
def test_reweighting_noise_writes_its_spec_and_passes(sim, tmp_path, capsys, spec, out, attrs):
    rep = tmp_path / "fit.html"
    assert main(_fit(sim, tmp_path, "--noise", spec, "--report", str(rep), out=out)) == 0
    assert "noise_passes" in capsys.readouterr().out
    df = bayesmix.read_results(tmp_path / out)
    for key, value in attrs.items():
        assert df.attrs[key] == value, key
    assert int(df.attrs["noise_passes"]) >= 1 and "loglik" in df.columns
    section = _section(rep.read_text(), "Noise model")
    assert spec.split(":")[0] in section and "statistics pass(es)" in section


@pytest.mark.parametrize("variance", ["var.npy", "var_frames.tif"])
def test_variance_map_scales_sigma_and_is_recorded(sim, tmp_path, variance):
    """A constant variance map of 4 for every pixel: the same weights as no map, and sigma halved
    (sigma scales the map: pixel sd = sigma * sqrt(4))."""
    assert main(_fit(sim, tmp_path, out="plain.csv")) == 0
    rep = tmp_path / "fit.html"
    assert main(_fit(sim, tmp_path, "--variance", str(sim / variance), "--report", str(rep))) == 0
    plain = bayesmix.read_results(tmp_path / "plain.csv")
    df = bayesmix.read_results(tmp_path / "res.csv")
    assert df.attrs["variance"] == str(sim / variance) and df.attrs["noise"] == "gaussian"
    np.testing.assert_allclose(df["mean"], plain["mean"], rtol=0, atol=1e-6)
    assert df.attrs["sigma"] == pytest.approx(plain.attrs["sigma"] / 2.0, rel=1e-6)
    section = _section(rep.read_text(), "Noise model")
    assert "variance map" in section and variance in section


def test_variance_of_a_spectrum_image_is_laid_out_as_its_frames(tmp_path):
    """--spectral-axis 0: a variance cube (E, H, W) beside the (E, H, W) image gives the weights
    of the fit without it when it is constant, and the results keep the map's shape."""
    sim = bayesmix.simulate(30, shape=(40,), noise=0.05, seed=2)
    cube = sim.frames.T.reshape(40, 6, 5)
    np.save(tmp_path / "cube.npy", cube)
    np.save(tmp_path / "a.npy", sim.ref_a)
    np.save(tmp_path / "b.npy", sim.ref_b)
    np.save(tmp_path / "var.npy", np.full((40, 6, 5), 0.25))
    base = ["fit", str(tmp_path / "cube.npy"), "--ref-a", str(tmp_path / "a.npy"), "--ref-b",
            str(tmp_path / "b.npy"), "--spectral-axis", "0"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "plain.csv")]) == 0
    assert main([*base, "--variance", str(tmp_path / "var.npy"),
                 "--out", str(tmp_path / "var.csv")]) == 0  # fmt: skip
    plain = bayesmix.read_results(tmp_path / "plain.csv")
    df = bayesmix.read_results(tmp_path / "var.csv")
    assert model_attrs(df.attrs)["map_shape"] == (6, 5)
    np.testing.assert_allclose(df["mean"], plain["mean"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--noise", "laplace"], r"--noise 'laplace': noise must be one of"),
        (["--noise", "student_t:df=-1"], r"--noise 'student_t:df=-1': StudentT df must be"),
        (["--noise", "student_t:nu=3"], r"takes df as key=value"),
        (["--noise", "poisson_gaussian:gain=zero"], r"must be a number"),
        (["--noise", "poisson_gaussian:gain=0"], r"gain must be finite and > 0"),
        (["--noise", "per_frame", "--gain"], r"noise='per_frame' is supported for two references"),
        (["--noise", "per_frame", "--prior", "beta:2,2"], r"truncated-normal or uniform prior"),
        (["--noise", "poisson", "--variance", "{s}/var.npy"], r"both set each pixel's variance"),
        (["--variance", "{s}/missing.npy"], r"--variance: no such file"),
        (["--variance", "{s}/var_negative.npy"], r"--variance .*must be > 0 at every pixel"),
        (["--variance", "{s}/var_nan.npy"], r"--variance .*must be > 0 at every pixel"),
        (["--variance", "{s}/var_shape.npy"], r"--variance .*must have the frame shape"),
        (["--noise", "student_t", "--resume"], r"--resume does not apply to --noise student_t"),
    ],
)
def test_bad_noise_options_exit_2_in_one_line_before_any_output(sim, tmp_path, capsys, extra,
                                                                 match):  # fmt: skip
    extra = [e.format(s=sim) for e in extra]
    _one_line_error(capsys, _fit(sim, tmp_path, *extra, "--report", str(tmp_path / "r.html")),
                    match)  # fmt: skip
    assert not (tmp_path / "res.csv").exists() and not (tmp_path / "r.html").exists()


def test_nuts_refuses_a_noise_the_sampler_does_not_take(sim, tmp_path, capsys, monkeypatch):
    """Until bayesmix.sample takes noise=/variance=, --method nuts says so (exit 2)."""

    def old_sample(frames, ref_a, ref_b, *more_refs, prior=None, num_chains=4):
        raise AssertionError("not reached")

    monkeypatch.setattr("bayesmix._nuts.sample", old_sample)
    _one_line_error(capsys, _fit(sim, tmp_path, "--method", "nuts", "--noise", "student_t"),
                    r"--method nuts does not take --noise student_t yet")  # fmt: skip
    _one_line_error(capsys, _fit(sim, tmp_path, "--method", "nuts", "--variance",
                                 str(sim / "var.npy")), r"does not take --variance")  # fmt: skip


def test_nuts_passes_noise_and_variance_to_a_sampler_that_takes_them(sim, tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    seen = {}

    def new_sample(frames, ref_a, ref_b, *more_refs, noise="gaussian", variance=None, **kw):
        seen.update(noise=noise, variance=variance, shape=np.shape(frames), **kw)
        raise bayesmix.InputError("sampler reached")

    monkeypatch.setattr("bayesmix._nuts.sample", new_sample)
    argv = _fit(sim, tmp_path, "--method", "nuts", "--noise", "student_t:df=3", "--variance",
                str(sim / "var.npy"), "--chains", "2", "--seed", "4")  # fmt: skip
    _one_line_error(capsys, argv, "sampler reached")
    assert seen["noise"] == StudentT(df=3.0) and seen["shape"] == (120, 12, 16)
    np.testing.assert_array_equal(seen["variance"], np.full((12, 16), 4.0))
    assert seen["num_chains"] == 2 and seen["seed"] == 4


def test_report_noise_section_only_where_it_applies_and_compares(tmp_path):
    sim = bayesmix.simulate(200, shape=(12, 12), noise=0.1, seed=1)
    gauss = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    page = bayesmix.report(gauss, tmp_path / "g.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == list(SECTIONS)  # no Noise model section
    assert "elpd (exact leave-one-frame-out)" in page  # the summary's elpd line

    per = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, noise="per_frame")
    path = bayesmix.report(per, tmp_path / "p.html", compare={"gaussian": gauss},
                           variance=np.ones((12, 12)))  # fmt: skip
    page = path.read_text()
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert heads.index("Noise model") == heads.index("Diagnostics") + 1
    section = _section(page, "Noise model")
    assert "this fit" in section and "gaussian" in section and "elpd_diff" in section
    assert "of shape (12, 12)" in section and "log_sigma_mu" in section
    # One noise scale simulated: the Gaussian model (one sigma fewer to learn per frame) wins or
    # ties, within a few dse.
    table = bayesmix.compare(per, gauss, names=["per_frame", "gaussian"])
    assert abs(table["elpd_diff"].iloc[1]) <= 4 * max(table["dse"].iloc[1], 1.0)
