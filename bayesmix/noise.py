"""Noise models: what the pixel noise of a frame is assumed to be.

Each model is a frozen dataclass; the fit reads it through its type (no string kinds past the
boundary). Strings name the common ones: ``'gaussian'``, ``'per_frame'``, ``'poisson'``,
``'student_t'`` (see :func:`check_noise`).

- :class:`Gaussian`: i.i.d. Gaussian pixels with one scale sigma for all frames (the default).
- :class:`PerFrame`: each frame its own sigma_i, with a population prior
  :math:`\\log\\sigma_i \\sim \\mathcal N(\\mu, \\tau^2)` whose mu and tau are learned.
- :class:`PoissonGaussian`: counts, variance ``gain * mean + read_sd**2`` (photon counting
  with read noise); ``'poisson'`` is gain 1 without read noise. Unknown gain / read noise are
  learned from the residuals.
- :class:`StudentT`: heavy-tailed pixels (hot pixels, cosmic rays, dust): each pixel a
  Gaussian scale mixture, so outliers are down-weighted instead of dragging x.

A per-pixel variance map (``variance=`` of :func:`bayesmix.fit_map`) combines with the Gaussian
models: sigma then scales the map.

Examples
--------
>>> from bayesmix.noise import check_noise, noise_spec
>>> check_noise("poisson")
PoissonGaussian(gain=1.0, read_sd=0.0)
>>> noise_spec(check_noise("student_t"))
'student_t'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesmix._errors import InputError

__all__ = [
    "NOISES",
    "NOISE_PARAMS",
    "Gaussian",
    "NoiseModel",
    "PerFrame",
    "PoissonGaussian",
    "StudentT",
    "check_noise",
    "noise_spec",
    "parse_noise",
]

#: What a fit learns about the noise (``MapResult.noise_params`` keys, results attributes).
NOISE_PARAMS = ("log_sigma_mu", "log_sigma_tau", "noise_gain", "noise_read_sd", "noise_df",
                "noise_scale", "noise_passes")  # fmt: skip

#: Names accepted for ``noise=`` (and ``--noise`` on the command line).
NOISES = ("gaussian", "per_frame", "poisson", "poisson_gaussian", "student_t")

# Below half a count the Gaussian approximation of a Poisson pixel has no meaning; the floor
# keeps the weight of an expected-zero pixel finite.
_MIN_COUNTS = 0.5


@dataclass(frozen=True)
class Gaussian:
    """i.i.d. Gaussian pixel noise with one scale sigma shared by every frame."""

    #: The fit re-weights pixels from the current fit (several passes).
    reweights = False

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        return {"noise": "gaussian"}


@dataclass(frozen=True)
class PerFrame:
    """Gaussian pixels with a noise scale sigma_i per frame.

    The scales share a population prior :math:`\\log\\sigma_i \\sim \\mathcal N(\\mu, \\tau^2)`,
    with mu and tau learned from all frames (maximum marginal likelihood). The fast path
    integrates each sigma_i out, so x's posterior is a scale mixture of truncated normals
    (Student-t like, wider where a frame's own noise is poorly known).
    """

    reweights = False

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        return {"noise": "per_frame"}


@dataclass(frozen=True)
class PoissonGaussian:
    """Counts: pixel variance ``gain * mean + read_sd**2`` (photon noise plus read noise).

    Parameters
    ----------
    gain : float, optional
        Detector units per photon (1 for counts). None: learned from the residuals.
    read_sd : float, optional
        Read-noise sd in detector units. None: learned from the residuals.

    Notes
    -----
    The variance follows the mean, so the fast path weights every pixel by the inverse of its
    variance at the current fit and repeats the statistics pass (a few passes; iteratively
    re-weighted least squares). The likelihood in x is then the Gaussian approximation of the
    Poisson likelihood at the fitted mean; means below half a count are floored there.
    """

    gain: float | None = None
    read_sd: float | None = None
    reweights = True

    def __post_init__(self) -> None:
        for name in ("gain", "read_sd"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise InputError(f"PoissonGaussian {name} must be a number or None, got {value!r}")
            ok = math.isfinite(value) and (value > 0 if name == "gain" else value >= 0)
            if not ok:
                need = "> 0" if name == "gain" else ">= 0"
                raise InputError(
                    f"PoissonGaussian {name} must be finite and {need} (or None to learn it), "
                    f"got {value!r}"
                )
            object.__setattr__(self, name, float(value))

    def variance(self, mean: np.ndarray, gain: float, read2: float) -> np.ndarray:
        """Pixel variance at the fitted ``mean`` (detector units)."""
        return gain * gain * np.maximum(mean / gain, _MIN_COUNTS) + read2

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        if self.gain == 1.0 and self.read_sd == 0.0:
            return {"noise": "poisson"}
        out: dict[str, Any] = {"noise": "poisson_gaussian"}
        if self.gain is not None:
            out["noise_gain"] = self.gain
        if self.read_sd is not None:
            out["noise_read_sd"] = self.read_sd
        return out


@dataclass(frozen=True)
class StudentT:
    """Heavy-tailed pixels: Student-t with ``df`` degrees of freedom and scale sigma.

    Parameters
    ----------
    df : float, optional
        Degrees of freedom (> 0; small means heavy tails). None: learned from the residuals.

    Notes
    -----
    A Student-t pixel is a Gaussian whose precision is scaled by a Gamma(df/2, df/2) weight.
    The fast path runs EM: each pass weights pixel p of frame i by
    :math:`(\\nu + 1) / (\\nu + r_{ip}^2 / \\sigma^2)` at the current residual :math:`r_{ip}`,
    so a hot pixel gets a weight near 0; the weighted statistics then give x and sigma as for
    Gaussian noise, and the intervals come from the converged weights.
    """

    df: float | None = None
    reweights = True

    def __post_init__(self) -> None:
        if self.df is None:
            return
        if isinstance(self.df, bool) or not isinstance(self.df, (int, float, np.number)):
            raise InputError(f"StudentT df must be a number or None, got {self.df!r}")
        if not (math.isfinite(self.df) and self.df > 0):
            raise InputError(
                f"StudentT df must be finite and > 0 (or None to learn it), got {self.df!r}"
            )
        object.__setattr__(self, "df", float(self.df))

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        out: dict[str, Any] = {"noise": "student_t"}
        if self.df is not None:
            out["noise_df"] = self.df
        return out


NoiseModel = Gaussian | PerFrame | PoissonGaussian | StudentT

_BY_NAME = {
    "gaussian": Gaussian,
    "per_frame": PerFrame,
    "poisson": lambda: PoissonGaussian(gain=1.0, read_sd=0.0),
    "poisson_gaussian": PoissonGaussian,
    "student_t": StudentT,
}


def check_noise(noise: Any) -> NoiseModel:
    """A noise model from a name in :data:`NOISES` or an instance of a noise class."""
    if noise is None:
        return Gaussian()
    if isinstance(noise, (Gaussian, PerFrame, PoissonGaussian, StudentT)):
        return noise
    if isinstance(noise, str) and noise in _BY_NAME:
        return _BY_NAME[noise]()
    raise InputError(
        f"noise must be one of {NOISES} or a bayesmix.noise model (e.g. "
        f"PoissonGaussian(gain=2.0), StudentT(df=4)), got {noise!r}"
    )


def noise_spec(noise: NoiseModel) -> str:
    """A one-line spec that :func:`parse_noise` reads back, e.g. ``'student_t:df=4'``."""
    desc = dict(noise.describe())
    name = desc.pop("noise")
    if not desc:
        return name
    args = ",".join(f"{k.removeprefix('noise_')}={v:g}" for k, v in desc.items())
    return f"{name}:{args}"


def parse_noise(text: str) -> NoiseModel:
    """The noise model of a spec: ``'gaussian'``, ``'per_frame'``, ``'poisson'``,
    ``'poisson_gaussian[:gain=G][,read_sd=R]'``, ``'student_t[:df=NU]'``."""
    name, _, rest = str(text).strip().partition(":")
    if name not in _BY_NAME:
        raise InputError(f"noise must be one of {NOISES}, got {text!r}")
    allowed = {"poisson_gaussian": ("gain", "read_sd"), "student_t": ("df",)}.get(name, ())
    kwargs: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in allowed:
            raise InputError(
                f"noise {name!r} takes {', '.join(allowed) or 'no parameters'} as key=value, "
                f"got {part!r} in {text!r}"
            )
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            raise InputError(
                f"noise parameter {key.strip()} must be a number, got {value!r}"
            ) from None
    if name == "poisson" or not kwargs:
        return check_noise(name)
    return _BY_NAME[name](**kwargs)
