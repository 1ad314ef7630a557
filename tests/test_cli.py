"""The command line: the demo end to end, and user errors as one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

import bayesmix
from bayesmix import cli
from bayesmix.cli import main


def _run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bayesmix.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_writes_results_that_recover_the_truth(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--frames", "600", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "90% interval" in out and "results.csv" in out and "report.html" in out
    df = bayesmix.read_results(tmp_path / "d" / "results.csv")
    assert len(df) == 600 and df.attrs["method"] == "map"
    # A plain CSV: pandas' defaults read the same table (the provenance is beside it).
    plain = pd.read_csv(tmp_path / "d" / "results.csv")
    pd.testing.assert_frame_equal(plain.set_index("frame"), df, check_flags=False)
    assert (tmp_path / "d" / "results.csv-metadata.json").is_file()
    html = (tmp_path / "d" / "report.html").read_text()
    assert "Residual image" in html and html.count("data:image/png;base64,") >= 2
    inside = (df["q05"] <= df["x_true"]) & (df["x_true"] <= df["q95"])
    # 600 frames: binomial sd of the coverage is 1.2%, so 90% +/- 5% is a 4 sd band.
    assert 0.85 <= inside.mean() <= 0.95
    assert np.all((df["x_map"] >= 0) & (df["x_map"] <= 1))


@pytest.mark.slow  # two demo runs; test_demo_writes_results_that_recover_the_truth stays
def test_demo_refuses_to_overwrite_and_errors_are_one_line(tmp_path):
    first = _run("demo", "--out", "d", "--frames", "50", "--size", "8", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = _run("demo", "--out", "d", "--frames", "50", "--size", "8", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "Traceback" not in again.stderr
    assert "already exists; pass --overwrite" in again.stderr
    forced = _run(
        "demo", "--out", "d", "--frames", "50", "--size", "8", "--overwrite", cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr


def test_bad_argument_exits_2(tmp_path):
    bad = _run("demo", "--frames", "zero", cwd=tmp_path)
    assert bad.returncode == 2 and "expected a positive integer" in bad.stderr
    noise = _run("demo", "--noise", "-1", cwd=tmp_path)
    assert noise.returncode == 2 and noise.stderr.startswith("bayesmix: error: --noise")


def _one_line_error(capsys, argv, match):
    """main(argv) fails as a user error: exit 2, one line on stderr matching ``match``."""
    import re

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayesmix: error: ") and err.count("\n") == 1, err
    assert re.search(match, err), err
    return err


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    """``bayesmix simulate`` output: 120 frames of 12x16, noise 0.1."""
    d = tmp_path_factory.mktemp("sim")
    assert main(["simulate", str(d / "s"), "--frames", "120", "--shape", "12", "16",
                 "--noise", "0.1", "--seed", "5"]) == 0  # fmt: skip
    return d / "s"


def test_simulate_writes_stack_refs_and_truth(sim_dir):
    frames = np.load(sim_dir / "frames.npy", allow_pickle=False)
    a, b = (np.load(sim_dir / f"ref_{k}.npy", allow_pickle=False) for k in "ab")
    truth = pd.read_csv(sim_dir / "x_true.csv")  # a plain CSV: pandas' defaults
    assert frames.shape == (120, 12, 16) and a.shape == b.shape == (12, 16)
    assert list(truth.columns) == ["frame", "x"] and len(truth) == 120
    # The frames are x A + (1 - x) B + noise with the recorded sigma: residual sd ~ 0.1.
    resid = (
        frames
        - truth["x"].to_numpy()[:, None, None] * a
        - (1 - truth["x"].to_numpy())[:, None, None] * b
    )
    assert abs(resid.std() / 0.1 - 1) < 0.02  # 23,040 pixels: sd of the ratio ~0.5%
    assert (sim_dir / "x_true.csv").read_text().startswith("frame,x\n0,")
    # The noise sd and the seed in its CSVW metadata file; read_results reads both.
    meta = json.loads((sim_dir / "x_true.csv-metadata.json").read_text())
    assert meta["bayesmix"] == {"sigma": 0.1, "seed": 5} and meta["url"] == "x_true.csv"
    assert [c["titles"] for c in meta["tableSchema"]["columns"]] == ["frame", "x"]
    back = bayesmix.read_results(sim_dir / "x_true.csv")
    np.testing.assert_array_equal(back["x"], truth["x"])
    assert back.attrs == {"sigma": 0.1, "seed": 5}


# Every input format once, every output format at least once.
@pytest.mark.parametrize(
    "fmt, out",
    [("tif", "csv"), ("png", "parquet"), ("npz", "nc"), ("h5", "csv"), ("zarr", "parquet")],
)
def test_fit_reads_every_format_and_writes_every_output(tmp_path, sim_dir, fmt, out):
    frames = np.load(sim_dir / "frames.npy")
    a = np.load(sim_dir / "ref_a.npy")
    b = np.load(sim_dir / "ref_b.npy")
    # 16-bit integers, as a detector writes them (PNG holds no floats).
    scale = 20_000.0
    f16, a16, b16 = (np.clip(np.rint(v * scale + 10_000), 0, 65535).astype(np.uint16)
                     for v in (frames, a, b))  # fmt: skip
    if fmt == "tif":
        tifffile.imwrite(tmp_path / "s.tif", f16)
        src, ra, rb = tmp_path / "s.tif", tmp_path / "a.tif", tmp_path / "b.tif"
        tifffile.imwrite(ra, a16)
        tifffile.imwrite(rb, b16)
    elif fmt == "png":
        (tmp_path / "frames").mkdir()
        for i, f in enumerate(f16):
            iio.imwrite(tmp_path / "frames" / f"img{i}.png", f)
        src, ra, rb = tmp_path / "frames", tmp_path / "a.png", tmp_path / "b.png"
        iio.imwrite(ra, a16)
        iio.imwrite(rb, b16)
    elif fmt == "npz":
        np.savez(tmp_path / "d.npz", frames=f16, a=a16, b=b16)
        src, ra, rb = (f"{tmp_path}/d.npz:{k}" for k in ("frames", "a", "b"))
    elif fmt == "h5":
        with h5py.File(tmp_path / "d.h5", "w") as h:
            h["entry/frames"], h["entry/a"], h["entry/b"] = f16, a16, b16
        src, ra, rb = (f"{tmp_path}/d.h5:/entry/{k}" for k in ("frames", "a", "b"))
    else:
        zarr.save_group(str(tmp_path / "d.zarr"), frames=f16, a=a16, b=b16)
        src, ra, rb = (f"{tmp_path}/d.zarr:{k}" for k in ("frames", "a", "b"))
    path = tmp_path / f"res.{out}"
    assert main(["fit", str(src), "--ref-a", str(ra), "--ref-b", str(rb), "--out", str(path),
                 "--quiet"]) == 0  # fmt: skip
    df = bayesmix.read_results(path)
    expected = bayesmix.fit_map(f16, a16, b16)
    np.testing.assert_array_equal(df["x_map"].to_numpy(), expected.x)
    lo, hi = expected.interval(0.9)
    np.testing.assert_array_equal(df["q05"].to_numpy(), lo)
    np.testing.assert_array_equal(df["q95"].to_numpy(), hi)
    assert df.attrs["frames"] == str(src) and df.attrs["method"] == "map"
    if fmt in ("tif", "png"):
        first = "s.tif:0" if fmt == "tif" else "img0.png"
        assert df["source"].iloc[0] == first and df["source"].iloc[10] in ("s.tif:10", "img10.png")


def test_fit_with_mask_prior_and_report(tmp_path, sim_dir, capsys):
    mask = np.ones((12, 16), bool)
    mask[:, :4] = False
    np.save(tmp_path / "mask.npy", mask)
    args = ["fit", str(sim_dir / "frames.npy"), "--ref-a", str(sim_dir / "ref_a.npy"),
            "--ref-b", str(sim_dir / "ref_b.npy"), "--mask", str(tmp_path / "mask.npy"),
            "--prior", "beta:4,3", "--prob", "0.8", "--out", str(tmp_path / "r.csv"),
            "--report", str(tmp_path / "r.html")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "r.html" in out
    df = bayesmix.read_results(tmp_path / "r.csv")
    assert df.attrs["prior"] == "beta:4,3" and {"q10", "q90"} <= set(df.columns)
    assert (df["n_pixels"] == 12 * 12).all()
    frames = np.load(sim_dir / "frames.npy")
    ref = bayesmix.fit_map(frames, np.load(sim_dir / "ref_a.npy"), np.load(sim_dir / "ref_b.npy"),
                           mask=mask, prior=bayesmix.Beta(4.0, 3.0))  # fmt: skip
    np.testing.assert_array_equal(df["mean"].to_numpy(), ref.mean)
    assert "Residual image" in (tmp_path / "r.html").read_text()
    # The report command rebuilds the same fit from the results file.
    assert main(["report", str(tmp_path / "r.csv"), "--out", str(tmp_path / "again.html")]) == 0
    assert "Flagged frames" in (tmp_path / "again.html").read_text()


def test_error_missing_file(tmp_path, sim_dir, capsys):
    _one_line_error(capsys, ["fit", str(tmp_path / "nope.tif"), "--ref-a", str(sim_dir / "ref_a.npy"),
                             "--ref-b", str(sim_dir / "ref_b.npy"), "--out", str(tmp_path / "r.csv")],
                    r"no such file or folder: .*nope.tif")  # fmt: skip
    assert not (tmp_path / "r.csv").exists()


def test_error_wrong_shape_reference(tmp_path, sim_dir, capsys):
    np.save(tmp_path / "small.npy", np.ones((12, 15)))
    _one_line_error(capsys, ["fit", str(sim_dir / "frames.npy"), "--ref-a", str(tmp_path / "small.npy"),
                             "--ref-b", str(sim_dir / "ref_b.npy"), "--out", str(tmp_path / "r.csv")],
                    r"ref_a and ref_b must have the same shape, got \(12, 15\) and \(12, 16\)")  # fmt: skip


def test_error_corrupt_tiff(tmp_path, sim_dir, capsys):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 100)
    _one_line_error(capsys, ["fit", str(tmp_path / "bad.tif"), "--ref-a", str(sim_dir / "ref_a.npy"),
                             "--ref-b", str(sim_dir / "ref_b.npy"), "--out", str(tmp_path / "r.csv")],
                    r"cannot read .*bad.tif as TIFF")  # fmt: skip


def test_error_pickled_npy(tmp_path, sim_dir, capsys):
    np.save(tmp_path / "evil.npy", np.array([object()], dtype=object), allow_pickle=True)
    _one_line_error(capsys, ["fit", str(sim_dir / "frames.npy"), "--ref-a", str(tmp_path / "evil.npy"),
                             "--ref-b", str(sim_dir / "ref_b.npy"), "--out", str(tmp_path / "r.csv")],
                    r"evil.npy holds Python objects")  # fmt: skip


def test_error_existing_output_is_kept(tmp_path, sim_dir, capsys):
    (tmp_path / "r.csv").write_text("precious")
    (tmp_path / "r.html").write_text("also precious")
    base = ["fit", str(sim_dir / "frames.npy"), "--ref-a", str(sim_dir / "ref_a.npy"),
            "--ref-b", str(sim_dir / "ref_b.npy")]  # fmt: skip
    _one_line_error(
        capsys, [*base, "--out", str(tmp_path / "r.csv")], r"r.csv already exists; pass --overwrite"
    )
    # Checked before any work: an existing report stops the run before the results are written.
    _one_line_error(capsys, [*base, "--out", str(tmp_path / "new.csv"), "--report", str(tmp_path / "r.html")],
                    r"r.html already exists")  # fmt: skip
    assert (tmp_path / "r.csv").read_text() == "precious" and not (tmp_path / "new.csv").exists()
    assert main([*base, "--out", str(tmp_path / "r.csv"), "--overwrite", "--quiet"]) == 0
    assert bayesmix.read_results(tmp_path / "r.csv").shape[0] == 120


def test_fit_csv_opens_with_defaults_and_keeps_its_metadata(tmp_path, sim_dir, capsys):
    out, meta = tmp_path / "r.csv", tmp_path / "r.csv-metadata.json"
    base = ["fit", str(sim_dir / "frames.npy"), "--ref-a", str(sim_dir / "ref_a.npy"),
            "--ref-b", str(sim_dir / "ref_b.npy"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(base) == 0
    df = bayesmix.read_results(out)
    pd.testing.assert_frame_equal(pd.read_csv(out).set_index("frame"), df, check_flags=False)
    assert df.attrs["frames"] == str(sim_dir / "frames.npy") and df.attrs["method"] == "map"
    assert json.loads(meta.read_text())["bayesmix"] == df.attrs
    # The metadata alone blocks the output too (checked before any work): nothing is written.
    out.unlink()
    _one_line_error(capsys, base, r"r.csv-metadata.json \(the metadata of r.csv\) already exists")
    assert not out.exists() and json.loads(meta.read_text())["bayesmix"] == df.attrs
    assert main([*base, "--overwrite"]) == 0
    assert bayesmix.read_results(out).attrs == df.attrs
    # The report needs the provenance: a CSV parted from its metadata is one clear error.
    meta.unlink()
    _one_line_error(capsys, ["report", str(out), "--out", str(tmp_path / "r.html")],
                    r"r.csv has no provenance .* r.csv-metadata.json is missing")  # fmt: skip
    assert not (tmp_path / "r.html").exists()


def test_error_bad_prior_and_options(tmp_path, sim_dir, capsys):
    base = ["fit", str(sim_dir / "frames.npy"), "--ref-a", str(sim_dir / "ref_a.npy"),
            "--ref-b", str(sim_dir / "ref_b.npy"), "--out", str(tmp_path / "r.csv")]  # fmt: skip
    _one_line_error(
        capsys,
        [*base, "--prior", "gamma:1,2"],
        r"unknown prior 'gamma'; expected one of: truncnormal",
    )
    _one_line_error(capsys, [*base, "--prior", "uniform:0.8,0.2"], r"bounds|low")
    _one_line_error(
        capsys, [*base, "--idata", str(tmp_path / "p.nc")], r"--idata needs --method nuts"
    )
    _one_line_error(
        capsys, [*base, "--out", str(tmp_path / "r.xlsx")], r"use one of .csv, .parquet, .nc"
    )


def test_error_device_without_gpu(tmp_path, sim_dir, capsys):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    _one_line_error(capsys, ["fit", str(sim_dir / "frames.npy"), "--ref-a", str(sim_dir / "ref_a.npy"),
                             "--ref-b", str(sim_dir / "ref_b.npy"), "--out", str(tmp_path / "r.csv"),
                             "--device", "gpu"], r"device='gpu': JAX sees no GPU")  # fmt: skip


def test_usage_errors_and_help_in_a_subprocess(tmp_path, capsys):
    bad = _run("fit", "x.npy", cwd=tmp_path)  # --ref-a missing
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "the following arguments are required: --ref-a, --ref-b" in bad.stderr
    missing = _run("fit", "nope.npy", "--ref-a", "a.npy", "--ref-b", "b.npy", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert missing.stderr == "bayesmix: error: no such file or folder: nope.npy\n"
    helped = _run("fit", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "examples:" in helped.stdout
    for cmd in ("demo", "simulate", "report"):  # the same parser in this process: no new import
        assert main([cmd, "--help"]) == 0 and "examples:" in capsys.readouterr().out, cmd


def test_end_to_end_simulate_then_nuts_recovers_x(tmp_path):
    # 400 frames: the coverage of 90% intervals has binomial sd 1.5%; +/- 5% is > 3 sd.
    sim = _run("simulate", "s", "--frames", "400", "--shape", "16", "16", "--noise", "0.3",
               "--seed", "11", cwd=tmp_path)  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    fit = _run("fit", "s/frames.npy", "--ref-a", "s/ref_a.npy", "--ref-b", "s/ref_b.npy",
               "--method", "nuts", "--chains", "2", "--warmup", "200", "--samples", "200",
               "--out", "nuts.parquet", "--idata", "post.nc", "--report", "nuts.html",
               cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "R-hat max" in fit.stdout and "wrote post.nc" in fit.stdout
    df = bayesmix.read_results(tmp_path / "nuts.parquet")
    truth = pd.read_csv(tmp_path / "s" / "x_true.csv")["x"].to_numpy()
    inside = (df["q05"].to_numpy() <= truth) & (truth <= df["q95"].to_numpy())
    assert 0.85 <= inside.mean() <= 0.95, inside.mean()
    assert df.attrs["method"] == "nuts" and df.attrs["seed"] == 0
    # Every R-hat within what chance gives chains of this length (2 x 200 draws, 401 variables).
    table = bayesmix.diagnose(bayesmix.read_idata(tmp_path / "post.nc")).table
    assert (table["rhat"] <= table["rhat_limit"]).all()
    np.testing.assert_allclose(df["rhat"].to_numpy(), table.loc[[f"x[{i}]" for i in range(400)],
                               "rhat"].to_numpy())  # fmt: skip
    html = (tmp_path / "nuts.html").read_text()
    assert "Trace and rank plots" in html and "Energy" in html
    idata = bayesmix.read_idata(tmp_path / "post.nc")
    assert idata.posterior["x"].shape == (2, 200, 400)
    rep = _run("report", "post.nc", "--out", "again.html", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "Diagnostics" in (tmp_path / "again.html").read_text()


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (bayesmix.InputError("bad --prior"), 2),  # the user's input
        (FileExistsError("out.csv already exists"), 2),  # a path the user named
        (ValueError("operands could not be broadcast"), 1),  # a bug below bayesmix, not the user
        (KeyError("x_map"), 1),
    ],
)
def test_exit_status_2_only_for_the_users_input(exc, status, monkeypatch, capsys):
    """Exit 2 with one line for bad input; anything else is a bug: its traceback, a sentence
    saying so, exit 1 (a ValueError from deep inside is no longer passed off as a typo)."""

    def command(args):
        raise exc

    monkeypatch.setitem(cli.COMMANDS, "demo", command)
    assert main(["demo"]) == status
    err = capsys.readouterr().err
    if status == 2:
        assert err.count("\n") == 1 and "Traceback" not in err and str(exc.args[0]) in err
    else:
        assert "Traceback (most recent call last)" in err and "internal error" in err
