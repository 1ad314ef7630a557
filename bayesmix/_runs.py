"""Resumable statistics passes for very long jobs.

The pass over the pixels is the only expensive step, and it is a reduction over frames: the stack
is cut into chunks of ``chunk`` frames, and each chunk's statistics (five numbers a frame) are
saved in a work folder beside the output, ``<out>.parts/``, with a manifest. An interrupted run
(Ctrl-C, kill, a crash) restarted with ``resume=True`` recomputes only the chunks the manifest does
not list. The final fit needs only the O(N) statistics, so the finished results are the same,
bit for bit, as those of an uninterrupted run.

Nothing half-written is ever taken as finished: a chunk's file is written to a temporary name and
renamed when complete, and only then listed in the manifest (itself replaced atomically); a
listed chunk whose file does not load back whole is recomputed. A work folder made for other
inputs or options (its fingerprint differs) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bayesmix._errors import InputError
from bayesmix._io import Stack, atomic_write
from bayesmix._model import MixingModel, make_model
from bayesmix._stats import BasisStats, FrameStats, basis_stats_from_stack, stats_from_stack

__all__ = ["checkpointed_stats", "fingerprint", "finish", "parts_dir"]

_MANIFEST = "manifest.json"


def parts_dir(out: str | os.PathLike) -> Path:
    """The work folder of the run writing ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def fingerprint(stack: Stack, options: dict[str, Any], model: MixingModel | None = None) -> str:
    """A digest of what determines the statistics: the references, the mask, the model's basis,
    the stack's shape and dtype, the chunking and the caller's ``options`` (e.g. input file
    names and sizes)."""
    h = hashlib.sha256()
    model = make_model() if model is None else model
    basis = model.basis(stack.frame_shape)
    arrays = (stack.ref_a, stack.ref_b, stack.pixels if stack.pixels is not None else (), basis)
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps(model.describe(), sort_keys=True).encode())
    h.update(repr((tuple(stack.frames.shape), str(stack.frames.dtype))).encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _read_manifest(work: Path) -> dict[str, Any]:
    try:
        return json.loads((work / _MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)), overwrite=True)


def _load_chunk(path: Path, size: int, kind: type = FrameStats) -> Any:
    """A saved chunk, or None if it is missing, truncated or of the wrong length."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = kind(*(z[k] for k in kind._fields))
    except Exception:  # truncated or foreign: zipfile, numpy and the OS raise many kinds
        return None
    return stats if all(len(a) == size for a in stats) else None


def checkpointed_stats(
    stack: Stack,
    work: Path,
    *,
    chunk: int,
    key: str,
    resume: bool,
    progress: Callable[[int], object] | None = None,
    memory_limit: int | None = None,
    model: MixingModel | None = None,
) -> FrameStats | BasisStats:
    """The statistics pass the model needs, chunk by chunk, each chunk saved in ``work`` as it
    finishes.

    ``key`` (from :func:`fingerprint`) must match the manifest's when resuming. Returns the
    statistics of the whole stack; ``work`` is left in place (remove it once the results are
    written, with :func:`finish`).
    """
    n_frames = int(stack.frames.shape[0])
    if work.exists() and not resume:
        raise FileExistsError(
            f"an interrupted run left {work}; pass --resume to continue it, or --overwrite "
            "to start again"
        )
    manifest = _read_manifest(work) if work.exists() else {}
    if manifest and manifest.get("key") != key:
        raise InputError(
            f"{work} belongs to a run with other inputs or options; remove it or pass "
            "--overwrite to start again"
        )
    work.mkdir(parents=True, exist_ok=True)
    manifest = {"key": key, "n_frames": n_frames, "chunk": chunk, "done": {}, **manifest}
    if manifest["chunk"] != chunk:
        raise InputError(f"{work} was made with chunks of {manifest['chunk']} frames, not {chunk}")

    model = make_model() if model is None else model
    kind = FrameStats if model.is_plain else BasisStats
    parts = []
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        name = f"chunk-{start:012d}.npz"
        saved = (_load_chunk(work / name, stop - start, kind) if name in manifest["done"]
                 else None)  # fmt: skip
        if saved is None:
            sub = stack._replace(frames=stack.frames[start:stop])
            if kind is FrameStats:
                saved = stats_from_stack(sub, memory_limit=memory_limit, stacklevel=3)
            else:
                saved = basis_stats_from_stack(sub, model, memory_limit=memory_limit,
                                               stacklevel=3)  # fmt: skip

            def save(tmp: str, st: Any = saved) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **st._asdict())

            atomic_write(work / name, save, overwrite=True)
            manifest["done"][name] = [start, stop]
            _write_json(work / _MANIFEST, manifest)
        parts.append(saved)
        if progress is not None:
            progress(stop - start)
    return kind(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))


def finish(work: Path) -> None:
    """Remove a run's work folder once its results are written."""
    shutil.rmtree(work, ignore_errors=True)
