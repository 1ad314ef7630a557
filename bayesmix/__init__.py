"""bayesmix: Bayesian estimation of mixing coefficients in image sequences.

Each frame is modelled as ``y_i = x_i * A + (1 - x_i) * B + noise``. The pixels enter every
inference path only through four per-frame statistics computed in one pass
(:func:`frame_stats`); the fast path (:func:`fit_map`) then gives the MAP and the exact
posterior of every weight given the learned noise scale.
"""

from bayesmix import noise, priors, temporal
from bayesmix._arviz import Diagnostics, diagnose, read_idata
from bayesmix._compare import compare
from bayesmix._errors import InputError
from bayesmix._map import fit_map, fit_map_stats
from bayesmix._model import MixingModel, make_model
from bayesmix._nuts import sample, sample_stats
from bayesmix._readers import Frames, read_frames, read_reference
from bayesmix._report import report
from bayesmix._results import MapResult
from bayesmix._simulate import Simulation, sample_references, simulate, simulate_walk
from bayesmix._stats import BasisStats, FrameStats, GainStats, SimplexStats, frame_stats
from bayesmix._version import __version__
from bayesmix._writers import read_results, write_idata, write_results
from bayesmix.priors import (
    Beta,
    Dirichlet,
    InverseGamma,
    Jeffreys,
    PointMassMixture,
    TruncatedNormal,
    Uniform,
)

__all__ = [
    "BasisStats",
    "GainStats",
    "MixingModel",
    "make_model",
    "noise",
    "Beta",
    "Diagnostics",
    "Dirichlet",
    "FrameStats",
    "Frames",
    "InputError",
    "InverseGamma",
    "Jeffreys",
    "MapResult",
    "PointMassMixture",
    "Simulation",
    "SimplexStats",
    "TruncatedNormal",
    "Uniform",
    "__version__",
    "compare",
    "diagnose",
    "fit_map",
    "fit_map_stats",
    "frame_stats",
    "priors",
    "read_frames",
    "read_idata",
    "read_reference",
    "read_results",
    "report",
    "sample",
    "sample_references",
    "sample_stats",
    "simulate",
    "simulate_walk",
    "temporal",
    "write_idata",
    "write_results",
]
