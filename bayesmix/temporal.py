"""Temporal models: how the weights of frames along a sequence are related.

Each model is a frozen dataclass; the fit reads it through its type. Strings name them:
``'independent'`` (the default: every frame's weight has the prior on its own) and
``'random_walk'`` (see :func:`check_temporal`).

- :class:`Independent`: the frames' weights are independent draws of the prior.
- :class:`RandomWalk`: along each sequence,
  :math:`x_t = x_{t-1} + \\varepsilon_t`, :math:`\\varepsilon_t \\sim \\mathcal N(0, q^2
  \\Delta_t)` with :math:`\\Delta_t` the time since the previous frame (1 per frame unless
  ``times=`` is given); the first frame of each sequence has the prior's mean and sd, and the
  whole trajectory is kept in the prior's bounds. The step q is learned from the frames
  (maximum marginal likelihood) unless given.

Examples
--------
>>> from bayesmix.temporal import check_temporal, temporal_spec
>>> check_temporal("random_walk")
RandomWalk(q=None)
>>> temporal_spec(check_temporal("random_walk:q=0.01"))
'random_walk:q=0.01'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesmix._errors import InputError

__all__ = [
    "TEMPORALS",
    "Independent",
    "RandomWalk",
    "TemporalModel",
    "check_temporal",
    "temporal_spec",
]

#: Names accepted for ``temporal=`` (and ``--temporal`` on the command line).
TEMPORALS = ("independent", "random_walk")


@dataclass(frozen=True)
class Independent:
    """Every frame's weight is an independent draw of the prior (the default)."""

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        return {"temporal": "independent"}


@dataclass(frozen=True)
class RandomWalk:
    """A Gaussian random walk of the weight along each sequence, kept within the bounds.

    Parameters
    ----------
    q : float, optional
        The step's sd per unit of time (per frame without ``times=``), in units of x. None:
        learned by maximising the marginal likelihood (the Kalman filter's). ``q -> 0`` is one
        weight for the whole sequence, ``q -> inf`` independent frames under a flat prior.

    Notes
    -----
    The prior of a sequence's weights is

    .. math::

        p(x \\mid q) \\propto \\mathcal N(x_1; \\mu_0, s_0^2)
            \\prod_{t > 1} \\mathcal N(x_t; x_{t-1}, q^2 \\Delta_t)
            \\prod_t \\mathbf 1[lo \\le x_t \\le hi],

    with :math:`\\mu_0, s_0` the mean and sd of the weight's prior (a truncated normal; a
    uniform prior gives a flat start): the walk conditioned on staying within the bounds.
    With a Gaussian likelihood in each :math:`x_t` the posterior is a truncated Gaussian with
    a tridiagonal precision matrix (see :func:`bayesmix.fit_map`).
    """

    q: float | None = None

    def __post_init__(self) -> None:
        if self.q is None:
            return
        if isinstance(self.q, bool) or not isinstance(self.q, (int, float, np.number)):
            raise InputError(f"RandomWalk q must be a number or None, got {self.q!r}")
        if not (math.isfinite(self.q) and self.q > 0):
            raise InputError(
                f"RandomWalk q must be finite and > 0 (or None to learn it), got {self.q!r}; "
                "for one weight for all frames fit the mean frame, for independent frames "
                "use temporal='independent'"
            )
        object.__setattr__(self, "q", float(self.q))

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        out: dict[str, Any] = {"temporal": "random_walk"}
        if self.q is not None:
            out["temporal_q"] = self.q
        return out


TemporalModel = Independent | RandomWalk

_BY_NAME = {"independent": Independent, "random_walk": RandomWalk}


def check_temporal(temporal: Any) -> TemporalModel:
    """A temporal model from a name in :data:`TEMPORALS` (optionally with parameters, as
    ``'random_walk:q=0.01'``) or an instance of a temporal class."""
    if temporal is None:
        return Independent()
    if isinstance(temporal, (Independent, RandomWalk)):
        return temporal
    if isinstance(temporal, str):
        name, _, rest = temporal.strip().partition(":")
        if name in _BY_NAME:
            return _parse(name, rest, temporal)
    raise InputError(
        f"temporal must be one of {TEMPORALS} or a bayesmix.temporal model (e.g. "
        f"RandomWalk(q=0.01)), got {temporal!r}"
    )


def _parse(name: str, rest: str, text: str) -> TemporalModel:
    allowed = ("q",) if name == "random_walk" else ()
    kwargs: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in allowed:
            raise InputError(
                f"temporal {name!r} takes {', '.join(allowed) or 'no parameters'} as key=value,"
                f" got {part!r} in {text!r}"
            )
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            raise InputError(
                f"temporal parameter {key.strip()} must be a number, got {value!r}"
            ) from None
    return _BY_NAME[name](**kwargs)


def temporal_spec(temporal: TemporalModel) -> str:
    """A one-line spec that :func:`check_temporal` reads back, e.g. ``'random_walk:q=0.01'``."""
    desc = dict(temporal.describe())
    name = desc.pop("temporal")
    if not desc:
        return name
    return name + ":" + ",".join(f"{k.removeprefix('temporal_')}={v:g}" for k, v in desc.items())
