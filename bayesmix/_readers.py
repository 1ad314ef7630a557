"""Readers: frame stacks and references from files (chosen by extension) or array objects.

Supported sources:

- multi-page TIFF (``.tif``, ``.tiff``), one frame per page; an ImageJ or OME hyperstack (or
  a TIFF with tifffile's axes metadata) by its axes: one frame per time point (``T``; ``Z``
  when there is no ``T``), channels (``C``) last in each frame, like an RGB image's samples;
- a folder, or a glob pattern, of PNG/TIFF images, one frame per file in natural sort order
  (``img2.png`` before ``img10.png``); only ``*`` and ``?`` are wildcards (``[`` and ``]``
  match themselves, so ``scan[1]/*.png`` reads the folder named ``scan[1]``);
- ``.npy``, memory-mapped and loaded with ``allow_pickle=False``;
- ``.npz``: ``file.npz:name`` picks an array (the name may be left out when there is one);
- HDF5 (``.h5``, ``.hdf5``, ``.he5``, ``.nxs``): ``file.h5:/group/dataset``, read lazily;
- zarr (``.zarr``): ``store.zarr`` for an array, ``store.zarr:path`` inside a group;
- in Python, numpy arrays, xarray DataArrays (dimension ``frame`` first) and dask arrays.

Integer images keep their dtype here; the statistics pass converts them exactly (8- and 16-bit to
float32, wider to float64), so nothing overflows. Any failure to read becomes a
:class:`bayesmix.InputError` naming the file and what was expected (``FileNotFoundError`` for a
missing path).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bayesmix._errors import InputError

__all__ = ["Frames", "read_frames", "read_reference"]

_TIFF = (".tif", ".tiff")
_IMAGES = (".png", *_TIFF)
_HDF5 = (".h5", ".hdf5", ".he5", ".nxs")
_KEYED = (".npz", ".zarr", *_HDF5)
SUPPORTED = (".npy", ".npz", *_TIFF, ".png", *_HDF5, ".zarr")


class Frames(NamedTuple):
    """A frame stack and, where known, where each frame came from."""

    #: array-like, shape (N, *S): ndarray, memory map, HDF5/zarr dataset or dask array
    data: Any
    #: ndarray of str, shape (N,): file (and page) of each frame, or None
    source: np.ndarray | None
    #: for a spectrum image read with ``spectral_axis``: the map's shape, e.g. (H, W)
    map_shape: tuple[int, ...] | None = None


def _natural_key(text: str) -> list[Any]:
    """Sort key that orders digit runs by value: img2 < img10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _split_key(source: str | os.PathLike, key: str | None) -> tuple[Path, str | None]:
    """``file.h5:/data`` -> (file.h5, '/data'); a path that exists as given is never split."""
    text = os.fspath(source)
    path = Path(text)
    if key is None and not path.exists() and ":" in text:
        head, _, tail = text.rpartition(":")
        if Path(head).suffix.lower() in _KEYED and tail:
            return Path(head), tail
    return path, key


def _fail(path: Path, kind: str, exc: BaseException) -> InputError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"cannot read {path} as {kind}: {msg}")


def _numpy_fail(path: Path, kind: str, exc: BaseException) -> InputError:
    """numpy's error for a pickled array (refused: loading it could run code), or any other."""
    if isinstance(exc, ValueError) and ("pickle" in str(exc).lower() or "object" in str(exc)):
        return InputError(
            f"{path} holds Python objects (a pickled array); bayesmix loads {kind} files with "
            f"allow_pickle=False for safety: save plain numeric arrays with np.save/np.savez"
        )
    return _fail(path, kind, exc)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a truncated or foreign file
        raise _numpy_fail(path, ".npy", exc) from None


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    try:
        # Our own handle: numpy leaves its own open when the archive is corrupt.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            names = list(npz.files)
            if key is None:
                if len(names) != 1:
                    raise KeyError(f"it holds {len(names)} arrays {names}; name one: {path}:NAME")
                key = names[0]
            if key not in names:
                raise KeyError(f"no array {key!r}; it holds {names}")
            return npz[key]
    except KeyError as exc:
        raise InputError(f"cannot read {path}: {exc.args[0]}") from None
    except Exception as exc:
        raise _numpy_fail(path, ".npz", exc) from None


def _read_hdf5(path: Path, key: str | None) -> Any:
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise _fail(path, "HDF5", exc) from None
    if key is None:
        names: list[str] = []

        def collect(name: str, obj: Any) -> None:  # returning non-None would stop the visit
            if isinstance(obj, h5py.Dataset):
                names.append(name)

        f.visititems(collect)
        if len(names) != 1:
            raise InputError(
                f"{path} holds {len(names)} datasets {names[:10]}; name one: {path}:/DATASET"
            )
        key = names[0]
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{path} has no dataset {key!r}; give it as {path}:/group/dataset")
    return obj  # lazy: the statistics pass reads it chunk by chunk


def _read_zarr(path: Path, key: str | None) -> Any:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise _fail(path, "zarr", exc) from None
    if key is not None:
        try:
            node = node[key]
        except Exception:
            raise InputError(f"{path} has no array {key!r}") from None
    if not hasattr(node, "dtype"):
        names = [name for name, _ in node.arrays()] if hasattr(node, "arrays") else []
        if len(names) != 1:
            raise InputError(f"{path} is a zarr group with arrays {names}; name one: {path}:NAME")
        node = node[names[0]]
    return node


# tifffile's axis letters: T time, Z slice, C channel, Y and X the plane, S a page's samples (RGB);
# Q and I are its letters for pages whose meaning it does not know (a plain multi-page TIFF).
_TIFF_AXES = "TZCYXS"
_GENERIC_AXES = "QI"
_TIFF_AXES_HELP = (
    "supported: T (time: one frame each), Z (slices: one frame each when there is no T, else "
    "part of each frame), C (channels, kept last in each frame), Y, X and S (samples, e.g. RGB)"
)


class _TiffLayout(NamedTuple):
    """How a TIFF's pages make frames."""

    #: page indices, shape (frames, pages per frame), in the order the frame's array is stacked
    pages: np.ndarray
    #: shape of one frame's pages before the transpose, e.g. (Z, C, Y, X)
    stacked: tuple[int, ...]
    #: transpose of ``stacked`` that puts channels (C, then S) last
    order: tuple[int, ...]
    #: the frame axis ('T', 'Z') of a hyperstack; None for one frame per page (or one frame)
    frame_axis: str | None
    #: the series the page indices count in; None for the whole file's pages
    series: int | None


def _channels_last(axes: str) -> tuple[int, ...]:
    """Axis order that moves C, then S, after the others: 'CYX' -> (1, 2, 0)."""
    rest = [i for i, a in enumerate(axes) if a not in "CS"]
    return (*rest, *(axes.index(a) for a in "CS" if a in axes))


def _tiff_layout(path: Path, tif: Any, n_pages: int) -> _TiffLayout:
    """The frames of a TIFF from its axes (tifffile's ``series[0].axes``, squeezed).

    ImageJ and OME hyperstacks (and tifffile's own axes metadata) name their axes: T is the
    frame axis, else Z; the other axes stay in each frame, channels last. A plain multi-page
    TIFF (axes only Q/I and the page's) keeps one frame per page.
    """
    series = tif.series
    axes = series[0].axes if series else ""
    if not set(axes) - set(_GENERIC_AXES) - set("YXS"):
        # One frame per page (of every series: pages written one by one are series of their own).
        page_axes = tif.pages[0].axes
        order = _channels_last(page_axes)
        return _TiffLayout(np.arange(n_pages)[:, None], tuple(tif.pages[0].shape), order, None,
                           None)  # fmt: skip
    if len(series) > 1:
        raise InputError(
            f"cannot read {path} as TIFF: it holds {len(series)} image series (axes "
            f"{', '.join(s.axes for s in series[:5])}); bayesmix reads a file with one: save "
            "each series (e.g. each position or well) as its own file"
        )
    s = series[0]
    page_axes = s.keyframe.axes
    n_lead = len(axes) - len(page_axes)
    unknown = sorted(set(axes) - set(_TIFF_AXES))
    # The page's axes must close the series' (tifffile guarantees it; never guess otherwise).
    paged = axes.endswith(page_axes) and tuple(s.shape[n_lead:]) == tuple(s.keyframe.shape)
    if unknown or not paged:
        what = f"axis {', '.join(unknown)}" if unknown else "its layout"
        raise InputError(
            f"cannot read {path} as a stack of frames: its axes {axes!r} (shape {s.shape}) "
            f"cannot be mapped to frames ({what}); {_TIFF_AXES_HELP}. Re-save it as a T(Z)(C)YX "
            "hyperstack, or read it with tifffile and pass the array in the (N, *S) shape you want"
        )
    lead = axes[:n_lead]
    lead_shape = tuple(s.shape[: len(lead)])
    grid = np.arange(int(np.prod(lead_shape, dtype=np.int64))).reshape(lead_shape)
    frame_axis = next((a for a in "TZ" if a in lead), None)
    if frame_axis is None:  # e.g. CYX: one multi-channel frame, like one RGB image
        pages, rest = grid.reshape(1, -1), lead
    else:
        i = lead.index(frame_axis)
        pages = np.moveaxis(grid, i, 0).reshape(lead_shape[i], -1)
        rest = lead[:i] + lead[i + 1 :]
    stacked = tuple(s.shape[lead.index(a)] for a in rest) + tuple(s.keyframe.shape)
    return _TiffLayout(pages, stacked, _channels_last(rest + page_axes), frame_axis, 0)


class TiffStack:
    """The frames of a TIFF as a lazy array of shape (frames, *frame_shape).

    A plain multi-page TIFF has one frame per page; an ImageJ or OME hyperstack one per time
    point (or slice), its channels last in each frame (see :func:`_tiff_layout`). Slicing reads
    only those frames' pages, so the statistics pass streams the file chunk by chunk. Opening
    checks the file's structure (every page listed, every page's data inside the file), so a
    truncated or corrupt TIFF fails here, not half-way through a fit.
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        self._tif: Any = None
        problems: list[str] = []
        handler = _Collect(problems)
        log = logging.getLogger("tifffile")
        log.addHandler(handler)
        propagate, log.propagate = log.propagate, False  # its warnings become our one error
        try:
            self._tif = tifffile.TiffFile(path)
            pages = list(self._tif.pages)
            size = path.stat().st_size
            if not pages:
                problems.append("no readable image page")
            for page in pages:
                ends = np.add(page.dataoffsets, page.databytecounts)
                if len(ends) and int(np.max(ends)) > size:
                    problems.append(f"page {page.index} ends past the end of the file")
                    break
            if pages and any(p.shape != pages[0].shape or p.dtype != pages[0].dtype for p in pages):
                problems.append("its pages differ in shape or dtype")
            layout = None if problems else _tiff_layout(path, self._tif, len(pages))
        except Exception as exc:
            if self._tif is not None:
                self._tif.close()
            if isinstance(exc, InputError):
                raise
            raise _fail(path, "TIFF", exc) from None
        finally:
            log.removeHandler(handler)
            log.propagate = propagate
        if problems or layout is None:
            self._tif.close()
            raise InputError(f"cannot read {path} as TIFF: {problems[0]} (corrupt or truncated?)")
        self._layout = layout
        self.frame_axis = layout.frame_axis
        self.shape = (len(layout.pages), *(layout.stacked[i] for i in layout.order))
        self.dtype = np.dtype(pages[0].dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            frames = list(range(*key.indices(self.shape[0])))
            if not frames:
                return np.empty((0, *self.shape[1:]), self.dtype)
            layout = self._layout
            try:
                data = self._tif.asarray(key=layout.pages[frames].ravel().tolist(),
                                         series=layout.series)  # fmt: skip
            except Exception as exc:
                raise _fail(self.path, "TIFF", exc) from None
            data = data.reshape(len(frames), *layout.stacked)
            return data.transpose(0, *(i + 1 for i in layout.order))
        if isinstance(key, (int, np.integer)):
            return self[int(key) : int(key) + 1 or None][0]
        return np.asarray(self[:])[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"TiffStack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def __del__(self) -> None:
        # The file stays open while the stack is read lazily; close it with the stack.
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def _read_tiff(path: Path) -> Frames:
    """A TIFF's frames, read lazily: one per page, or per time point (slice) of a hyperstack."""
    stack = TiffStack(path)
    if stack.frame_axis is None:
        labels = [f"{path.name}:{i}" for i in range(len(stack))]
    else:  # a hyperstack: the frame's index along its axis, e.g. stack.tif:T=3
        labels = [f"{path.name}:{stack.frame_axis}={i}" for i in range(len(stack))]
    return Frames(stack, np.asarray(labels))


def _read_tiff_image(path: Path) -> np.ndarray:
    """A whole TIFF as one array (a folder's image, a reference), its channels last."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
    if len(axes) != data.ndim:  # tifffile's axes should always match; never guess
        return data
    return data.transpose(_channels_last(axes))


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in _TIFF:
        reader, kind = _read_tiff_image, "TIFF"
    else:
        import imageio.v3 as iio

        reader, kind = iio.imread, "an image"
    try:
        return np.asarray(reader(path))
    except Exception as exc:
        raise _fail(path, kind, exc) from None


def _read_images(paths: list[Path], origin: str, progress: Any = None) -> Frames:
    if not paths:
        raise InputError(f"{origin} holds no PNG or TIFF image ({', '.join(_IMAGES)})")
    paths = sorted(paths, key=lambda p: _natural_key(p.name))
    first = _read_image(paths[0])
    out = np.empty((len(paths), *first.shape), first.dtype)
    out[0] = first
    for i, p in enumerate(paths[1:], start=1):
        img = _read_image(p)
        if img.shape != first.shape or img.dtype != first.dtype:
            raise InputError(
                f"images in {origin} must share shape and dtype: {paths[0].name} is "
                f"{first.shape} {first.dtype}, {p.name} is {img.shape} {img.dtype}"
            )
        out[i] = img
        if progress is not None:
            progress(1)
    return Frames(out, np.asarray([p.name for p in paths]))


def _from_object(obj: Any) -> Frames:
    dims = getattr(obj, "dims", None)
    if dims is not None and hasattr(obj, "coords"):  # an xarray DataArray
        if "frame" not in dims:
            raise InputError(
                f"an xarray DataArray of frames needs a 'frame' dimension, got dims {tuple(dims)}"
            )
        obj = obj.transpose("frame", ...)
        labels = np.asarray(obj["frame"].values).astype(str) if "frame" in obj.coords else None
        return Frames(obj.data, labels)
    return Frames(obj, None)


def read_frames(
    source: Any,
    *,
    key: str | None = None,
    progress: Any = None,
    spectral_axis: int | None = None,
) -> Frames:
    """Read a stack of frames from a file, a folder, a glob pattern or an array object.

    Parameters
    ----------
    source : str, path or array
        A ``.tif``/``.tiff`` (one frame per page; an ImageJ/OME hyperstack one per time point,
        else per slice, channels last: ``TCYX`` gives frames of shape (Y, X, C)), ``.npy``,
        ``.npz``, HDF5 or ``.zarr`` file; a folder or glob pattern of PNG/TIFF images (one frame
        each, natural sort order; only ``*`` and ``?`` are wildcards, ``[`` and ``]`` match
        themselves); or a numpy, dask or xarray array (xarray: dimension ``frame`` first).
    key : str, optional
        Array inside a ``.npz``, HDF5 or zarr container; also given as ``file.h5:/dataset``.
    progress : callable, optional
        Called with 1 after each image of a folder is read (a progress bar's ``update``).
    spectral_axis : int, optional
        For a spectrum image, e.g. (E, H, W) with ``spectral_axis=0`` or (H, W, E) with -1: each
        pixel's spectrum becomes a frame, ``data`` has shape (H*W, E) and ``map_shape`` is
        (H, W). The image is read into memory.

    Returns
    -------
    Frames
        ``data`` of shape (N, *S) (lazy for ``.npy``, TIFF, HDF5, zarr and dask), and
        ``source``, the file (and page, ``stack.tif:3``, or hyperstack index, ``stack.tif:T=3``)
        of each frame where known, else None; ``map_shape`` for a spectrum image.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "stack.npy"
    >>> np.save(path, np.zeros((3, 4, 4), np.uint16))
    >>> frames = read_frames(path)
    >>> frames.data.shape, frames.data.dtype
    ((3, 4, 4), dtype('uint16'))
    >>> _ = path.with_suffix(".txt").write_text("1 2 3")
    >>> read_frames(path.with_suffix(".txt"))
    Traceback (most recent call last):
    ...
    bayesmix._errors.InputError: cannot tell the format of .../stack.txt from its extension ...
    """
    if spectral_axis is not None:
        from bayesmix._io import spectral_frames

        if isinstance(spectral_axis, bool) or not isinstance(spectral_axis, (int, np.integer)):
            raise InputError(f"spectral_axis must be an integer axis, got {spectral_axis!r}")
        cube = read_frames(source, key=key, progress=progress).data
        try:
            data, shape = spectral_frames(cube, spectral_axis)
        except InputError as exc:
            if not isinstance(source, (str, os.PathLike)):
                raise
            raise InputError(f"{os.fspath(source)}: {exc}") from None  # say which file
        return Frames(data, None, shape)
    if not isinstance(source, (str, os.PathLike)):
        return _from_object(source)
    text = os.fspath(source)
    if _WILDCARDS.search(text) and not Path(text).exists():
        return _read_pattern(text, progress)
    path, key = _split_key(text, key)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    suffix = path.suffix.lower()
    if path.is_dir() and suffix != ".zarr":
        return _read_images([p for p in path.iterdir() if _is_image(p)], str(path), progress)
    if suffix in _TIFF:
        return _read_tiff(path)
    if suffix == ".png":
        return Frames(_read_image(path)[None], np.asarray([path.name]))
    return Frames(_read_array(path, key), None)


#: Only * and ? are wildcards in a frames pattern: [ and ] are common in folder names.
_WILDCARDS = re.compile(r"[*?]")


def _expand_pattern(pattern: str) -> list[Path]:
    """The paths a frames pattern matches: ``*`` and ``?`` are wildcards, ``[`` and ``]`` match
    themselves (``scan[1]/*.png`` is the folder ``scan[1]``, never ``scan1``)."""
    return [Path(p) for p in glob.glob(pattern.replace("[", "[[]"))]


def _read_pattern(pattern: str, progress: Any = None) -> Frames:
    """The images a glob pattern matches, one frame each; an error names the pattern."""
    matches = _expand_pattern(pattern)
    images = [p for p in matches if _is_image(p)]
    if images:
        return _read_images(images, pattern, progress)
    rule = "only * and ? are wildcards; [ and ] match themselves"
    if matches:
        names = ", ".join(sorted(p.name for p in matches)[:3])
        raise InputError(
            f"the pattern {pattern!r} matches {len(matches)} path(s) but no PNG or TIFF image "
            f"({', '.join(_IMAGES)}), e.g. {names}; a pattern of frames names image files, "
            "one frame each"
        )
    # The folder part before the first wildcard: name it when it is missing (a typo there).
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if _WILDCARDS.search(part))
    fixed = Path(*parts[:first]) if first else Path(".")
    where = "" if fixed.is_dir() else f"; the folder {str(fixed)!r} does not exist"
    raise InputError(f"no file matches the pattern {pattern!r} ({rule}){where}")


def _is_image(p: str | Path) -> bool:
    return Path(p).suffix.lower() in _IMAGES and Path(p).is_file()


def _read_array(path: Path, key: str | None) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".npz":
        return _read_npz(path, key)
    if suffix in _HDF5:
        return _read_hdf5(path, key)
    if suffix == ".zarr":
        return _read_zarr(path, key)
    raise InputError(
        f"cannot tell the format of {path} from its extension {suffix or '(none)'!r}; "
        f"supported: {', '.join(SUPPORTED)}, or a folder of images"
    )


def read_reference(source: Any, *, key: str | None = None) -> np.ndarray:
    """Read one reference frame: an image (PNG/TIFF, one page), ``.npy``, ``.npz``, HDF5 or zarr.

    Returns
    -------
    ndarray, shape S
        The reference as stored (integers are converted later, exactly).
    """
    if not isinstance(source, (str, os.PathLike)):
        return np.asarray(source)
    path, key = _split_key(source, key)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in _IMAGES:
        data = _read_image(path)
    else:
        data = _read_array(path, key)
    return np.asarray(data)
