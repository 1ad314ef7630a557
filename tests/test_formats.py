"""Readers and writers: every format gives the same stack and the same x; bad files get one clear
error; results files round-trip with their provenance."""

from __future__ import annotations

import csv
import json

import dask.array as da
import h5py
import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
import xarray as xr
import zarr

import bayesmix
from bayesmix._io import atomic_write_all
from bayesmix._results import clean_attrs
from bayesmix._writers import map_result_from_table, results_table

N_FRAMES, SHAPE = 40, (12, 16)


@pytest.fixture(scope="module")
def stack16():
    """A uint16 stack that uses the top of its range (a naive int sum would overflow)."""
    sim = bayesmix.simulate(N_FRAMES, shape=SHAPE, noise=0.05, seed=3)
    scale = 60_000.0
    frames = np.clip(np.rint(sim.frames * scale), 0, 65535).astype(np.uint16)
    a = np.rint(sim.ref_a * scale).astype(np.uint16)
    b = np.rint(sim.ref_b * scale).astype(np.uint16)
    return frames, a, b


def _write_all(d, frames):
    """The stack in every format; returns {name: source} for read_frames."""
    tifffile.imwrite(d / "stack.tif", frames)
    (d / "pngs").mkdir()
    for i, f in enumerate(frames):  # names that sort wrongly as text: f2 < f10 only naturally
        iio.imwrite(d / "pngs" / f"f{i}.png", f)
    (d / "tifs").mkdir()
    for i, f in enumerate(frames):
        tifffile.imwrite(d / "tifs" / f"page_{i}.tiff", f)
    np.save(d / "stack.npy", frames)
    np.savez(d / "stack.npz", frames=frames, other=frames[0])
    with h5py.File(d / "stack.h5", "w") as f:
        f.create_dataset("entry/frames", data=frames, chunks=(7, *SHAPE))
    zarr.save_array(str(d / "stack.zarr"), frames)
    return {
        "tiff": d / "stack.tif",
        "png folder": d / "pngs",
        "tiff glob": str(d / "tifs" / "*.tiff"),
        "npy": d / "stack.npy",
        "npz": f"{d}/stack.npz:frames",
        "hdf5": f"{d}/stack.h5:/entry/frames",
        "zarr": d / "stack.zarr",
        "xarray": xr.DataArray(frames, dims=("frame", "y", "x")),
        "dask": da.from_array(frames, chunks=(9, *SHAPE)),
    }


def test_every_reader_gives_the_same_stack_and_the_same_x(tmp_path, stack16):
    frames, a, b = stack16
    expected = bayesmix.fit_map(frames, a, b)
    for name, source in _write_all(tmp_path, frames).items():
        got = bayesmix.read_frames(source)
        assert got.data.shape == frames.shape, name
        np.testing.assert_array_equal(np.asarray(got.data[:]), frames, err_msg=name)
        res = bayesmix.fit_map(got.data, a, b)
        # Same numbers in the same dtype whatever the container: bit for bit.
        np.testing.assert_array_equal(res.x, expected.x, err_msg=name)
        assert res.sigma == expected.sigma, name


def test_sources_name_files_and_pages_in_natural_order(tmp_path, stack16):
    frames = stack16[0]
    sources = _write_all(tmp_path, frames)
    assert list(bayesmix.read_frames(sources["tiff"]).source[:3]) == [
        "stack.tif:0", "stack.tif:1", "stack.tif:2"
    ]  # fmt: skip
    names = bayesmix.read_frames(sources["png folder"]).source
    assert list(names[:3]) == ["f0.png", "f1.png", "f2.png"] and names[10] == "f10.png"
    assert bayesmix.read_frames(sources["npy"]).source is None


def test_npy_is_memory_mapped(tmp_path, stack16):
    np.save(tmp_path / "s.npy", stack16[0])
    assert isinstance(bayesmix.read_frames(tmp_path / "s.npy").data, np.memmap)


def test_uint8_and_uint16_do_not_overflow(stack16):
    frames, a, b = stack16
    ref = bayesmix.fit_map(frames.astype(np.float64), a.astype(np.float64), b.astype(np.float64))
    res = bayesmix.fit_map(frames, a, b)
    # uint16 is converted exactly to float32; float32 vs float64 agree to float32 rounding of
    # the statistics (relative ~1e-6 of the weight's sd).
    np.testing.assert_allclose(res.x, ref.x, atol=1e-4 * float(np.median(ref.sd)))
    f8, a8, b8 = (np.right_shift(v, 8).astype(np.uint8) for v in (frames, a, b))
    r8 = bayesmix.fit_map(f8, a8, b8)
    r8f = bayesmix.fit_map(f8.astype(float), a8.astype(float), b8.astype(float))
    np.testing.assert_allclose(r8.x, r8f.x, atol=1e-4 * float(np.median(r8f.sd)))


def test_references_from_images_and_containers(tmp_path, stack16):
    _, a, _ = stack16
    iio.imwrite(tmp_path / "a.png", a)
    tifffile.imwrite(tmp_path / "a.tif", a)
    np.save(tmp_path / "a.npy", a)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["refs/a"] = a
    for src in ("a.png", "a.tif", "a.npy", "r.h5:/refs/a"):
        np.testing.assert_array_equal(bayesmix.read_reference(tmp_path / src), a)


def test_xarray_frame_dimension_is_moved_first():
    data = np.arange(2 * 3 * 5, dtype=np.float32).reshape(3, 2, 5)  # (y, frame, x)
    got = bayesmix.read_frames(xr.DataArray(data, dims=("y", "frame", "x")))
    np.testing.assert_array_equal(np.asarray(got.data), data.transpose(1, 0, 2))
    with pytest.raises(ValueError, match="needs a 'frame' dimension"):
        bayesmix.read_frames(xr.DataArray(data, dims=("y", "t", "x")))


# One test per bad source: the message names the file and what to do.
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: .*nope.tif"):
        bayesmix.read_frames(tmp_path / "nope.tif")


def test_corrupt_tiff(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x07" * 200)
    with pytest.raises(ValueError, match=r"cannot read .*bad.tif as TIFF"):
        bayesmix.read_frames(tmp_path / "bad.tif")


def test_truncated_tiff(tmp_path, stack16):
    tifffile.imwrite(tmp_path / "t.tif", stack16[0])
    raw = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"cannot read .*cut.tif as TIFF"):
        bayesmix.read_frames(tmp_path / "cut.tif")


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"holds Python objects .* allow_pickle=False"):
        bayesmix.read_frames(tmp_path / "evil.npy")


def test_truncated_npy(tmp_path, stack16):
    np.save(tmp_path / "s.npy", stack16[0])
    raw = (tmp_path / "s.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:1000])
    with pytest.raises(ValueError, match=r"cannot read .*cut.npy as .npy"):
        bayesmix.read_frames(tmp_path / "cut.npy")


def test_npz_needs_a_name_when_it_holds_several(tmp_path, stack16):
    np.savez(tmp_path / "s.npz", a=stack16[0], b=stack16[1])
    with pytest.raises(ValueError, match=r"holds 2 arrays \['a', 'b'\]; name one"):
        bayesmix.read_frames(tmp_path / "s.npz")


def test_wrong_hdf5_dataset(tmp_path, stack16):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["data"] = stack16[0]
    with pytest.raises(ValueError, match="has no dataset '/nope'"):
        bayesmix.read_frames(f"{tmp_path}/s.h5:/nope")


def test_not_hdf5(tmp_path):
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"cannot read .*x.h5 as HDF5"):
        bayesmix.read_frames(tmp_path / "x.h5")


def test_unknown_extension(tmp_path):
    (tmp_path / "x.fits").write_text("SIMPLE")
    with pytest.raises(ValueError, match=r"cannot tell the format .* supported: .npy"):
        bayesmix.read_frames(tmp_path / "x.fits")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no PNG or TIFF image"):
        bayesmix.read_frames(tmp_path / "empty")


def test_images_of_different_shapes(tmp_path):
    (tmp_path / "imgs").mkdir()
    iio.imwrite(tmp_path / "imgs" / "a1.png", np.zeros((4, 4), np.uint8))
    iio.imwrite(tmp_path / "imgs" / "a2.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"must share shape and dtype: a1.png is"):
        bayesmix.read_frames(tmp_path / "imgs")


# Writers.
@pytest.fixture(scope="module")
def fitted(stack16):
    frames, a, b = stack16
    return bayesmix.fit_map(frames, a, b, prior=bayesmix.Beta(3.0, 2.5))


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".nc"])
def test_results_round_trip_with_provenance(tmp_path, fitted, ext):
    labels = np.asarray([f"stack.tif:{i}" for i in range(N_FRAMES)])
    path = bayesmix.write_results(fitted, tmp_path / f"r{ext}", source=labels, meta={"seed": 7})
    df = bayesmix.read_results(path)
    expected = fitted.to_dataframe()
    assert list(df["source"]) == list(labels)
    for col in expected.columns:
        np.testing.assert_array_equal(df[col].to_numpy(), expected[col].to_numpy(), err_msg=col)
    assert df.attrs["prior"] == "beta:3,2.5" and df.attrs["seed"] == 7
    assert df.attrs["bayesmix_version"] == bayesmix.__version__
    assert df.attrs["sigma"] == fitted.sigma
    rebuilt = map_result_from_table(df)
    np.testing.assert_array_equal(rebuilt.interval(0.8)[0], fitted.interval(0.8)[0])


def test_writers_never_overwrite_unasked(tmp_path, fitted):
    path = bayesmix.write_results(fitted, tmp_path / "r.csv")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        bayesmix.write_results(fitted, path)
    assert path.read_bytes() == before
    bayesmix.write_results(fitted, path, prob=0.5, overwrite=True)
    assert "q25" in bayesmix.read_results(path).columns
    # The CSV and its metadata, no temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv-metadata.json"]


# CSV: a plain table (pandas, R and spreadsheets open it with their defaults) and a CSVW metadata
# file beside it with the provenance.
def _strict_json(path):
    """The JSON of ``path``, refusing NaN/Infinity (not JSON, though Python writes them)."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_map_csv_opens_with_defaults_and_round_trips(tmp_path, fitted):
    labels = np.asarray([f"stack.tif:{i}" for i in range(N_FRAMES)])
    meta = {"seed": 7, "frames": ["a.tif", "b.tif"], "flag": True, "limit": float("inf")}
    path = bayesmix.write_results(fitted, tmp_path / "r.csv", source=labels, meta=meta)
    want = results_table(fitted, source=labels)
    plain = pd.read_csv(path)  # pandas' defaults: header first, every dtype inferred right
    assert list(plain.columns) == ["frame", *want.columns]
    pd.testing.assert_frame_equal(plain.set_index("frame"), want)
    back = bayesmix.read_results(path)
    pd.testing.assert_frame_equal(back, want)
    assert back.attrs == {**want.attrs, **meta}
    assert back.attrs["prob"] == 0.9 and back.attrs["sigma"] == fitted.sigma


def test_nuts_csv_opens_with_defaults_and_round_trips(tmp_path):
    # The data, prior and settings of test_reproducible's runs: one compiled program for both.
    sim = bayesmix.simulate(20, shape=(8, 8), noise=0.3, seed=1)
    idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, seed=7, num_chains=2,
                            num_warmup=100, num_samples=100, progress=False,
                            prior=bayesmix.TruncatedNormal(0.5, 0.2, 0.1, 0.9))  # fmt: skip
    path = bayesmix.write_results(idata, tmp_path / "nuts.csv", columns={"x_true": sim.x})
    want = results_table(idata, columns={"x_true": sim.x})
    assert {"rhat", "ess_bulk", "x_true"} <= set(want.columns)
    pd.testing.assert_frame_equal(pd.read_csv(path).set_index("frame"), want)
    back = bayesmix.read_results(path)
    pd.testing.assert_frame_equal(back, want)
    assert back.attrs == want.attrs and back.attrs["method"] == "nuts"


def test_simplex_csv_describes_every_reference(tmp_path):
    rng = np.random.default_rng(0)
    refs = rng.random((3, 8, 8))
    frames = np.einsum("nk,kij->nij", rng.dirichlet(np.ones(3), 20), refs)
    frames += 0.05 * rng.standard_normal(frames.shape)
    res = bayesmix.fit_map(frames, *refs, ref_names=("fe", "fe2o3", "fe3o4"), draws=100)
    path = bayesmix.write_results(res, tmp_path / "k3.csv")
    want = results_table(res)
    pd.testing.assert_frame_equal(pd.read_csv(path).set_index("frame"), want)
    back = bayesmix.read_results(path)
    pd.testing.assert_frame_equal(back, want)
    assert back.attrs == {**want.attrs, "references": ["fe", "fe2o3", "fe3o4"]}
    np.testing.assert_array_equal(map_result_from_table(back).mean, res.mean)
    columns = {c["titles"]: c for c in _strict_json(tmp_path / "k3.csv-metadata.json")
               ["tableSchema"]["columns"]}  # fmt: skip
    described = {t: c.get("dc:description", "") for t, c in columns.items()}
    assert described["mean_fe2o3"] == "posterior mean of the weight of reference fe2o3"
    assert "upper end of the equal-tailed 90% interval" in described["q95_fe3o4"]
    assert described["m_0_2"] and columns["w_1"]["datatype"] == "double"


def test_csvw_metadata_names_every_column_in_order(tmp_path, fitted):
    labels = np.asarray([f"s.tif:{i}" for i in range(N_FRAMES)])
    path = bayesmix.write_results(fitted, tmp_path / "r.csv", source=labels, meta={"seed": 7})
    meta = _strict_json(tmp_path / "r.csv-metadata.json")
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    assert meta["@context"] == "http://www.w3.org/ns/csvw" and meta["url"] == "r.csv"
    schema = meta["tableSchema"]
    assert [c["titles"] for c in schema["columns"]] == header
    assert [c["name"] for c in schema["columns"]] == header  # valid CSVW names already
    assert schema["primaryKey"] == "frame" and header[0] == "frame"
    types = {c["titles"]: c["datatype"] for c in schema["columns"]}
    assert types["frame"] == types["n_pixels"] == "integer" and types["source"] == "string"
    assert types["at_bound"] == "boolean" and types["x_map"] == types["q05"] == "double"
    described = {c["titles"]: c.get("dc:description", "") for c in schema["columns"]}
    assert "Benjamini-Hochberg q-value" in described["misfit_q"]
    assert "flagged badly fit when misfit_q < 0.05" in described["misfit_q"]
    assert "lower end of the equal-tailed 90% interval" in described["q05"]
    assert all(described[c] for c in ("x_map", "mean", "sd", "r2", "at_bound", "misfit_p", "xhat",
                                      "rss", "dd", "n_pixels", "source"))  # fmt: skip
    assert meta["bayesmix"] == bayesmix.read_results(path).attrs
    assert meta["bayesmix"]["prior"] == "beta:3,2.5" and meta["bayesmix"]["seed"] == 7


def test_csv_cells_booleans_infinities_and_text(tmp_path, fitted):
    n = N_FRAMES
    odd = np.linspace(0.0, 1.0, n)
    odd[:3] = [np.inf, -np.inf, np.nan]
    text = np.asarray(["NA", "", "1.5", "a,b", 'say "hi"', *(["x"] * (n - 5))])
    extra = {"flag": np.arange(n) % 2 == 0, "odd": odd, "label": text,
             "count": np.arange(n, dtype=np.int32),
             "f32": np.linspace(0, 1, n, dtype=np.float32)}  # fmt: skip
    path = bayesmix.write_results(fitted, tmp_path / "r.csv", columns=extra)
    lines = path.read_text().splitlines()
    assert lines[1].startswith("0,true,INF,NA,0,0,") and lines[2].startswith("1,false,-INF,,1,")
    plain = pd.read_csv(path)  # defaults: booleans, infinities and missing numbers understood
    assert plain["flag"].dtype == bool and np.isinf(plain["odd"][:2]).all()
    np.testing.assert_array_equal(plain["odd"], odd)
    back = bayesmix.read_results(path)  # the declared types: text stays text, widths kept
    pd.testing.assert_frame_equal(back, results_table(fitted, columns=extra))
    assert list(back["label"][:5]) == ["NA", "", "1.5", "a,b", 'say "hi"']


def test_old_commented_csv_still_reads(tmp_path, fitted):
    """A CSV of earlier versions: '# key: value' provenance lines, then the table."""
    df = results_table(fitted)
    attrs = clean_attrs({**df.attrs, "seed": 7})
    path = tmp_path / "old.csv"
    with open(path, "w", newline="") as fh:
        fh.writelines(f"# {key}: {json.dumps(value)}\n" for key, value in attrs.items())
        df.to_csv(fh, float_format="%.17g")
    back = bayesmix.read_results(path)
    # As before: a float column of whole numbers (dd of integer frames) was written as '3'.
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back.attrs == attrs and back.attrs["prior"] == "beta:3,2.5"
    np.testing.assert_array_equal(map_result_from_table(back).interval(0.8)[0],
                                  fitted.interval(0.8)[0])  # fmt: skip


def test_csv_without_metadata_reads_with_empty_attrs(tmp_path, fitted):
    path = bayesmix.write_results(fitted, tmp_path / "r.csv")
    (tmp_path / "r.csv-metadata.json").unlink()
    back = bayesmix.read_results(path)
    assert back.attrs == {}
    pd.testing.assert_frame_equal(back, results_table(fitted), check_flags=False)


def test_csv_and_its_metadata_are_refused_together(tmp_path, fitted):
    csv_path, meta_path = tmp_path / "r.csv", tmp_path / "r.csv-metadata.json"
    meta_path.write_text("{}")
    with pytest.raises(FileExistsError, match=r"r.csv-metadata.json already exists; pass"):
        bayesmix.write_results(fitted, csv_path)
    assert not csv_path.exists() and meta_path.read_text() == "{}"  # nothing half-done
    meta_path.unlink()
    csv_path.write_text("precious")
    with pytest.raises(FileExistsError, match=r"r.csv already exists; pass overwrite"):
        bayesmix.write_results(fitted, csv_path)
    assert csv_path.read_text() == "precious" and not meta_path.exists()
    bayesmix.write_results(fitted, csv_path, overwrite=True)
    assert bayesmix.read_results(csv_path).attrs["method"] == "map"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv-metadata.json"]


def test_failed_write_leaves_no_half_pair(tmp_path, fitted):
    def boom(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_all([(tmp_path / "a.json", lambda tmp: None), (tmp_path / "a.csv", boom)])
    assert list(tmp_path.iterdir()) == []  # no target, no temporary file
    # The CSV's rename fails (a folder is in its way): its metadata, renamed first, is removed.
    (tmp_path / "r.csv").mkdir()
    with pytest.raises(IsADirectoryError):
        bayesmix.write_results(fitted, tmp_path / "r.csv", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_metadata_of_another_table_is_refused(tmp_path, fitted):
    bayesmix.write_results(fitted, tmp_path / "r.csv")
    bayesmix.write_results(fitted, tmp_path / "other.csv", prob=0.5)
    (tmp_path / "other.csv-metadata.json").replace(tmp_path / "r.csv-metadata.json")
    with pytest.raises(bayesmix.InputError, match=r"q25.*q05.*do not belong together"):
        bayesmix.read_results(tmp_path / "r.csv")


def test_results_format_from_extension(tmp_path, fitted):
    with pytest.raises(ValueError, match=r"use one of .csv, .parquet, .nc"):
        bayesmix.write_results(fitted, tmp_path / "r.xlsx")


def test_write_idata_needs_nc(tmp_path):
    with pytest.raises(ValueError, match=r"written as netCDF: give a path ending in .nc"):
        bayesmix.write_idata(None, tmp_path / "p.csv")


def test_hdf5_dataset_found_when_it_is_the_only_one(tmp_path, stack16):
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_group("meta").attrs["energy"] = 710.0
        f["entry/instrument/frames"] = stack16[0]
    np.testing.assert_array_equal(bayesmix.read_frames(tmp_path / "one.h5").data[:], stack16[0])
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["g/b"] = stack16[1], stack16[2]
    with pytest.raises(ValueError, match=r"holds 2 datasets \['a', 'g/b'\]; name one"):
        bayesmix.read_frames(tmp_path / "two.h5")


def test_multipage_tiff_is_read_lazily_page_by_page(tmp_path, stack16):
    frames, a, b = stack16
    tifffile.imwrite(tmp_path / "s.tif", frames)
    got = bayesmix.read_frames(tmp_path / "s.tif").data
    assert not isinstance(got, np.ndarray) and got.shape == frames.shape
    np.testing.assert_array_equal(got[5:9], frames[5:9])
    np.testing.assert_array_equal(got[7], frames[7])
    # Streamed through the statistics pass 3 pages at a time: the same answer.
    res = bayesmix.fit_map(got, a, b, chunk_size=3)
    np.testing.assert_array_equal(res.x, bayesmix.fit_map(frames, a, b).x)


def test_tiff_pages_of_different_shapes(tmp_path):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(np.zeros((4, 4), np.uint8))
        tif.write(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"mixed.tif as TIFF: its pages differ in shape or dtype"):
        bayesmix.read_frames(tmp_path / "mixed.tif")
