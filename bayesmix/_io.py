"""Input boundary: check and normalise frames, references and masks.

Everything user-supplied passes through :func:`prepare` once; the numerical code behind it can
then assume clean inputs. Frames are not copied here (a memory-mapped stack stays on disk): they
are converted chunk by chunk in the statistics pass.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bayesmix._errors import InputError

__all__ = [
    "ChunkStream",
    "Stack",
    "atomic_write",
    "atomic_write_all",
    "check_variance",
    "in_units",
    "prepare",
    "spectral_frames",
    "work_dtype",
]


class ChunkStream:
    """Frames that arrive as an iterator of arrays of shape (k, *S), read once, in order.

    The first chunk is read when the stream is built (it sets S and the dtype); each later
    chunk is checked against it as it arrives.
    """

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._it = iter(chunks)
        first = next(self._it, None)
        if first is None:
            raise InputError("frames is an empty iterator (no chunk); nothing to fit")
        self._first: Any = self._check(first, None)
        self.dtype = self._first.dtype
        self.shape = (None, *self._first.shape[1:])  # N unknown until the end
        self._used = False

    def _check(self, chunk: Any, like: Any) -> np.ndarray:
        chunk = np.asarray(_as_array("a chunk of frames", chunk))
        _check_numeric("a chunk of frames", chunk.dtype)
        if chunk.ndim < 2 or chunk.shape[0] == 0:
            raise InputError(
                f"each chunk of frames must have shape (k, *S) with k >= 1, got {chunk.shape}"
            )
        if like is not None and (chunk.shape[1:] != like.shape[1:] or chunk.dtype != like.dtype):
            raise InputError(
                f"chunks of frames must share shape and dtype: the first is "
                f"{like.shape[1:]} {like.dtype}, a later one {chunk.shape[1:]} {chunk.dtype}"
            )
        return chunk

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._used:
            raise InputError("this iterator of frames was already consumed; pass a new one")
        self._used = True
        yield self._first
        for chunk in self._it:
            yield self._check(chunk, self._first)


class Stack(NamedTuple):
    """A validated frame stack, ready for the statistics pass."""

    frames: Any  #: array-like of shape (N, *S), not yet converted
    ref_a: np.ndarray  #: float64, shape (P,), the selected pixels of A
    ref_b: np.ndarray  #: float64, shape (P,)
    pixels: np.ndarray | None  #: flat indices of the pixels kept by the mask, or None for all
    frame_shape: tuple[int, ...]  #: S
    dtype: np.dtype  #: float dtype the pass computes in (float32 or float64)
    more_refs: np.ndarray | None = None  #: float64, shape (K - 2, P): references beyond A, B
    #: The pass reads frames / scale (a power of two, so exactly) against references already
    #: divided by it: 1.0 unless the data's level is beyond what the pass's dtype sums safely
    #: (see :func:`in_units`).
    scale: float = 1.0

    @property
    def refs(self) -> np.ndarray:
        """All K references on the selected pixels, float64 of shape (K, P)."""
        more = () if self.more_refs is None else tuple(self.more_refs)
        return np.stack([self.ref_a, self.ref_b, *more])

    @property
    def n_refs(self) -> int:
        """K, the number of references."""
        return 2 if self.more_refs is None else 2 + int(self.more_refs.shape[0])


def work_dtype(dtype: np.dtype) -> np.dtype:
    """Float dtype used for a stack of ``dtype``: exact for every value the input can hold
    (extended precision is rounded to float64, below any noise).

    Examples
    --------
    >>> [str(work_dtype(t)) for t in ("u2", "f2", "f4", "i4", "f8", "longdouble")]
    ['float32', 'float32', 'float32', 'float64', 'float64', 'float64']
    """
    dtype = np.dtype(dtype)
    if dtype.itemsize > 4 if dtype.kind == "f" else dtype.itemsize > 2:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _check_extended(frames: Any) -> None:
    """Extended-precision frames are read as float64: refuse values beyond its range."""
    dtype = np.dtype(frames.dtype)
    if dtype.kind != "f" or dtype.itemsize <= 8 or not isinstance(frames, np.ndarray):
        return
    big = np.abs(frames) > np.finfo(np.float64).max
    if big.any():
        raise InputError(
            f"frames of dtype {dtype} hold {int(big.sum())} value(s) beyond float64's range "
            "(about 1e308), which bayesmix computes in; divide the frames and references by a "
            "unit near their level"
        )


def _frame_dim_first(frames: Any) -> Any:
    """An xarray stack with its ``frame`` dimension first (as :func:`read_frames` returns it)."""
    dims = tuple(getattr(frames, "dims", ()) or ())
    if "frame" in dims and dims[0] != "frame" and hasattr(frames, "transpose"):
        return frames.transpose("frame", ...)
    return frames


def _aligned(name: str, value: Any, frame_dims: tuple) -> Any:
    """A reference (or mask) with dimension names laid out as the frames' (after ``frame``)."""
    dims = tuple(getattr(value, "dims", ()) or ())
    if not dims or not frame_dims or not isinstance(dims[0], str):
        return value
    if set(dims) != set(frame_dims) or len(dims) != len(frame_dims):
        raise InputError(
            f"{name} has dimensions {dims} but each frame has {frame_dims}; name the same "
            "dimensions (e.g. rename or transpose), or pass plain arrays to match by position"
        )
    return value.transpose(*frame_dims)


def _unmasked_frames(frames: Any) -> Any:
    """A ``numpy.ma`` stack as floats with NaN at its masked pixels (left out of their frame)."""
    if not _is_masked(frames):
        return frames
    dtype = work_dtype(frames.dtype) if np.dtype(frames.dtype).kind in "fiu" else frames.dtype
    return np.ma.filled(frames.astype(dtype), np.nan)


def _reference_mask(refs: Sequence[Any], mask: Any) -> Any:
    """``mask`` with the pixels masked in any ``numpy.ma`` reference left out."""
    masked = [np.ma.getmaskarray(r) for r in refs if _is_masked(r)]
    if not masked:
        return mask
    keep = ~np.logical_or.reduce(masked)
    if mask is None:
        return keep
    m = np.asarray(mask)
    return m & keep if m.dtype == np.bool_ and m.shape == keep.shape else m


def _shape_hint(shape: tuple[int, ...], ref_shape: tuple[int, ...], stream: bool) -> str:
    """How to fix a stack whose frames do not have the references' shape, where it is clear."""
    if stream:
        return f"; each chunk of an iterator must have shape (k, *{ref_shape})"
    if shape == ref_shape:
        return "; a single frame needs a leading axis: frames[None]"
    if shape[:-1] == ref_shape:
        return ("; the frame axis looks last (shape (*S, N)): move it first with "
                "np.moveaxis(frames, -1, 0)")  # fmt: skip
    if shape[1:-1] == ref_shape:
        return (f"; the frames have an extra last axis of {shape[-1]} (channels?) that the "
                "references lack: give references with the same channels, or select one")
    if shape[1:] == ref_shape[:-1]:
        return (f"; the references have an extra last axis of {ref_shape[-1]} (channels?) that "
                "the frames lack")
    return ""


#: |log2| of the data's level within which the pass sums squares in the work dtype without
#: scaling: float32 sums of squares of residuals 1e-4 below the data's level stay normal and
#: block sums far below overflow (2^-126 .. 2^127); float64 statistics of frames of up to
#: 1e6 pixels stay within 2^-1022 .. 2^1023.
_SAFE_LOG2 = {np.dtype(np.float32): 32, np.dtype(np.float64): 480}


def level(values: np.ndarray) -> float:
    """The power of two nearest the RMS of the finite ``values`` (0.0 when none is non-zero).

    Dividing by a power of two is exact in floating point, so a stack in other units gives
    the same numbers bit for bit wherever neither under- nor overflows.

    Examples
    --------
    >>> level(np.array([3e-25, -5e-25]))
    4.1359030627651384e-25
    >>> level(np.array([1.0, 1.0]))
    1.0
    """
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    top = float(np.max(np.abs(v))) if v.size else 0.0
    if top == 0.0:
        return 0.0
    rms = top * float(np.sqrt(np.mean((v / top) ** 2)))  # no square under- or overflows
    return float(2.0 ** round(np.log2(rms)))


def _first_frame(frames: Any) -> np.ndarray:
    """The stack's first frame, read on its own (a lazy stack reads one frame)."""
    if isinstance(frames, ChunkStream):
        return np.asarray(frames._first[0])
    first = frames[0]
    compute = getattr(first, "compute", None)  # dask
    return np.asarray(first if compute is None else compute())


def in_units(stack: Stack, *, from_frames: bool = False) -> Stack:
    """``stack`` ready for a pass in its work dtype: itself when the data's level is within
    what that dtype sums safely, else rescaled by that level (``Stack.scale``).

    The level is the references' (``from_frames``: the first frame's, for models whose
    references may be in other units than the frames, e.g. with a gain). float64 data beyond
    about 1e+/-144 is refused: its sums of squares would leave float64's range.
    """
    values = _first_frame(stack.frames) if from_frames else stack.refs
    s = level(values)
    if s == 0.0 and from_frames:
        s = level(stack.refs)
    if s == 0.0 or abs(np.log2(s)) <= _SAFE_LOG2[np.dtype(stack.dtype)]:
        return stack
    if np.dtype(stack.dtype) == np.float64:
        raise InputError(
            f"the data's level is about {s:.3g}: sums of squares of such values leave float64's "
            "range (about 1e-308 to 1e308); divide the frames and references by a unit near "
            f"{s:.0e} (the weights do not depend on it; sigma scales with it)"
        )
    more = None if stack.more_refs is None else stack.more_refs / s
    return stack._replace(ref_a=stack.ref_a / s, ref_b=stack.ref_b / s, more_refs=more, scale=s)


def _as_array(name: str, value: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__"):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be an array, got {type(value).__name__}: {exc}") from None


def _check_numeric(name: str, dtype: Any) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiu":
        raise InputError(
            f"{name} must hold real numbers (float or integer), got dtype {dtype}; "
            "convert it with np.asarray(..., dtype=float)"
        )


def _reference(name: str, value: Any) -> np.ndarray:
    if _is_masked(value):  # its masked pixels are left out by the mask (_reference_mask)
        value = np.ma.filled(np.ma.asarray(value, np.float64), 0.0)
    ref = np.asarray(_as_array(name, value))
    _check_numeric(name, ref.dtype)
    if ref.size == 0:
        raise InputError(f"{name} is empty (shape {ref.shape}); a reference frame needs pixels")
    ref = ref.astype(np.float64)
    bad = ~np.isfinite(ref)
    if bad.any():
        raise InputError(
            f"{name} has {int(bad.sum())} non-finite pixel(s) (NaN or Inf); references must be "
            "finite: fill them, or exclude those pixels with mask="
        )
    return ref


def _check_variance_values(name: str, v: np.ndarray) -> None:
    if np.any(np.isnan(v)) or np.any(v <= 0) or np.any(v == -np.inf):
        bad = int(np.count_nonzero(~(v > 0)))
        raise InputError(
            f"{name} must be > 0 at every pixel (+inf leaves a pixel out), got {bad} pixel(s) "
            "that are <= 0 or NaN; a variance map holds each pixel's noise variance"
        )


def check_variance(variance: Any, stack: Stack) -> np.ndarray | Any:
    """A variance map for ``stack``: shape S (one map for all frames) or (N, *S) (per frame).

    Returns the map on the selected pixels (float64, shape (n,)) or, per frame, the array-like
    itself (each chunk is checked as the pass reads it).
    """
    arr = _as_array("variance", variance)
    _check_numeric("variance", arr.dtype)
    shape = tuple(arr.shape)
    if shape == stack.frame_shape:
        v = np.asarray(arr, np.float64).reshape(-1)
        if stack.pixels is not None:
            v = v[stack.pixels]
        _check_variance_values("variance", v)
        if not np.any(np.isfinite(v)):
            raise InputError("variance is +inf at every pixel: no pixel is left to fit")
        return v
    n = stack.frames.shape[0]
    if n is not None and shape == (n, *stack.frame_shape):
        return arr
    raise InputError(
        f"variance must have the frame shape {stack.frame_shape} (one map for every frame) or "
        f"the stack's shape {(n, *stack.frame_shape)} (a map per frame), got {shape}"
    )


def prepare(
    frames: Any, ref_a: Any, ref_b: Any, mask: Any = None, more_refs: tuple[Any, ...] = ()
) -> Stack:
    """Validate the inputs of a fit and return a :class:`Stack`.

    ``more_refs`` are the references beyond ``ref_a`` and ``ref_b`` (K >= 3).
    Raises :class:`bayesmix.InputError` (a ``ValueError``) with what was expected, what was
    received and how to fix it.
    """
    if not isinstance(frames, (Iterator, ChunkStream)):
        frames = _unmasked_frames(_frame_dim_first(frames))
        frame_dims = tuple(getattr(frames, "dims", ()) or ())[1:]
        ref_a, ref_b, mask = (_aligned(n, v, frame_dims) for n, v in
                              (("ref_a", ref_a), ("ref_b", ref_b), ("mask", mask)))  # fmt: skip
        more_refs = tuple(_aligned(f"reference {k + 3}", r, frame_dims)
                          for k, r in enumerate(more_refs))  # fmt: skip
    mask = _reference_mask((ref_a, ref_b, *more_refs), mask)
    a = _reference("ref_a", ref_a)
    b = _reference("ref_b", ref_b)
    if a.shape != b.shape:
        raise InputError(f"ref_a and ref_b must have the same shape, got {a.shape} and {b.shape}")
    more = [_reference(f"reference {k + 3}", r) for k, r in enumerate(more_refs)]
    for k, r in enumerate(more):
        if r.shape != a.shape:
            raise InputError(
                f"all references must have the same shape: ref_a has {a.shape}, reference "
                f"{k + 3} has {r.shape}"
            )
    if isinstance(frames, Iterator):
        frames = ChunkStream(frames)
    elif not isinstance(frames, ChunkStream):
        frames = _as_array("frames", frames)
    _check_numeric("frames", frames.dtype)
    shape = tuple(frames.shape)
    if shape[1:] != a.shape:
        raise InputError(
            f"frames must have shape (N, *S) with S = reference shape {a.shape}, got {shape}"
            + _shape_hint(shape, a.shape, isinstance(frames, ChunkStream))
        )
    _check_extended(frames)
    if shape[0] == 0:
        raise InputError("frames is an empty stack (0 frames); nothing to fit")

    pixels = None
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise InputError(
                f"mask must be a boolean array, got dtype {m.dtype}; use mask.astype(bool) "
                "(True keeps a pixel)"
            )
        if m.shape != a.shape:
            raise InputError(f"mask must have the reference shape {a.shape}, got {m.shape}")
        if not m.any():
            raise InputError("mask selects no pixel; True marks the pixels to keep")
        if not m.all():
            pixels = np.flatnonzero(m)
    a = a.reshape(-1)
    b = b.reshape(-1)
    rest = np.stack([r.reshape(-1) for r in more]) if more else None
    if pixels is not None:
        a, b = a[pixels], b[pixels]
        rest = None if rest is None else rest[:, pixels]
    if not np.any(a != b):
        raise InputError(
            "ref_a and ref_b are identical on the selected pixels, so the mixing weight is not "
            "identifiable; check that two different references were passed"
        )
    return Stack(frames, a, b, pixels, shape[1:], work_dtype(frames.dtype), rest)


def spectral_frames(
    stack: Any, spectral_axis: int | None, ref: Any = None
) -> tuple[Any, tuple[int, ...] | None]:
    """A spectrum image as frames: each pixel's spectrum along ``spectral_axis`` is one frame.

    Returns ``(frames, map_shape)``: ``frames`` of shape (H*W..., E) in the map's row-major
    order, and the map's shape, e.g. (H, W); ``(stack, None)`` when ``spectral_axis`` is None.

    Examples
    --------
    >>> import numpy as np
    >>> cube = np.arange(24.0).reshape(4, 2, 3)          # (E, H, W)
    >>> frames, shape = spectral_frames(cube, 0)
    >>> frames.shape, shape, frames[1].tolist()
    ((6, 4), (2, 3), [1.0, 7.0, 13.0, 19.0])
    """
    if spectral_axis is None:
        return stack, None
    if isinstance(spectral_axis, bool) or not isinstance(spectral_axis, (int, np.integer)):
        raise InputError(f"spectral_axis must be an integer axis, got {spectral_axis!r}")
    if isinstance(stack, Iterator):
        raise InputError("spectral_axis needs the whole spectrum image, not an iterator of chunks")
    if _is_masked(stack):
        stack = np.ma.filled(stack.astype(np.result_type(stack.dtype, np.float32)), np.nan)
    arr = _as_array("frames", stack)
    ndim = len(arr.shape)
    if ndim < 2:
        raise InputError(
            f"a spectrum image needs a spectral axis and at least one map axis, got shape "
            f"{tuple(arr.shape)}"
        )
    if not -ndim <= int(spectral_axis) < ndim:
        raise InputError(
            f"spectral_axis {spectral_axis} is out of range for a stack of shape "
            f"{tuple(arr.shape)} ({ndim} axes: use 0 to {ndim - 1}, or -1 for the last)"
        )
    axis = int(spectral_axis) % ndim
    if ref is not None:
        n_e = int(np.shape(ref)[0]) if np.ndim(ref) == 1 else None
        if n_e is not None and n_e != arr.shape[axis]:
            raise InputError(
                f"the references have {n_e} spectral points but axis {axis} of the stack "
                f"{tuple(arr.shape)} has {arr.shape[axis]}; pass the spectral axis (e.g. 0 for "
                "(E, H, W), -1 for (H, W, E))"
            )
    arr = np.asarray(arr)
    map_shape = tuple(int(v) for k, v in enumerate(arr.shape) if k != axis)
    frames = np.moveaxis(arr, axis, -1).reshape(-1, arr.shape[axis])
    return frames, map_shape


def _is_masked(value: Any) -> bool:
    return isinstance(value, np.ma.MaskedArray)


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], *, overwrite: bool = False
) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path``, renamed
    over ``path`` only once complete. An existing ``path`` is an error unless ``overwrite``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = atomic_write(out, lambda tmp: pathlib.Path(tmp).write_text("hi"))
    >>> out.read_text()
    'hi'
    >>> atomic_write(out, lambda tmp: None)
    Traceback (most recent call last):
    ...
    FileExistsError: ... already exists; pass overwrite=True (--overwrite) to replace it
    """
    return atomic_write_all([(path, write)], overwrite=overwrite)[0]


def atomic_write_all(
    targets: Sequence[tuple[str | os.PathLike, Callable[[str], None]]], *, overwrite: bool = False
) -> list[Path]:
    """Write files that belong together (a CSV and its metadata): each atomically, all or none.

    Every target is checked before anything is written (an existing one is an error unless
    ``overwrite``); each ``write(tmp)`` then fills a temporary file beside its target, and only
    once all are complete are they renamed over their targets, in the order given. Give last the
    file readers start from: its presence then means its partners are in place. Should a rename
    fail, the targets this call already renamed are removed again, so that no new file is left
    beside an older partner it does not belong with.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "b.json").write_text("{}")
    >>> atomic_write_all([(d / "b.json", lambda tmp: None), (d / "b.csv", lambda tmp: None)])
    Traceback (most recent call last):
    ...
    FileExistsError: ... already exists; pass overwrite=True (--overwrite) to replace it
    >>> sorted(p.name for p in d.iterdir())
    ['b.json']
    """
    items = [(Path(path), write) for path, write in targets]
    for path, _ in items:
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True (--overwrite) to replace it"
            )
        if not _parent(path).is_dir():
            raise FileNotFoundError(f"output directory {_parent(path)} does not exist")
    # mkstemp creates 0600; give the files the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    temps: list[str] = []
    renamed: list[Path] = []
    try:
        for path, write in items:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=_parent(path))
            os.close(fd)
            temps.append(tmp)
            write(tmp)
            os.chmod(tmp, 0o666 & ~umask)
        for (path, _), tmp in zip(items, temps, strict=True):
            os.replace(tmp, path)
            renamed.append(path)
    except BaseException:
        for name in [*temps, *renamed]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        raise
    return [path for path, _ in items]


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")
