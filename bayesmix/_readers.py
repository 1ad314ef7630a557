"""Readers: frame stacks and references from files (chosen by extension) or array objects.

Supported sources:

- multi-page TIFF (``.tif``, ``.tiff``), one frame per page;
- a folder, or a glob pattern, of PNG/TIFF images, one frame per file in natural sort order
  (``img2.png`` before ``img10.png``);
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
        with np.load(path, allow_pickle=False) as npz:
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


class TiffStack:
    """The pages of a multi-page TIFF as a lazy array of shape (pages, *page_shape).

    Slicing reads only those pages, so the statistics pass streams the file chunk by chunk.
    Opening checks the file's structure (every page listed, every page's data inside the file),
    so a truncated or corrupt TIFF fails here, not half-way through a fit.
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
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
        except Exception as exc:
            raise _fail(path, "TIFF", exc) from None
        finally:
            log.removeHandler(handler)
            log.propagate = propagate
        if problems:
            self._tif.close()
            raise InputError(f"cannot read {path} as TIFF: {problems[0]} (corrupt or truncated?)")
        self.shape = (len(pages), *pages[0].shape)
        self.dtype = np.dtype(pages[0].dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            pages = list(range(*key.indices(self.shape[0])))
            if not pages:
                return np.empty((0, *self.shape[1:]), self.dtype)
            try:
                data = self._tif.asarray(key=pages)
            except Exception as exc:
                raise _fail(self.path, "TIFF", exc) from None
            return data.reshape(len(pages), *self.shape[1:])
        if isinstance(key, (int, np.integer)):
            return self[int(key) : int(key) + 1 or None][0]
        return np.asarray(self[:])[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"TiffStack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def _read_tiff(path: Path) -> Frames:
    """Every page of a TIFF, one frame each (a single page is one frame), read lazily."""
    stack = TiffStack(path)
    return Frames(stack, np.asarray([f"{path.name}:{i}" for i in range(len(stack))]))


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in _TIFF:
        import tifffile

        reader, kind = tifffile.imread, "TIFF"
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
        A ``.tif``/``.tiff`` (one frame per page), ``.npy``, ``.npz``, HDF5 or ``.zarr`` file; a
        folder or glob pattern of PNG/TIFF images (one frame each, natural sort order); or a
        numpy, dask or xarray array (xarray: dimension ``frame`` first).
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
        ``data`` of shape (N, *S) (lazy for ``.npy``, HDF5, zarr and dask), and ``source``, the
        file (and page) of each frame where known, else None; ``map_shape`` for a spectrum
        image.

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
        data, shape = spectral_frames(cube, spectral_axis)
        return Frames(data, None, shape)
    if not isinstance(source, (str, os.PathLike)):
        return _from_object(source)
    text = os.fspath(source)
    if any(c in text for c in "*?[") and not Path(text).exists():
        return _read_images([Path(p) for p in glob.glob(text) if _is_image(p)], text, progress)
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
