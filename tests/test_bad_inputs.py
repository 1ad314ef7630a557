"""The bad-input catalogue: every row of docs/bad-inputs.md, run. Each bad input gets a clear
error (type and message) or a documented, tested handling; never a wrong number."""

from __future__ import annotations

import re
import warnings
from functools import cache
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

import bayesmix
from bayesmix.cli import main
from bayesmix.priors import (
    Beta,
    Dirichlet,
    InverseGamma,
    PointMassMixture,
    TruncatedNormal,
    Uniform,
    learn,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


@cache
def _sim():
    return bayesmix.simulate(20, shape=(6, 6), noise=0.1, seed=0)


def _fit(frames=None, a=None, b=None, *more, **kw):
    sim = _sim()
    return bayesmix.fit_map(
        sim.frames if frames is None else frames,
        sim.ref_a if a is None else a,
        sim.ref_b if b is None else b,
        *more,
        **kw,
    )


def _third():
    return np.random.default_rng(3).uniform(0, 1, (6, 6))


def _nan_frame():
    f = _sim().frames.copy()
    f[3] = np.nan
    return f


def _inf_pixel():
    f = _sim().frames.copy()
    f[2, 1, 1] = np.inf
    return f


def _equal_where_finite():
    sim = _sim()
    a, b = sim.ref_a.copy(), sim.ref_b.copy()
    b[0, 0] = a[0, 0]
    f = sim.frames.copy()
    f[4] = np.nan
    f[4, 0, 0] = 1.0
    return f, a, b


def _nan_ref():
    a = _sim().ref_a.copy()
    a[0, 0] = np.nan
    return a


def _inf_ref():
    b = _sim().ref_b.copy()
    b[1, 1] = -np.inf
    return b


def _masked_equal():
    sim = _sim()
    b = sim.ref_b.copy()
    b[:2] = sim.ref_a[:2]
    mask = np.zeros((6, 6), bool)
    mask[:2] = True
    return _fit(b=b, mask=mask)


# (id, what, action, expected): expected is ("raises", type, regex), ("warns", type, regex), or
# ("ok", check) where check(result) asserts the documented handling.
def _ok_uint16_full_range(res):
    sim = _sim()
    f = np.rint(sim.frames * 60000).clip(0, 65535)
    ref = bayesmix.fit_map(f, np.rint(sim.ref_a * 60000), np.rint(sim.ref_b * 60000))
    np.testing.assert_allclose(res.x, ref.x, atol=1e-4 * float(np.median(ref.sd)))


def _uint16():
    sim = _sim()
    f = np.rint(sim.frames * 60000).clip(0, 65535).astype(np.uint16)
    return bayesmix.fit_map(f, np.rint(sim.ref_a * 60000).astype(np.uint16),
                            np.rint(sim.ref_b * 60000).astype(np.uint16))  # fmt: skip


def _ok_float16(res):
    sim = _sim()
    ref = bayesmix.fit_map(sim.frames.astype(np.float16).astype(np.float64), sim.ref_a, sim.ref_b)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-4 * float(np.median(ref.sd)))


def _far_outside():
    sim = _sim()
    far = (3.0 * sim.ref_a - 2.0 * sim.ref_b)[None].astype(np.float32)  # x = 3
    return _fit(np.concatenate([sim.frames, far]))


def _ok_far_outside(res):
    # Flagged, not silently clipped: MAP on the bound, at_bound set, xhat kept in the stats.
    assert res.x[-1] == 1.0 and res.at_bound[-1] and res.stats.xhat[-1] == pytest.approx(3.0, 1e-3)
    assert not res.at_bound[:-1].any()


def _unexplained():
    sim = _sim()
    odd = np.random.default_rng(1).uniform(0, 1, (1, 6, 6)).astype(np.float32)
    return _fit(np.concatenate([sim.frames, odd]))


def _ok_unexplained(res):
    p = res.to_dataframe()["misfit_p"].to_numpy()
    assert p[-1] < 1e-6 and np.median(p[:-1]) > 0.01  # flagged by its chi-square misfit


def _zero_noise():
    sim = _sim()
    f = sim.x[:, None, None] * sim.ref_a + (1 - sim.x[:, None, None]) * sim.ref_b
    return _fit(f.astype(np.float64))


def _ok_zero_noise(res):
    np.testing.assert_allclose(res.x, _sim().x, atol=1e-9)
    assert np.all(np.isfinite(res.sd)) and res.sigma < 1e-7


def _ok_equal_to_b(res):
    # No noise and no contrast energy: sigma floors at the contrast's rounding, x = 0 exactly.
    assert np.isfinite(res.sigma) and np.all(np.isfinite(res.sd))
    np.testing.assert_allclose(res.x, 0.0, atol=1e-9)


def _ok_single_frame(res):
    assert res.x.shape == (1,) and np.isfinite(res.sigma)


def _constant_frames():
    return _fit(np.full((20, 6, 6), 0.4, np.float32))


def _ok_constant(res):
    # Flat frames carry no contrast: finite numbers, and an R^2 near 0 says the contrast A - B
    # does not explain them (against ~0.65 for the simulated frames at this noise).
    assert np.all(np.isfinite(res.x)) and np.all(np.isfinite(res.sd)) and (res.r2 < 0.2).all()


def _ok_negative(res):
    sim = _sim()
    np.testing.assert_allclose(res.x, bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b).x,
                               atol=1e-9)  # fmt: skip


def _huge():
    sim = _sim()
    return _fit(sim.frames * np.float32(1e30), sim.ref_a * 1e30, sim.ref_b * 1e30)


def _ok_huge(res):
    sim = _sim()
    np.testing.assert_allclose(res.x, bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b).x,
                               atol=1e-5)  # fmt: skip


def _files(tmp: Path) -> dict[str, Path]:
    sim = _sim()
    np.save(tmp / "f.npy", sim.frames)
    np.save(tmp / "a.npy", sim.ref_a)
    np.save(tmp / "b.npy", sim.ref_b)
    return {"f": tmp / "f.npy", "a": tmp / "a.npy", "b": tmp / "b.npy"}


def _cli(tmp: Path, *extra: str, frames: str | None = None, ref_a: str | None = None) -> int:
    p = _files(tmp)
    return main(["fit", frames or str(p["f"]), "--ref-a", ref_a or str(p["a"]), "--ref-b",
                 str(p["b"]), "--out", str(tmp / "r.csv"), "--quiet", *extra])  # fmt: skip


def _cli_existing(tmp):
    (tmp / "r.csv").write_text("keep")
    return _cli(tmp)


def _cli_no_dir(tmp):
    p = _files(tmp)
    return main(["fit", str(p["f"]), "--ref-a", str(p["a"]), "--ref-b", str(p["b"]),
                 "--out", str(tmp / "nowhere" / "r.csv")])  # fmt: skip


def _cli_readonly(tmp):
    import os

    p = _files(tmp)
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions
        pytest.skip("running as root: a read-only folder is still writable")
    return main(["fit", str(p["f"]), "--ref-a", str(p["a"]), "--ref-b", str(p["b"]),
                 "--out", str(ro / "r.csv")])  # fmt: skip


def _write_bad_tiff(tmp):
    (tmp / "bad.tif").write_bytes(b"II*\x00" + b"\x05" * 64)
    return tmp / "bad.tif"


def _write_cut_tiff(tmp):
    tifffile.imwrite(tmp / "t.tif", _sim().frames)
    raw = (tmp / "t.tif").read_bytes()
    (tmp / "cut.tif").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut.tif"


def _write_pickle(tmp):
    np.save(tmp / "p.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return tmp / "p.npy"


def _write_cut_npy(tmp):
    np.save(tmp / "c.npy", _sim().frames)
    (tmp / "cut.npy").write_bytes((tmp / "c.npy").read_bytes()[:300])
    return tmp / "cut.npy"


def _write_cut_npz(tmp):
    np.savez(tmp / "c.npz", frames=_sim().frames)
    (tmp / "cut.npz").write_bytes((tmp / "c.npz").read_bytes()[:200])
    return tmp / "cut.npz"


def _write_h5(tmp):
    with h5py.File(tmp / "d.h5", "w") as f:
        f["frames"] = _sim().frames
    return f"{tmp}/d.h5:/missing"


def _write_cut_h5(tmp):
    with h5py.File(tmp / "d.h5", "w") as f:
        f["frames"] = _sim().frames
    (tmp / "cut.h5").write_bytes((tmp / "d.h5").read_bytes()[:500])
    return tmp / "cut.h5"


def _write_zarr_bad(tmp):
    (tmp / "bad.zarr").mkdir()
    (tmp / "bad.zarr" / "zarr.json").write_text("{not json")
    return tmp / "bad.zarr"


def _scaled(scale, dtype=np.float32):
    sim = _sim()
    return tuple((np.asarray(v, np.float64) * scale).astype(dtype)
                 for v in (sim.frames, sim.ref_a, sim.ref_b))  # fmt: skip


def _ok_same_x_as_unit_data(scale):
    def check(res):
        # A power-of-two unit is exact: the same weights, sigma in the new unit.
        base = _fit(*_scaled(1.0))
        np.testing.assert_array_equal(res.x, base.x)
        np.testing.assert_allclose(res.sigma, base.sigma * scale, rtol=1e-12)

    return check


def _ok_nuts_tiny(idata):
    base = _nuts_small(1.0)
    np.testing.assert_array_equal(idata.posterior["x"].values, base.posterior["x"].values)
    np.testing.assert_allclose(idata.posterior["sigma"].values,
                               base.posterior["sigma"].values * 2.0**-83, rtol=1e-6)  # fmt: skip


def _nuts_small(scale):
    f, a, b = _scaled(scale)
    return bayesmix.sample(f, a, b, num_chains=1, num_warmup=50, num_samples=50, seed=0,
                           progress=False)  # fmt: skip


def _ok_like_float64(res):
    base = _fit(_sim().frames.astype(np.float64))
    np.testing.assert_allclose(res.x, base.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.sigma, base.sigma, rtol=1e-12)


def _corner_mask():
    keep = np.ones((6, 6), bool)
    keep[0, :2] = False
    return keep


def _masked_frames():
    f = _sim().frames.copy()
    f[:, ~_corner_mask()] = 1e6  # garbage under the mask
    return np.ma.masked_array(f, mask=np.broadcast_to(~_corner_mask(), f.shape))


def _masked_reference():
    a = np.ma.masked_array(_sim().ref_a.copy(), mask=~_corner_mask())
    a.data[~_corner_mask()] = np.nan  # a masked pixel may hold anything
    return _fit(a=a)


def _ok_as_mask(res):
    base = _fit(mask=_corner_mask())
    # NaN pixels are summed in float64, masked-out ones by the float32 pass: they differ by
    # the float32 rounding of x, about u ||y|| / ||A - B|| with u = 6e-8.
    frames, d = _sim().frames, _sim().ref_a - _sim().ref_b
    tol = 4 * 2.0**-24 * float(np.max(np.linalg.norm(frames, axis=(1, 2)))) / np.linalg.norm(d)
    np.testing.assert_allclose(res.x, base.x, rtol=0, atol=tol)
    np.testing.assert_allclose(res.sigma, base.sigma, rtol=tol)


def _xarray_fit(frame_dims, ref_dims):
    import xarray as xr

    sim = _sim()
    order = [("frame", "y", "x").index(d) for d in frame_dims]
    frames = xr.DataArray(np.transpose(sim.frames, order), dims=frame_dims)
    refs = [xr.DataArray(r if ref_dims == ("y", "x") else r.T, dims=ref_dims)
            for r in (sim.ref_a, sim.ref_b)]  # fmt: skip
    return bayesmix.fit_map(frames, *refs)


def _ok_same_as_arrays(res):
    np.testing.assert_allclose(res.x, _fit().x, rtol=0, atol=1e-12)


def _ok_no_warning(res):
    assert np.all(np.abs(res.mean - 0.5) < 0.05)  # the strong prior holds the weights


def _stats(**change):
    sim = _sim()
    st = bayesmix.frame_stats(sim.frames, sim.ref_a, sim.ref_b)
    return bayesmix.fit_map_stats(st._replace(**{k: f(getattr(st, k)) for k, f in change.items()}))


def _ok_extreme_prob(df):
    # Exact, plain labels: neither 'q5e-06' nor an upper end rounded to 'q100'.
    assert [c for c in df.columns if c.startswith("q")] == ["q0.000005", "q99.999995"]
    assert (df["q0.000005"] < df["q99.999995"]).all()


def _cli_report_pdf(tmp):
    code = _cli(tmp, "--report", str(tmp / "r.pdf"))
    assert not (tmp / "r.csv").exists()  # refused before any work: no results either
    return code


def _hyperstack():
    return np.arange(5 * 2 * 6 * 6, dtype=np.uint16).reshape(5, 2, 6, 6)  # (T, C, Y, X)


def _write_axes(tmp, data, axes, **kw):
    tifffile.imwrite(tmp / "h.tif", data, metadata={"axes": axes}, **kw)
    return tmp / "h.tif"


def _ok_hyperstack(frames):
    # T frames, channels last in each (like an RGB image), labelled by time point.
    np.testing.assert_array_equal(np.asarray(frames.data), _hyperstack().transpose(0, 2, 3, 1))
    assert frames.source[1] == "h.tif:T=1"


def _ok_one_multichannel(frames):
    np.testing.assert_array_equal(np.asarray(frames.data), _hyperstack()[:1].transpose(0, 2, 3, 1))


def _write_two_series(tmp):
    with tifffile.TiffWriter(tmp / "two.ome.tif", ome=True) as tif:
        for _ in range(2):
            tif.write(_hyperstack(), metadata={"axes": "TCYX"})
    return tmp / "two.ome.tif"


def _bracket_folders(tmp):
    for folder, n in (("scan1", 3), ("scan[1]", 2)):
        (tmp / folder).mkdir()
        for i in range(n):
            tifffile.imwrite(tmp / folder / f"f{i}.tif", np.full((6, 6), n, np.uint8))
    return bayesmix.read_frames(str(tmp / "scan[1]" / "*.tif"))


def _ok_bracket_folder(frames):
    assert frames.data.shape == (2, 6, 6) and (frames.data == 2).all()  # scan[1]/, never scan1/


def _read_csv(tmp, text):
    (tmp / "r.csv").write_text(text)
    return bayesmix.read_results(tmp / "r.csv")


def _cli_out_is_times(tmp):
    (tmp / "r.csv").write_text("time\n" + "\n".join(map(str, range(20))) + "\n")
    return _cli(tmp, "--temporal", "random_walk", "--times", str(tmp / "r.csv"), "--overwrite")


def _cli_report_links_to_frames(tmp):
    p = _files(tmp)
    (tmp / "f.html").symlink_to(p["f"])
    return _cli(tmp, "--report", str(tmp / "f.html"), "--overwrite")


def _cli_report_in_frames_folder(tmp):
    (tmp / "imgs").mkdir()
    for i, frame in enumerate(_sim().frames):
        tifffile.imwrite(tmp / "imgs" / f"f{i:02d}.tif", frame)
    return _cli(tmp, "--report", str(tmp / "imgs" / "r.html"), frames=str(tmp / "imgs"))


CATALOGUE = [
    # Python API: shapes and values
    ("shape-mismatch", lambda t: _fit(a=np.ones((6, 5)), b=np.zeros((6, 5))),
     ("raises", bayesmix.InputError, r"frames must have shape \(N, \*S\) with S = reference shape \(6, 5\)")),
    ("refs-differ-in-shape", lambda t: _fit(b=np.zeros((5, 6))),
     ("raises", bayesmix.InputError, r"ref_a and ref_b must have the same shape")),
    ("single-frame-without-axis", lambda t: _fit(_sim().frames[0]),
     ("raises", bayesmix.InputError, r"a single frame needs a leading axis: frames\[None\]")),
    ("a-equals-b", lambda t: _fit(b=_sim().ref_a),
     ("raises", bayesmix.InputError, r"identical on the selected pixels, so the mixing weight is not identifiable")),
    ("a-equals-b-under-mask", lambda t: _masked_equal(),
     ("raises", bayesmix.InputError, r"identical on the selected pixels")),
    ("a-nearly-b", lambda t: _fit(b=_sim().ref_a + 1e-9),
     ("warns", RuntimeWarning, r"references differ little for this noise: .* sigma/\|\|A - B\|\|")),
    ("nan-in-reference", lambda t: _fit(a=_nan_ref()),
     ("raises", bayesmix.InputError, r"ref_a has 1 non-finite pixel\(s\) \(NaN or Inf\)")),
    ("inf-in-reference", lambda t: _fit(b=_inf_ref()),
     ("raises", bayesmix.InputError, r"ref_b has 1 non-finite pixel\(s\)")),
    ("all-nan-frame", lambda t: _fit(_nan_frame()),
     ("raises", bayesmix.InputError, r"1 frame\(s\) have no finite pixel \(all NaN/Inf\), e.g. frame\(s\) \[3\]")),
    ("finite-only-where-a-equals-b", lambda t: _fit(*_equal_where_finite()),
     ("raises", bayesmix.InputError, r"finite only where ref_a == ref_b, so their weight is not identifiable")),
    ("inf-pixel-in-frame", lambda t: _fit(_inf_pixel()),
     ("warns", RuntimeWarning, r"1 pixel\(s\) in 1 frame\(s\) are \+/-Inf and were left out")),
    ("empty-stack", lambda t: _fit(np.zeros((0, 6, 6), np.float32)),
     ("raises", bayesmix.InputError, r"frames is an empty stack \(0 frames\)")),
    ("empty-iterator", lambda t: _fit(iter([])),
     ("raises", bayesmix.InputError, r"frames is an empty iterator")),
    ("empty-reference", lambda t: _fit(np.zeros((3, 0)), np.zeros(0), np.zeros(0)),
     ("raises", bayesmix.InputError, r"ref_a is empty")),
    ("string-dtype", lambda t: _fit(_sim().frames.astype(str)),
     ("raises", bayesmix.InputError, r"frames must hold real numbers \(float or integer\), got dtype <U")),
    ("complex-dtype", lambda t: _fit(_sim().frames.astype(complex)),
     ("raises", bayesmix.InputError, r"frames must hold real numbers .* complex128")),
    ("ragged-list", lambda t: bayesmix.fit_map([[1.0, 2.0], [3.0]], [1.0, 2.0], [0.0, 1.0]),
     ("raises", bayesmix.InputError, r"frames must be an array, got list")),
    ("mask-not-boolean", lambda t: _fit(mask=np.ones((6, 6))),
     ("raises", bayesmix.InputError, r"mask must be a boolean array, got dtype float64")),
    ("mask-wrong-shape", lambda t: _fit(mask=np.ones((5, 6), bool)),
     ("raises", bayesmix.InputError, r"mask must have the reference shape \(6, 6\), got \(5, 6\)")),
    ("mask-selects-nothing", lambda t: _fit(mask=np.zeros((6, 6), bool)),
     ("raises", bayesmix.InputError, r"mask selects no pixel")),
    ("uint16-full-range", lambda t: _uint16(), ("ok", _ok_uint16_full_range)),
    ("float16-input", lambda t: _fit(_sim().frames.astype(np.float16)), ("ok", _ok_float16)),
    ("negative-values", lambda t: _fit(-_sim().frames, -_sim().ref_a, -_sim().ref_b),
     ("ok", _ok_negative)),
    ("huge-values", lambda t: _huge(), ("ok", _ok_huge)),
    ("zero-noise", lambda t: _zero_noise(), ("ok", _ok_zero_noise)),
    ("single-frame", lambda t: _fit(_sim().frames[:1]), ("ok", _ok_single_frame)),
    ("tiny-values", lambda t: _fit(*_scaled(2.0**-83)), ("ok", _ok_same_x_as_unit_data(2.0**-83))),
    ("nuts-tiny-values", lambda t: _nuts_small(2.0**-83), ("ok", _ok_nuts_tiny)),
    ("float64-beyond-range", lambda t: _fit(*_scaled(1e-200, np.float64)),
     ("raises", bayesmix.InputError, r"the data's level is about .*e-201: sums of squares of such values leave float64's range")),
    ("longdouble-input", lambda t: _fit(_sim().frames.astype(np.longdouble)), ("ok", _ok_like_float64)),
    ("masked-array-frames", lambda t: _fit(_masked_frames()), ("ok", _ok_as_mask)),
    ("masked-reference", lambda t: _masked_reference(), ("ok", _ok_as_mask)),
    ("xarray-dims-by-name", lambda t: _xarray_fit(("frame", "y", "x"), ("x", "y")), ("ok", _ok_same_as_arrays)),
    ("xarray-frame-dim-not-first", lambda t: _xarray_fit(("y", "frame", "x"), ("y", "x")), ("ok", _ok_same_as_arrays)),
    ("xarray-dims-mismatch", lambda t: _xarray_fit(("frame", "y", "x"), ("y", "z")),
     ("raises", bayesmix.InputError, r"ref_a has dimensions \('y', 'z'\) but each frame has \('y', 'x'\)")),
    ("frame-axis-last", lambda t: _fit(np.moveaxis(_sim().frames, 0, -1)),
     ("raises", bayesmix.InputError, r"got \(6, 6, 20\); the frame axis looks last .* np.moveaxis\(frames, -1, 0\)")),
    ("rgb-frames-grey-references", lambda t: _fit(np.repeat(_sim().frames[..., None], 3, -1)),
     ("raises", bayesmix.InputError, r"got \(20, 6, 6, 3\); the frames have an extra last axis of 3 \(channels\?\)")),
    ("iterator-chunk-wrong-shape", lambda t: _fit(iter([_sim().frames[:5, :4]])),
     ("raises", bayesmix.InputError, r"each chunk of an iterator must have shape \(k, \*\(6, 6\)\)")),
    # The model: background, gain, spectrum images
    ("background-collinear", lambda t: _fit(background=np.stack([_sim().ref_a - _sim().ref_b])),
     ("raises", bayesmix.InputError, r"the background basis explains A - B entirely")),
    ("background-dependent-images", lambda t: _fit(background=np.ones((2, 6, 6))),
     ("raises", bayesmix.InputError, r"background basis images are linearly dependent")),
    ("background-too-many-terms", lambda t: _fit(_sim().frames[:, :1, :2], _sim().ref_a[:1, :2],
                                                 _sim().ref_b[:1, :2], background="linear"),
     ("raises", bayesmix.InputError, r"the model has 4 linear terms .* but a frame has only 2 pixels")),
    ("background-wrong-shape", lambda t: _fit(background=np.ones((1, 5, 6))),
     ("raises", bayesmix.InputError, r"background basis images must have the frame shape \(6, 6\)")),
    ("background-unknown", lambda t: _fit(background="quadratic"),
     ("raises", bayesmix.InputError, r"background must be one of \('none', 'constant', 'linear'\)")),
    ("gain-not-bool", lambda t: _fit(gain="yes"),
     ("raises", bayesmix.InputError, r"gain must be True or False, got 'yes'")),
    ("gain-no-mixture", lambda t: _fit(np.zeros((5, 6, 6)), gain=True),
     ("raises", bayesmix.InputError, r"every frame's projection on the references is exactly zero")),
    ("gain-proportional-references", lambda t: _fit(a=_sim().ref_a, b=2 * _sim().ref_a, gain=True),
     ("raises", bayesmix.InputError, r"with gain=True the references A and B must not be proportional")),
    ("gain-joint-sigma", lambda t: _fit(gain=True, sigma_method="joint"),
     ("raises", bayesmix.InputError, r"sigma_method='joint' is not available with gain=True")),
    ("spectral-axis-out-of-range", lambda t: bayesmix.fit_map(np.zeros((4, 3, 3)), np.ones(4),
                                                              np.arange(4.0), spectral_axis=3),
     ("raises", bayesmix.InputError, r"spectral_axis 3 is out of range for a stack of shape \(4, 3, 3\)")),
    ("spectral-axis-length", lambda t: bayesmix.fit_map(np.zeros((4, 3, 3)), np.ones(5),
                                                        np.arange(5.0), spectral_axis=0),
     ("raises", bayesmix.InputError, r"the references have 5 spectral points but axis 0")),
    ("refs-dependent", lambda t: _fit(None, None, None, 0.5 * (_sim().ref_a + _sim().ref_b)),
     ("raises", bayesmix.InputError, r"the 3 references are linearly dependent")),
    ("refs-more-than-pixels", lambda t: bayesmix.fit_map(np.ones((3, 3)), *np.eye(3)),
     ("raises", bayesmix.InputError, r"the model has 3 linear terms .* but a frame has only 3 pixels")),
    ("refs-shapes-differ", lambda t: _fit(None, None, None, np.ones((5, 5))),
     ("raises", bayesmix.InputError, r"all references must have the same shape")),
    ("dirichlet-length", lambda t: _fit(None, None, None, _third(), prior=Dirichlet([1.0, 2.0])),
     ("raises", bayesmix.InputError, r"Dirichlet alpha has 2 concentrations but the fit has 3")),
    ("dirichlet-nonpositive", lambda t: Dirichlet([1.0, 0.0, 2.0]),
     ("raises", bayesmix.InputError, r"Dirichlet concentrations must be finite and > 0")),
    ("refs-scalar-prior", lambda t: _fit(None, None, None, _third(), prior=Beta(2, 2)),
     ("raises", bayesmix.InputError, r"with 3 references the weights lie on the simplex")),
    ("refs-gain-nuts", lambda t: bayesmix.sample(_sim().frames, _sim().ref_a, _sim().ref_b,
                                                  _third(), gain=True),
     ("raises", bayesmix.InputError, r"NUTS with gain=True and 3 references is not supported yet")),
    ("refs-draws", lambda t: _fit(None, None, None, _third(), draws=5),
     ("raises", bayesmix.InputError, r"draws must be an integer >= 100")),
    ("one-pixel-frames", lambda t: bayesmix.fit_map(np.array([[0.4], [0.5]]), [1.0], [0.0]),
     ("raises", bayesmix.InputError, r"noise scale cannot be learned: no frame has more valid pixels than the model has terms")),
    ("noise-free-frames-equal-to-b", lambda t: _fit(np.stack([_sim().ref_b] * 3)),
     ("ok", _ok_equal_to_b)),
    ("constant-frames", lambda t: _constant_frames(), ("ok", _ok_constant)),
    ("frame-far-outside", lambda t: _far_outside(), ("ok", _ok_far_outside)),
    ("frame-not-a-mixture", lambda t: _unexplained(), ("ok", _ok_unexplained)),
    # Sequences
    ("walk-gain", lambda t: _fit(temporal="random_walk", gain=True),
     ("raises", bayesmix.InputError, r"temporal='random_walk' needs each frame's likelihood Gaussian in one weight x; it is not supported with gain=True")),
    ("walk-per-frame", lambda t: _fit(temporal="random_walk", noise="per_frame"),
     ("raises", bayesmix.InputError, r"not supported with noise='per_frame'")),
    ("walk-q", lambda t: bayesmix.temporal.RandomWalk(q=0),
     ("raises", bayesmix.InputError, r"RandomWalk q must be finite and > 0 \(or None to learn it\)")),
    ("walk-times-length", lambda t: _fit(temporal="random_walk", times=np.arange(5)),
     ("raises", bayesmix.InputError, r"times must have one entry per frame \(20\), got 5")),
    ("walk-times-tied", lambda t: _fit(temporal="random_walk", times=np.r_[0, 0, 2:20]),
     ("raises", bayesmix.InputError, r"frames 0 and 1 of one sequence share the time 0")),
    ("walk-times-alone", lambda t: _fit(times=np.arange(20)),
     ("raises", bayesmix.InputError, r"pass temporal='random_walk' as well")),
    # Priors and options
    ("inverted-bounds", lambda t: TruncatedNormal(0.5, 0.1, 1.0, 0.0),
     ("raises", bayesmix.InputError, r"prior bounds must satisfy low < high, got low=1.0, high=0.0")),
    ("uniform-inverted", lambda t: Uniform(0.8, 0.2),
     ("raises", bayesmix.InputError, r"prior bounds must satisfy low < high")),
    ("prior-outside-bounds", lambda t: TruncatedNormal(1.5, 0.1),
     ("raises", bayesmix.InputError, r"prior loc=1.5 is outside its bounds \[0.0, 1.0\]")),
    ("prior-scale-not-positive", lambda t: TruncatedNormal(0.5, 0.0),
     ("raises", bayesmix.InputError, r"scale")),
    ("beta-shape-below-1", lambda t: Beta(0.5, 2.0),
     ("raises", bayesmix.InputError, r"Beta shapes must both be >= 1, got a=0.5")),
    ("invgamma-negative", lambda t: InverseGamma(-1.0, 1.0),
     ("raises", bayesmix.InputError, r"InverseGamma needs concentration > 0 and scale > 0")),
    ("prior-not-a-prior", lambda t: _fit(prior="normal"),
     ("raises", bayesmix.InputError, r"prior must be one of TruncatedNormal, Uniform, Beta")),
    ("sigma-not-positive", lambda t: _fit(sigma=0.0),
     ("raises", bayesmix.InputError, r"sigma must be a positive finite noise scale")),
    ("unknown-sigma-method", lambda t: _fit(sigma_method="mle"),
     ("raises", bayesmix.InputError, r"sigma_method must be one of \('marginal', 'joint'\)")),
    ("interval-prob-outside", lambda t: _fit().interval(1.5),
     ("raises", bayesmix.InputError, r"prob must be in \(0, 1\)")),
    ("chunk-size-zero", lambda t: _fit(chunk_size=0),
     ("raises", bayesmix.InputError, r"chunk_size must be a positive integer")),
    ("memory-limit-zero", lambda t: _fit(memory_limit=0),
     ("raises", bayesmix.InputError, r"memory_limit must be a positive number of bytes")),
    ("unknown-device", lambda t: _fit(device="tpu"),
     ("raises", bayesmix.InputError, r"device must be one of \('cpu', 'gpu'\) or None")),
    ("nuts-bad-chains", lambda t: bayesmix.sample(_sim().frames, _sim().ref_a, _sim().ref_b,
                                                  num_chains=0, progress=False),
     ("raises", bayesmix.InputError, r"num_chains must be a positive integer")),
    ("sigma-as-string", lambda t: _fit(sigma="0.05"),
     ("raises", bayesmix.InputError, r"sigma must be one positive number .* got str '0.05'; pass e.g. sigma=0.05")),
    ("sigma-as-array", lambda t: _fit(sigma=np.array([0.05])),
     ("raises", bayesmix.InputError, r"sigma must be one positive number .* got ndarray of shape \(1,\)")),
    ("strong-prior", lambda t: _fit(prior=TruncatedNormal(0.5, 0.01, 0.0, 1.0)), ("ok", _ok_no_warning)),
    ("stats-nan", lambda t: _stats(xhat=lambda v: np.where(np.arange(len(v)) == 3, np.nan, v)),
     ("raises", bayesmix.InputError, r"stats.xhat is NaN or Inf for 1 frame\(s\), e.g. \[3\]")),
    ("stats-negative-rss", lambda t: _stats(rss=lambda v: -v),
     ("raises", bayesmix.InputError, r"stats.rss has negative entries")),
    ("stats-bad-pixel-count", lambda t: _stats(n=lambda v: v * 0),
     ("raises", bayesmix.InputError, r"stats.n must count each frame's valid pixels \(whole numbers >= 1\)")),
    ("interval-prob-extreme", lambda t: _fit().to_dataframe(prob=0.9999999), ("ok", _ok_extreme_prob)),
    ("report-not-html", lambda t: bayesmix.report(_fit(), t / "r.pdf"),
     ("raises", bayesmix.InputError, r"the report is an HTML file .* e\.g\. '.*r\.html'; got '.*r\.pdf'")),
    ("interval-unknown-kind", lambda t: _fit().interval(0.9, kind="hpd"),
     ("raises", bayesmix.InputError, r"kind must be one of \('equal_tailed', 'hdi'\), got 'hpd'")),
    ("interval-hdi-prob-outside", lambda t: _fit().interval(1.5, kind="hdi"),
     ("raises", bayesmix.InputError, r"prob must be in \(0, 1\)")),
    ("near-bound-tol-outside", lambda t: _fit().prob_near_bound(0.6),
     ("raises", bayesmix.InputError, r"tol must be a number in \(0, 0.5\]: the distance from a bound of the weight's support \[0, 1\]")),
    ("learn-unknown-family", lambda t: _fit(prior=learn("gamma")),
     ("raises", bayesmix.InputError, r"learn\(family\) takes one of \('truncnormal', 'beta', 'dirichlet', 'point_mass'\), got 'gamma'")),
    ("learn-four-references", lambda t: _fit(None, None, None, _third(), _third() ** 2, prior="learn"),
     ("raises", bayesmix.InputError, r"prior='learn' needs K <= 3 references .* got 4; give a fixed Dirichlet")),
    ("learn-per-frame-noise", lambda t: _fit(prior="learn", noise="per_frame"),
     ("raises", bayesmix.InputError, r"prior='learn' is not supported with noise='per_frame'")),
    ("learn-random-walk", lambda t: _fit(prior="learn", temporal="random_walk"),
     ("raises", bayesmix.InputError, r"prior='learn' is not supported with temporal='random_walk'")),
    ("learn-joint-sigma", lambda t: _fit(prior="learn", sigma_method="joint"),
     ("raises", bayesmix.InputError, r"sigma_method='joint' is not available with prior='learn'")),
    ("point-mass-atoms-sum", lambda t: PointMassMixture((0.6, 0.5)),
     ("raises", bayesmix.InputError, r"atoms must be K >= 2 probabilities >= 0 whose sum is below 1")),
    ("point-mass-atoms-count", lambda t: _fit(None, None, None, _third(), prior=PointMassMixture((0.1, 0.1))),
     ("raises", bayesmix.InputError, r"PointMassMixture has 2 atoms but the fit has 3 references")),
    ("point-mass-gain", lambda t: _fit(prior=learn("point_mass"), gain=True),
     ("raises", bayesmix.InputError, r"prior='learn' is not supported with point masses on the pure phases with gain=True")),
    ("nuts-learn-family", lambda t: bayesmix.sample(_sim().frames, _sim().ref_a, _sim().ref_b,
                                                    prior=learn("beta"), progress=False),
     ("raises", bayesmix.InputError, r"NUTS with prior='learn' samples the population \(loc, scale\) of a truncated-normal prior .*; not with the 'beta' family: learn it with the fast path")),
    ("nuts-learn-gain", lambda t: bayesmix.sample(_sim().frames, _sim().ref_a, _sim().ref_b,
                                                  prior="learn", gain=True, progress=False),
     ("raises", bayesmix.InputError, r"NUTS with prior='learn' .*; not with gain=True: give a fixed prior instead")),
    ("nuts-learn-pixels", lambda t: bayesmix.sample(_sim().frames, _sim().ref_a, _sim().ref_b,
                                                    prior="learn", noise="poisson", progress=False),
     ("raises", bayesmix.InputError, r"NUTS with prior='learn' .*; not with noise='poisson' \(a pixel-level likelihood\)")),
    # Readers
    ("missing-file", lambda t: bayesmix.read_frames(t / "nope.tif"),
     ("raises", FileNotFoundError, r"no such file or folder: .*nope.tif")),
    ("corrupt-tiff", lambda t: bayesmix.read_frames(_write_bad_tiff(t)),
     ("raises", bayesmix.InputError, r"cannot read .*bad.tif as TIFF")),
    ("truncated-tiff", lambda t: bayesmix.read_frames(_write_cut_tiff(t)),
     ("raises", bayesmix.InputError, r"cannot read .*cut.tif as TIFF")),
    ("pickled-npy", lambda t: bayesmix.read_frames(_write_pickle(t)),
     ("raises", bayesmix.InputError, r"holds Python objects \(a pickled array\)")),
    ("truncated-npy", lambda t: bayesmix.read_frames(_write_cut_npy(t)),
     ("raises", bayesmix.InputError, r"cannot read .*cut.npy as .npy")),
    ("truncated-npz", lambda t: bayesmix.read_frames(_write_cut_npz(t)),
     ("raises", bayesmix.InputError, r"cannot read .*cut.npz as .npz")),
    ("wrong-hdf5-dataset", lambda t: bayesmix.read_frames(_write_h5(t)),
     ("raises", bayesmix.InputError, r"has no dataset '/missing'")),
    ("truncated-hdf5", lambda t: bayesmix.read_frames(_write_cut_h5(t)),
     ("raises", bayesmix.InputError, r"cannot read .*cut.h5 as HDF5")),
    ("corrupt-zarr", lambda t: bayesmix.read_frames(_write_zarr_bad(t)),
     ("raises", bayesmix.InputError, r"cannot read .*bad.zarr as zarr")),
    ("unknown-extension", lambda t: (t / "x.fits").write_text("x") and bayesmix.read_frames(t / "x.fits"),
     ("raises", bayesmix.InputError, r"cannot tell the format of .*x.fits from its extension")),
    ("tiff-hyperstack", lambda t: bayesmix.read_frames(_write_axes(t, _hyperstack(), "TCYX", imagej=True)),
     ("ok", _ok_hyperstack)),
    ("tiff-one-multichannel-image", lambda t: bayesmix.read_frames(_write_axes(t, _hyperstack()[0], "CYX", imagej=True)),
     ("ok", _ok_one_multichannel)),
    ("tiff-unmappable-axes", lambda t: bayesmix.read_frames(_write_axes(t, _hyperstack(), "TAYX", ome=True)),
     ("raises", bayesmix.InputError, r"cannot read .*h.tif as a stack of frames: its axes 'TAYX' .* \(axis A\); supported: T \(time")),
    ("tiff-several-series", lambda t: bayesmix.read_frames(_write_two_series(t)),
     ("raises", bayesmix.InputError, r"cannot read .*two.ome.tif as TIFF: it holds 2 image series")),
    ("glob-brackets-in-folder-name", lambda t: _bracket_folders(t), ("ok", _ok_bracket_folder)),
    ("glob-matches-nothing", lambda t: bayesmix.read_frames(str(t / "scan[2]" / "*.tif")),
     ("raises", bayesmix.InputError, r"no file matches the pattern .*scan\[2\]/\*.tif' \(only \* and \? are wildcards; \[ and \] match themselves\); the folder .*scan\[2\]' does not exist")),
    ("results-csv-decimal-comma", lambda t: _read_csv(t, "x;sd\n0,5;0,1\n0,25;0,2\n"),
     ("raises", bayesmix.InputError, r"r.csv is separated by semicolons \(';'\) and its numbers look like decimal commas \(column 'x' holds '0,5'\)")),
    ("results-csv-quoted-decimal-comma", lambda t: _read_csv(t, 'frame,x_map,sd\n0,"0,5","0,1"\n'),
     ("raises", bayesmix.InputError, r"column 'x_map' of .*r.csv holds numbers with a decimal comma \('0,5' on line 2\)")),
    ("results-csv-no-rows", lambda t: _read_csv(t, "frame,x_map,sd\n"),
     ("raises", bayesmix.InputError, r"r.csv has a header but no rows \(columns frame, x_map, sd\)")),
    ("results-csv-text-in-number-column", lambda t: _read_csv(t, "frame,x_map,sd\n0,0.5,0.1\n1,0.4,abc\n"),
     ("raises", bayesmix.InputError, r"column 'sd' of .*r.csv should hold numbers but holds 'abc' on line 3")),
    # Command line (exit status 2, one line on stderr)
    ("cli-output-is-an-input", lambda t: _cli_out_is_times(t),
     ("exit2", r"--out .*r.csv is also an input \(--times .*r.csv\): writing it would destroy that input, with --overwrite or not")),
    ("cli-output-links-to-an-input", lambda t: _cli_report_links_to_frames(t),
     ("exit2", r"--report .*f.html is also an input \(FRAMES .*f.npy\)")),
    ("cli-output-inside-input-folder", lambda t: _cli_report_in_frames_folder(t),
     ("exit2", r"--report .*imgs/r.html is inside the input folder .*imgs \(FRAMES\)")),
    ("cli-unknown-output-format", lambda t: _cli(t, "--out", str(t / "res.xlsx")),
     ("exit2", r"--out .*res.xlsx: cannot tell the results format from its extension '.xlsx'; use one of .csv, .parquet, .nc")),
    ("cli-output-is-a-folder", lambda t: (t / "res.csv").mkdir() or _cli(t, "--out", str(t / "res.csv")),
     ("exit2", r"--out .*res.csv is an existing folder; give the path of a file")),
    ("cli-idata-not-netcdf", lambda t: _cli(t, "--method", "nuts", "--idata", str(t / "post.csv")),
     ("exit2", r"--idata .*post.csv: an InferenceData is written as netCDF; give a path ending in .nc")),
    ("cli-two-outputs-one-file", lambda t: _cli(t, "--method", "nuts", "--out", str(t / "x.nc"), "--idata", str(t / "x.nc")),
     ("exit2", r"two outputs go to the same file .*x.nc \(--out and --idata\)")),
    ("cli-negative-seed", lambda t: _cli(t, "--seed", "-1"),
     ("exit2", r"argument --seed: expected an integer from 0 to 2\*\*63 - 1, got '-1'")),
    ("cli-report-not-html", lambda t: _cli_report_pdf(t),
     ("exit2", r"the report is an HTML file .* e\.g\. '.*r\.html'")),
    ("cli-existing-output", lambda t: _cli_existing(t),
     ("exit2", r"r.csv already exists; pass --overwrite to replace it")),
    ("cli-missing-output-dir", lambda t: _cli_no_dir(t),
     ("exit2", r"output folder .*nowhere does not exist")),
    ("cli-unwritable-output-dir", lambda t: _cli_readonly(t), ("exit2", r"Permission denied")),
    ("cli-missing-input", lambda t: _cli(t, frames=str(t / "none.npy")),
     ("exit2", r"no such file or folder: .*none.npy")),
    ("cli-wrong-shape-reference", lambda t: np.save(t / "s.npy", np.ones(5)) or _cli(t, ref_a=str(t / "s.npy")),
     ("exit2", r"ref_a and ref_b must have the same shape")),
    ("cli-bad-device", lambda t: _cli(t, "--device", "tpu"),
     ("exit2", r"argument --device: invalid choice: 'tpu'")),
    ("cli-missing-gpu", lambda t: _cli(t, "--device", "gpu"),
     ("exit2", r"device='gpu': JAX sees no GPU")),
    ("cli-bad-prior-spec", lambda t: _cli(t, "--prior", "beta:1"),
     ("exit2", r"prior 'beta:1' takes 2 to 2 parameters \(a, b\), got 1")),
    ("cli-bad-prob", lambda t: _cli(t, "--prob", "2"),
     ("exit2", r"argument --prob: expected a probability in \(0, 1\)")),
    ("cli-leftover-run", lambda t: (t / "r.csv.parts").mkdir() or _cli(t),
     ("exit2", r"an interrupted run left .*r.csv.parts; pass --resume")),
]  # fmt: skip


@pytest.mark.parametrize("row", CATALOGUE, ids=[r[0] for r in CATALOGUE])
def test_catalogue(row, tmp_path, capsys):
    name, action, expected = row
    kind = expected[0]
    if name == "cli-missing-gpu":
        import jax

        if any(d.platform == "gpu" for d in jax.devices()):
            pytest.skip("a GPU is present")
    if kind == "raises":
        with pytest.raises(expected[1], match=expected[2]):
            action(tmp_path)
    elif kind == "warns":
        with pytest.warns(expected[1], match=expected[2]):
            action(tmp_path)
    elif kind == "exit2":
        assert action(tmp_path) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(expected[1], err), err
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # handled means: no surprise warning
            result = action(tmp_path)
        expected[1](result)


def test_the_docs_table_lists_exactly_the_catalogue():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.M)
    assert sorted(rows) == sorted(r[0] for r in CATALOGUE)
    assert len(rows) >= 30
