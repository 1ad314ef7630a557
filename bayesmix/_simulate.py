"""Realistic test sequences with a known answer."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from bayesmix._errors import InputError
from bayesmix.priors import XPrior, check_prior

__all__ = ["Simulation", "sample_references", "simulate", "simulate_walk"]


class Simulation(NamedTuple):
    """A simulated stack and the truth behind it."""

    frames: np.ndarray  #: shape (N, *S), float32
    ref_a: np.ndarray  #: shape S, float64
    ref_b: np.ndarray  #: shape S, float64
    x: np.ndarray  #: shape (N,), the true weights of ref_a
    sigma: float  #: the true noise scale


def _spectra(p: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping absorption-edge spectra (like Fe3+ / Fe2+ L-edges) on p channels."""
    e = np.linspace(0.0, 1.0, p)

    def edge(centre: float, peak: float) -> np.ndarray:
        step = 0.5 * (1.0 + np.tanh((e - centre) / 0.03))
        return 0.3 * step + np.exp(-0.5 * ((e - peak) / 0.025) ** 2)

    return edge(0.42, 0.47), edge(0.38, 0.41) + 0.6 * np.exp(-0.5 * ((e - 0.62) / 0.03) ** 2)


def sample_references(shape: tuple[int, ...] = (64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Two reference frames from data that ships with scikit-image (nothing is downloaded).

    For a 2-D ``shape``: the 'camera' and 'moon' sample images, resized, scaled to [0, 1].
    For a 1-D ``shape`` (spectra): two synthetic absorption-edge spectra.

    Examples
    --------
    >>> from bayesmix import sample_references
    >>> a, b = sample_references((32, 48))
    >>> a.shape, b.shape, bool(a.min() >= 0 and a.max() <= 1)
    ((32, 48), (32, 48), True)
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape):
        raise InputError(f"shape must be positive, got {shape}")
    if len(shape) == 1:
        return _spectra(shape[0])
    if len(shape) != 2:
        raise InputError(
            f"default references exist for 1-D (spectra) or 2-D (image) frames, got shape {shape}; "
            "pass ref_a and ref_b"
        )
    from skimage import data
    from skimage.transform import resize

    refs = []
    for img in (data.camera(), data.moon()):
        r = resize(img.astype(np.float64) / 255.0, shape, anti_aliasing=True)
        refs.append(np.clip(r, 0.0, 1.0))
    return refs[0], refs[1]


def simulate(
    n_frames: int,
    *,
    ref_a: Any = None,
    ref_b: Any = None,
    shape: tuple[int, ...] = (64, 64),
    noise: float = 0.1,
    x: Any = None,
    prior: XPrior | None = None,
    seed: int = 0,
) -> Simulation:
    """Simulate ``frames[i] = x[i] * ref_a + (1 - x[i]) * ref_b + noise``.

    Parameters
    ----------
    n_frames : int
        N, the number of frames.
    ref_a, ref_b : array, shape S, optional
        References; default :func:`sample_references` of ``shape``.
    shape : tuple of int
        Frame shape when the references are not given.
    noise : float
        Standard deviation of the i.i.d. Gaussian pixel noise.
    x : array, shape (N,), optional
        True weights; default drawn from ``prior``.
    prior : prior on x, optional
        Where the true weights come from; default ``TruncatedNormal(0.55, 0.15, 0, 1)``.
    seed : int
        Seed of the numpy generator: the same seed gives the same stack.

    Returns
    -------
    Simulation
        ``frames`` (float32, shape (N, *S)), ``ref_a``, ``ref_b``, ``x``, ``sigma``.

    Examples
    --------
    >>> from bayesmix import simulate
    >>> sim = simulate(10, shape=(8, 8), seed=3)
    >>> sim.frames.shape, sim.frames.dtype.name, sim.x.shape
    ((10, 8, 8), 'float32', (10,))
    """
    if int(n_frames) != n_frames or n_frames < 1:
        raise InputError(f"n_frames must be a positive integer, got {n_frames!r}")
    n_frames = int(n_frames)
    if not (np.isfinite(noise) and noise >= 0):
        raise InputError(f"noise must be a finite standard deviation >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    if (ref_a is None) != (ref_b is None):
        raise InputError("pass both ref_a and ref_b, or neither (to use the sample references)")
    if ref_a is None:
        ref_a, ref_b = sample_references(shape)
    ref_a = np.asarray(ref_a, np.float64)
    ref_b = np.asarray(ref_b, np.float64)
    if ref_a.shape != ref_b.shape:
        raise InputError(
            f"ref_a and ref_b must have the same shape, got {ref_a.shape} and {ref_b.shape}"
        )
    if x is None:
        x = check_prior(prior).sample(rng, n_frames)
    x = np.asarray(x, np.float64)
    if x.shape != (n_frames,):
        raise InputError(f"x must have shape ({n_frames},), got {x.shape}")
    b = ref_b.astype(np.float32).reshape(-1)
    d = (ref_a - ref_b).astype(np.float32).reshape(-1)
    frames = rng.standard_normal((n_frames, b.size), dtype=np.float32)
    frames *= np.float32(noise)
    frames += b
    frames += x.astype(np.float32)[:, None] * d
    return Simulation(frames.reshape((n_frames, *ref_a.shape)), ref_a, ref_b, x, float(noise))


def simulate_walk(
    n_frames: int,
    q: float,
    *,
    start: float = 0.5,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> np.ndarray:
    """Weights along a sequence: a Gaussian random walk of step sd ``q``, reflected at the
    bounds (pass it as ``x=`` to :func:`simulate`).

    Parameters
    ----------
    n_frames : int
        N, the number of frames.
    q : float
        The step's sd per frame (>= 0).
    start : float
        The first frame's weight, within ``bounds``.
    bounds : (float, float)
        The walk is reflected back inside (lo, hi) whenever a step leaves it.
    seed : int
        Seed of the numpy generator.

    Returns
    -------
    ndarray, shape (N,)

    Examples
    --------
    >>> from bayesmix import simulate, simulate_walk
    >>> x = simulate_walk(100, 0.01, seed=0)
    >>> sim = simulate(100, shape=(8, 8), x=x)
    >>> bool(abs(x[1] - x[0]) < 0.05), bool(((x > 0) & (x < 1)).all())
    (True, True)
    """
    if int(n_frames) != n_frames or n_frames < 1:
        raise InputError(f"n_frames must be a positive integer, got {n_frames!r}")
    lo, hi = (float(v) for v in bounds)
    if not (math.isfinite(q) and q >= 0):
        raise InputError(f"q must be a finite step sd >= 0, got {q!r}")
    if not lo < start < hi:
        raise InputError(f"start must lie inside bounds {bounds}, got {start!r}")
    steps = np.random.default_rng(seed).standard_normal(int(n_frames) - 1) * q
    x = np.empty(int(n_frames))
    x[0] = start
    span = hi - lo
    for t, step in enumerate(steps, 1):
        # Reflect (folding the line onto [lo, hi]): a bounded walk with the same local steps.
        v = (x[t - 1] + step - lo) % (2.0 * span)
        x[t] = lo + (v if v <= span else 2.0 * span - v)
    return x
