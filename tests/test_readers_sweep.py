"""Reader sweep: TIFF hyperstacks by their axes (ImageJ, OME, tifffile's own), glob patterns with
brackets in folder names, and results CSVs a spreadsheet has touched (decimal commas, semicolons,
no rows, text in numeric columns). Every error names the file."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

import bayesmix
from bayesmix.cli import main

T, Z, C, Y, X = 5, 3, 2, 4, 6


@pytest.fixture(scope="module")
def tcyx():
    return np.random.default_rng(0).integers(0, 60000, (T, C, Y, X)).astype(np.uint16)


def _write(path: Path, data: np.ndarray, axes: str | None, how: str) -> Path:
    kw = {"imagej": {"imagej": True}, "ome": {"ome": True}, "shaped": {}}[how]
    tifffile.imwrite(path, data, metadata=None if axes is None else {"axes": axes}, **kw)
    return path


# --- 1. hyperstacks --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["imagej", "ome", "shaped"])
def test_tcyx_gives_t_frames_with_channels_last(tmp_path, tcyx, how):
    path = _write(tmp_path / "h.tif", tcyx, "TCYX", how)
    frames = bayesmix.read_frames(path)
    want = tcyx.transpose(0, 2, 3, 1)  # (T, Y, X, C): channels last, like an RGB image
    assert frames.data.shape == (T, Y, X, C)
    np.testing.assert_array_equal(np.asarray(frames.data), want)
    # Lazy reads pick the right pages: a slice, a single frame, a stride.
    np.testing.assert_array_equal(frames.data[1:4], want[1:4])
    np.testing.assert_array_equal(frames.data[3], want[3])
    np.testing.assert_array_equal(frames.data[::2], want[::2])
    assert list(frames.source) == [f"h.tif:T={i}" for i in range(T)]


def test_ome_axes_in_any_order(tmp_path, tcyx):
    # OME's dimension order may put C before T: the frames are the same.
    path = _write(tmp_path / "ct.ome.tif", tcyx.transpose(1, 0, 2, 3).copy(), "CTYX", "ome")
    np.testing.assert_array_equal(np.asarray(bayesmix.read_frames(path).data),
                                  tcyx.transpose(0, 2, 3, 1))  # fmt: skip


@pytest.mark.parametrize("how", ["imagej", "ome"])
def test_tzcyx_frames_are_volumes(tmp_path, how):
    data = np.arange(T * Z * C * Y * X, dtype=np.uint16).reshape(T, Z, C, Y, X)
    frames = bayesmix.read_frames(_write(tmp_path / "v.tif", data, "TZCYX", how))
    assert frames.data.shape == (T, Z, Y, X, C)
    np.testing.assert_array_equal(np.asarray(frames.data), data.transpose(0, 1, 3, 4, 2))
    assert frames.source[2] == "v.tif:T=2"


def test_z_is_the_frame_axis_without_t(tmp_path, tcyx):
    frames = bayesmix.read_frames(_write(tmp_path / "z.tif", tcyx, "ZCYX", "imagej"))
    np.testing.assert_array_equal(np.asarray(frames.data), tcyx.transpose(0, 2, 3, 1))
    assert frames.source[1] == "z.tif:Z=1"
    # A plain ImageJ stack (slices) reads one frame per slice, as before.
    zyx = bayesmix.read_frames(_write(tmp_path / "zyx.tif", tcyx[:, 0], "ZYX", "imagej"))
    np.testing.assert_array_equal(np.asarray(zyx.data), tcyx[:, 0])


@pytest.mark.parametrize("how", ["imagej", "ome"])
def test_cyx_is_one_multichannel_frame(tmp_path, tcyx, how):
    path = _write(tmp_path / "c.tif", tcyx[0], "CYX", how)
    frames = bayesmix.read_frames(path)
    assert frames.data.shape == (1, Y, X, C) and list(frames.source) == ["c.tif:0"]
    np.testing.assert_array_equal(frames.data[0], tcyx[0].transpose(1, 2, 0))
    # As a reference, in a folder: the same (Y, X, C) image.
    np.testing.assert_array_equal(bayesmix.read_reference(path), tcyx[0].transpose(1, 2, 0))
    (tmp_path / "dir").mkdir()
    for i in range(3):
        _write(tmp_path / "dir" / f"c{i}.tif", tcyx[i], "CYX", how)
    np.testing.assert_array_equal(bayesmix.read_frames(tmp_path / "dir").data,
                                  tcyx[:3].transpose(0, 2, 3, 1))  # fmt: skip


def test_length_one_axes_are_dropped(tmp_path, tcyx):
    # One time point: the file is one multi-channel frame; one channel: plain (Y, X) frames.
    one_t = bayesmix.read_frames(_write(tmp_path / "t1.tif", tcyx[:1], "TCYX", "imagej"))
    assert one_t.data.shape == (1, Y, X, C)
    one_c = bayesmix.read_frames(_write(tmp_path / "c1.tif", tcyx[:, :1], "TCYX", "imagej"))
    np.testing.assert_array_equal(np.asarray(one_c.data), tcyx[:, 0])


def test_plain_multipage_tiffs_are_unchanged(tmp_path, tcyx):
    # No axes metadata: one frame per page, labelled by page, whatever the array's shape.
    tifffile.imwrite(tmp_path / "p.tif", tcyx)
    frames = bayesmix.read_frames(tmp_path / "p.tif")
    np.testing.assert_array_equal(np.asarray(frames.data), tcyx.reshape(T * C, Y, X))
    assert frames.source[3] == "p.tif:3"


def test_rgb_samples_are_last_whatever_the_planar_layout(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (T, Y, X, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "contig.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", rgb.transpose(0, 3, 1, 2).copy(), photometric="rgb",
                     planarconfig="separate")  # fmt: skip
    _write(tmp_path / "ij.tif", rgb, "TYXS", "imagej")
    for name in ("contig.tif", "planar.tif", "ij.tif"):
        np.testing.assert_array_equal(np.asarray(bayesmix.read_frames(tmp_path / name).data), rgb)
    tifffile.imwrite(tmp_path / "one.tif", rgb[0].transpose(2, 0, 1).copy(), photometric="rgb",
                     planarconfig="separate")  # fmt: skip
    np.testing.assert_array_equal(bayesmix.read_reference(tmp_path / "one.tif"), rgb[0])


def test_unmappable_axes_are_refused(tmp_path, tcyx):
    path = _write(tmp_path / "angles.ome.tif", tcyx, "TAYX", "ome")
    with pytest.raises(bayesmix.InputError, match=r"angles.ome.tif as a stack of frames: its axes "
                       r"'TAYX' .* \(axis A\); supported: T \(time"):  # fmt: skip
        bayesmix.read_frames(path)


def test_several_series_are_refused(tmp_path, tcyx):
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tif:
        tif.write(tcyx, metadata={"axes": "TCYX"})
        tif.write(tcyx, metadata={"axes": "TCYX"})
    with pytest.raises(bayesmix.InputError, match=r"two.ome.tif as TIFF: it holds 2 image series"):
        bayesmix.read_frames(tmp_path / "two.ome.tif")


def test_fit_from_a_hyperstack_equals_the_fit_of_the_array(tmp_path):
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.2, 1.0, (2, Y, X, C))  # two-channel references
    sim = bayesmix.simulate(12, ref_a=a, ref_b=b, noise=0.05, seed=2)
    frames = sim.frames.astype(np.float32)
    tifffile.imwrite(tmp_path / "s.tif", frames.transpose(0, 3, 1, 2).copy(), imagej=True,
                     metadata={"axes": "TCYX"})  # fmt: skip
    tifffile.imwrite(tmp_path / "a.tif", sim.ref_a.transpose(2, 0, 1).astype(np.float32),
                     imagej=True, metadata={"axes": "CYX"})  # fmt: skip
    got = bayesmix.read_frames(tmp_path / "s.tif").data
    a = bayesmix.read_reference(tmp_path / "a.tif")
    np.testing.assert_array_equal(a, sim.ref_a.astype(np.float32))
    res = bayesmix.fit_map(got, a, sim.ref_b.astype(np.float32))
    ref = bayesmix.fit_map(frames, sim.ref_a.astype(np.float32), sim.ref_b.astype(np.float32))
    np.testing.assert_array_equal(res.x, ref.x)


# --- 2. glob patterns ------------------------------------------------------------------------


@pytest.fixture
def scans(tmp_path):
    for folder, value in (("scan1", 1), ("scan[1]", 2)):
        (tmp_path / folder).mkdir()
        for i in range(3 if value == 1 else 2):
            iio.imwrite(tmp_path / folder / f"f{i}.png", np.full((Y, X), value, np.uint8))
    return tmp_path


def test_brackets_in_a_pattern_are_literal(scans):
    frames = bayesmix.read_frames(str(scans / "scan[1]" / "*.png"))
    assert frames.data.shape == (2, Y, X) and (frames.data == 2).all()  # never scan1/
    assert (bayesmix.read_frames(str(scans / "scan[1]")).data == 2).all()  # the folder itself
    assert bayesmix.read_frames(str(scans / "scan?" / "*.png")).data.shape == (3, Y, X)


def test_a_pattern_that_matches_nothing_says_so(scans):
    pattern = str(scans / "scan[2]" / "*.png")
    with pytest.raises(bayesmix.InputError, match=re.escape(f"no file matches the pattern "
                       f"{pattern!r}") + r".* the folder .*scan\[2\]' does not exist"):  # fmt: skip
        bayesmix.read_frames(pattern)
    with pytest.raises(bayesmix.InputError, match=r"no file matches the pattern .*scan\[1\]/\*.tif"
                       r"' \(only \* and \? are wildcards; \[ and \] match themselves\)$"):  # fmt: skip
        bayesmix.read_frames(str(scans / "scan[1]" / "*.tif"))
    (scans / "notes.txt").write_text("x")
    with pytest.raises(bayesmix.InputError, match=r"the pattern .*\*.txt' matches 1 path\(s\) but "
                       r"no PNG or TIFF image .* e.g. notes.txt"):  # fmt: skip
        bayesmix.read_frames(str(scans / "*.txt"))
    # Brackets without a wildcard name a path: a missing one is a missing file.
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: .*scan\[3\]"):
        bayesmix.read_frames(str(scans / "scan[3]"))


# --- 3. results CSVs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    sim = bayesmix.simulate(6, shape=(6, 6), noise=0.1, seed=0)
    path = bayesmix.write_results(bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b), d / "r.csv")
    return path.read_text().splitlines(), (d / "r.csv-metadata.json").read_text()


def _edited(tmp_path, written, column, row, value, name="e.csv", sidecar=True):
    """The results CSV with one cell replaced, its metadata file beside it (or not)."""
    lines, meta = list(written[0]), written[1]
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    if sidecar:
        (tmp_path / f"{name}-metadata.json").write_text(meta)
    return tmp_path / name


def test_semicolons_and_decimal_commas(tmp_path):
    (tmp_path / "eu.csv").write_text("x;sd\n0,5;0,1\n0,25;0,2\n")
    with pytest.raises(bayesmix.InputError, match=r"eu.csv is separated by semicolons \(';'\) and "
                       r"its numbers look like decimal commas \(column 'x' holds '0,5'\).*"
                       r"pandas.read_csv\(path, sep=';', decimal=','\)"):  # fmt: skip
        bayesmix.read_results(tmp_path / "eu.csv")
    (tmp_path / "semi.csv").write_text("frame;x_map\n0;1\n")
    with pytest.raises(bayesmix.InputError, match=r"semi.csv is separated by semicolons \(';'\), "
                       r"not commas \(its header is 'frame;x_map'\)"):  # fmt: skip
        bayesmix.read_results(tmp_path / "semi.csv")
    (tmp_path / "q.csv").write_text('frame,x,sd\n0,"0,5","0,1"\n1,"0,25","0,2"\n')
    with pytest.raises(bayesmix.InputError, match=r"column 'x' of .*q.csv holds numbers with a "
                       r"decimal comma \('0,5' on line 2\).*decimal=','"):  # fmt: skip
        bayesmix.read_results(tmp_path / "q.csv")


def test_the_suggested_conversion_reads(tmp_path):
    import pandas as pd

    (tmp_path / "eu.csv").write_text("frame;x_map;sd\n0;0,5;0,1\n1;0,25;0,2\n")
    pd.read_csv(tmp_path / "eu.csv", sep=";", decimal=",").to_csv(tmp_path / "eu.csv", index=False)
    assert bayesmix.read_results(tmp_path / "eu.csv")["x_map"].tolist() == [0.5, 0.25]


def test_decimal_comma_in_a_described_csv(tmp_path, written):
    path = _edited(tmp_path, written, "sd", 2, '"0,5"')
    with pytest.raises(bayesmix.InputError, match=r"column 'sd' of .*e.csv holds numbers with a "
                       r"decimal comma \('0,5' on line 3\)"):  # fmt: skip
        bayesmix.read_results(path)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("mean", "oops", r"column 'mean' of .*e.csv should hold numbers \(declared double in its "
     r"metadata file\) but holds 'oops' on line 4; correct that cell \(leave it empty"),
    ("n_pixels", "", r"column 'n_pixels' of .*e.csv should hold whole numbers \(declared integer"
     r" in its metadata file\) but holds '' on line 4; correct that cell \(it cannot be missing"),
    ("at_bound", "maybe", r"column 'at_bound' of .*e.csv should hold true or false"),
])  # fmt: skip
def test_declared_types_name_the_cell(tmp_path, written, column, value, message):
    with pytest.raises(bayesmix.InputError, match=message):
        bayesmix.read_results(_edited(tmp_path, written, column, 3, value))


def test_text_in_a_numeric_column_of_a_plain_csv(tmp_path, written):
    path = _edited(tmp_path, written, "sd", 2, "n/a?", sidecar=False)
    with pytest.raises(bayesmix.InputError, match=r"column 'sd' of .*e.csv should hold numbers but"
                       r" holds 'n/a\?' on line 3"):  # fmt: skip
        bayesmix.read_results(path)
    # A column of your own may hold text; a missing number is an empty cell.
    (tmp_path / "own.csv").write_text("frame,note,mean\n0,hello,0.5\n1,,\n")
    df = bayesmix.read_results(tmp_path / "own.csv")
    assert df["note"].iloc[0] == "hello" and np.isnan(df["mean"].iloc[1])


@pytest.mark.parametrize("sidecar", [True, False])
def test_a_header_without_rows(tmp_path, written, sidecar):
    (tmp_path / "h.csv").write_text(written[0][0] + "\n")
    if sidecar:
        (tmp_path / "h.csv-metadata.json").write_text(written[1])
    with pytest.raises(bayesmix.InputError, match=r"h.csv has a header but no rows \(columns "
                       r"frame, x_map, mean, .*, \.\.\.\): a results table has one row per frame"):  # fmt: skip
        bayesmix.read_results(tmp_path / "h.csv")


def test_empty_broken_and_foreign_csvs(tmp_path, written):
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(bayesmix.InputError, match=r"zero.csv holds nothing: a results CSV has a "
                       r"header row"):  # fmt: skip
        bayesmix.read_results(tmp_path / "zero.csv")
    (tmp_path / "latin.csv").write_bytes("frame,x_map\n0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(bayesmix.InputError, match=r"latin.csv is not UTF-8 text"):
        bayesmix.read_results(tmp_path / "latin.csv")
    (tmp_path / "j.csv").write_text("\n".join(written[0]) + "\n")
    (tmp_path / "j.csv-metadata.json").write_text("{broken")
    with pytest.raises(bayesmix.InputError, match=r"cannot read .*j.csv-metadata.json, the "
                       r"metadata file of j.csv, as JSON"):  # fmt: skip
        bayesmix.read_results(tmp_path / "j.csv")
    (tmp_path / "r.xlsx").write_text("x")
    with pytest.raises(bayesmix.InputError, match=r"results format of .*r.xlsx from its extension"):
        bayesmix.read_results(tmp_path / "r.xlsx")


def test_a_bom_does_not_hide_old_provenance_lines(tmp_path):
    (tmp_path / "old.csv").write_text("\ufeff# method: map\nframe,x_map\n0,0.5\n")
    assert bayesmix.read_results(tmp_path / "old.csv").attrs == {"method": "map"}


def test_report_on_a_decimal_comma_csv_exits_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "eu.csv").write_text("frame;x_map\n0;0,5\n")
    assert main(["report", str(tmp_path / "eu.csv"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eu.csv is separated by semicolons" in err, err


# --- 4. every reader error names the file ----------------------------------------------------


def _bad_h5(t):
    with h5py.File(t / "two.h5", "w") as f:
        f["a"], f["b"] = np.zeros(3), np.zeros(3)
    return t / "two.h5"


def _bad_npz(t):
    np.savez(t / "two.npz", a=np.zeros(3), b=np.zeros(3))
    return t / "two.npz"


def _mixed_pngs(t):
    (t / "imgs").mkdir()
    iio.imwrite(t / "imgs" / "a1.png", np.zeros((4, 4), np.uint8))
    iio.imwrite(t / "imgs" / "a2.png", np.zeros((4, 5), np.uint8))
    return t / "imgs"


def _bad_png(t):
    (t / "imgs").mkdir()
    (t / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return t / "imgs"


def _short_spectrum(t):
    np.save(t / "cube.npy", np.zeros((4, 3, 3)))
    return t / "cube.npy"


@pytest.mark.parametrize(("make", "call", "name"), [
    (lambda t: (t / "x.fits").write_text("x") and t / "x.fits", bayesmix.read_frames, "x.fits"),
    (lambda t: (t / "bad.tif").write_bytes(b"II*\x00" + b"\x05" * 64) and t / "bad.tif",
     bayesmix.read_frames, "bad.tif"),
    (_bad_h5, bayesmix.read_frames, "two.h5"),
    (_bad_npz, bayesmix.read_frames, "two.npz"),
    (_mixed_pngs, bayesmix.read_frames, "imgs"),
    (_bad_png, bayesmix.read_frames, "broken.png"),
    (lambda t: (t / "empty").mkdir() or t / "empty", bayesmix.read_frames, "empty"),
    (lambda t: (t / "bad.png").write_bytes(b"nope") and t / "bad.png", bayesmix.read_reference,
     "bad.png"),
    (_short_spectrum, lambda p: bayesmix.read_frames(p, spectral_axis=5), "cube.npy"),
    (lambda t: (t / "r.csv").write_text("a;b\n1;2\n") and t / "r.csv", bayesmix.read_results,
     "r.csv"),
])  # fmt: skip
def test_every_reader_error_names_the_file(tmp_path, make, call, name):
    with pytest.raises(bayesmix.InputError) as info:
        call(make(tmp_path))
    assert name in str(info.value), str(info.value)
