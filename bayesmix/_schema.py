"""The one schema of per-frame results: the table's columns and the InferenceData's groups.

The fast path (:class:`~bayesmix._results.MapResult`) and NUTS (InferenceData) both build their
per-frame table here (:func:`frame_table`), so their columns, names and flags cannot disagree;
writers, the report and the CLI read that table. The statistics a model's inference runs on are
written as columns (:func:`stats_columns`) and read back (:func:`stats_from_columns`), so a
results file rebuilds its fit. ArviZ itself is called only in :mod:`bayesmix._arviz`.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Mapping
from functools import singledispatch
from typing import TYPE_CHECKING, Any

import numpy as np

from bayesmix._errors import InputError
from bayesmix._likelihood import misfit_pvalue, misfit_qvalues
from bayesmix._stats import FrameStats, GainStats, SimplexStats

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MAP_DIMS",
    "REF_VARS",
    "TEMPORAL_COLUMNS",
    "frame_table",
    "interval_labels",
    "interval_prob",
    "label_quantile",
    "map_coords",
    "model_attrs",
    "percent",
    "stats_columns",
    "stats_from_columns",
    "temporal_from_columns",
]

#: Names of the map axes of a spectrum image's results (2-D maps: rows, columns).
MAP_DIMS = ("y", "x")


#: Exact decimal arithmetic for labels: a float's shortest decimal has at most 17 digits and an
#: exponent down to -324, so 400 digits never round (Inexact would raise).
_EXACT = decimal.Context(prec=400, traps=[decimal.Inexact, decimal.InvalidOperation])

#: A quantile column: 'q' and a plain decimal percentage ('q05', 'q2.5', 'q99.999995').
_LABEL = re.compile(r"q(\d+(?:\.\d+)?)")


def _decimal(value: float) -> decimal.Decimal:
    """The shortest decimal that reads back as the float ``value`` (its ``repr``), exactly."""
    return decimal.Decimal(repr(float(value)))


def _plain(d: decimal.Decimal) -> str:
    """A decimal as plain digits, never scientific notation, no trailing zeros: 5.000 -> '5'."""
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent(prob: float) -> str:
    """A probability as an exact percentage for text: 0.9 -> '90%', 0.9999999 -> '99.99999%'."""
    return _plain(_EXACT.multiply(_decimal(prob), 100)) + "%"


def interval_labels(prob: float) -> tuple[str, str]:
    """Column names of the ends of the equal-tailed ``prob`` interval.

    Each is ``q`` and the percentage of its quantile, ``50 (1 - prob)`` and ``100 - 50 (1 -
    prob)``, computed exactly from the shortest decimal of ``prob``: plain digits (never
    scientific notation), never rounded, so the two labels differ for every prob in (0, 1) and
    :func:`interval_prob` reads ``prob`` back. A whole percentage below 10 keeps a leading zero
    (``q05``), as files have always had.

    Parameters
    ----------
    prob : float
        Probability of the interval, in (0, 1).

    Returns
    -------
    tuple of str
        The lower and the upper label.

    Examples
    --------
    >>> interval_labels(0.9)
    ('q05', 'q95')
    >>> interval_labels(0.95)
    ('q2.5', 'q97.5')
    >>> interval_labels(0.9999999)
    ('q0.000005', 'q99.999995')
    """
    tail = _EXACT.multiply(_EXACT.subtract(1, _decimal(prob)), 50)
    return _label_text(tail), _label_text(_EXACT.subtract(100, tail))


def _label_text(pct: decimal.Decimal) -> str:
    text = _plain(pct)
    return "q" + (text if "." in text else text.zfill(2))


def label_quantile(name: str) -> float | None:
    """The quantile a column name stands for (``'q2.5'`` -> 0.025), None if it names none."""
    match = _LABEL.fullmatch(name)
    return None if match is None else float(_EXACT.divide(decimal.Decimal(match[1]), 100))


def interval_prob(lower: str, upper: str) -> float:
    """The probability of the interval between two quantile columns, the inverse of
    :func:`interval_labels`: ``interval_prob('q05', 'q95')`` is 0.9."""
    ends = [_LABEL.fullmatch(name) for name in (lower, upper)]
    if ends[0] is None or ends[1] is None:
        raise InputError(
            f"expected two quantile column names such as 'q05' and 'q95', got {lower!r} and "
            f"{upper!r}; pass the interval's columns of a results table"
        )
    lo, hi = (decimal.Decimal(m[1]) for m in ends)
    return float(_EXACT.divide(_EXACT.subtract(hi, lo), 100))


@singledispatch
def stats_columns(stats: Any, n_background: int = 0) -> dict[str, np.ndarray]:
    """The statistics of a fit as named per-frame columns (what rebuilds the fit)."""
    raise NotImplementedError(f"no columns for {type(stats).__name__}")


@stats_columns.register
def _(stats: FrameStats, n_background: int = 0) -> dict[str, np.ndarray]:
    return {
        "xhat": np.asarray(stats.xhat, np.float64),
        "rss": np.asarray(stats.rss, np.float64),
        "dd": np.asarray(stats.dd, np.float64),
        "n_pixels": np.asarray(stats.n, np.int64) + int(n_background),
    }


_GAIN_VECTORS = ("z", "m0", "m1")


@stats_columns.register
def _(stats: GainStats, n_background: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for name in _GAIN_VECTORS:
        v = np.asarray(getattr(stats, name), np.float64)
        out[f"{name}_a"], out[f"{name}_b"] = v[:, 0], v[:, 1]
    out["rss"] = np.asarray(stats.rss, np.float64)
    out["n_pixels"] = np.asarray(stats.n, np.int64) + int(n_background)
    return out


@stats_columns.register
def _(stats: SimplexStats, n_background: int = 0) -> dict[str, np.ndarray]:
    k = stats.n_refs
    w, chol = np.asarray(stats.w, np.float64), np.asarray(stats.chol, np.float64)
    out = {f"w_{i}": w[:, i] for i in range(k)}
    out.update({f"m_{i}_{j}": chol[:, i, j] for i in range(k) for j in range(i, k)})
    out["rss"] = np.asarray(stats.rss, np.float64)
    out["n_pixels"] = np.asarray(stats.n, np.int64) + int(n_background)
    return out


def _simplex_stats_from_columns(cols: Mapping[str, Any], k: int,
                                n_background: int) -> SimplexStats:  # fmt: skip
    need = [f"w_{i}" for i in range(k)] + [f"m_{i}_{j}" for i in range(k) for j in range(i, k)]
    missing = [c for c in [*need, "rss", "n_pixels"] if c not in cols]
    if missing:
        raise InputError(f"the statistics columns {missing} are missing")
    w = np.stack([np.asarray(cols[f"w_{i}"], np.float64) for i in range(k)], axis=1)
    chol = np.zeros((len(w), k, k))
    for i in range(k):
        for j in range(i, k):
            chol[:, i, j] = np.asarray(cols[f"m_{i}_{j}"], np.float64)
    n = np.asarray(cols["n_pixels"]).astype(np.int64) - int(n_background)
    return SimplexStats(w=w, chol=chol, rss=np.asarray(cols["rss"], np.float64), n=n)


#: Per-reference variables of a K >= 3 table (columns ``{var}_{reference}``).
REF_VARS = ("x_map", "mean", "sd", "mc_se")


def stats_from_columns(
    cols: Mapping[str, Any], *, gain: bool, n_background: int, n_refs: int = 2
) -> FrameStats | GainStats | SimplexStats:
    """The inverse of :func:`stats_columns`."""
    if n_refs > 2:
        return _simplex_stats_from_columns(cols, n_refs, n_background)
    need = (
        [f"{v}_{k}" for v in _GAIN_VECTORS for k in "ab"] if gain else ["xhat", "dd"]
    ) + ["rss", "n_pixels"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise InputError(f"the statistics columns {missing} are missing")

    def col(name: str, dtype: Any = np.float64) -> np.ndarray:
        return np.asarray(cols[name]).astype(dtype)

    n = col("n_pixels", np.int64) - int(n_background)
    if gain:
        vec = {v: np.stack([col(f"{v}_a"), col(f"{v}_b")], axis=1) for v in _GAIN_VECTORS}
        return GainStats(**vec, rss=col("rss"), n=n)
    return FrameStats(xhat=col("xhat"), rss=col("rss"), dd=col("dd"), n=n)


def map_coords(map_shape: tuple[int, ...] | None, n_frames: int) -> dict[str, np.ndarray]:
    """Per-frame map coordinates of a spectrum image (``y``, ``x`` for a 2-D map)."""
    if map_shape is None:
        return {}
    names = MAP_DIMS if len(map_shape) == 2 else tuple(f"map_{k}" for k in range(len(map_shape)))
    idx = np.unravel_index(np.arange(n_frames), map_shape)
    return {f"{n}_index": np.asarray(i, np.int64) for n, i in zip(names, idx, strict=True)}


def frame_table(
    *,
    frame: np.ndarray,
    x_map: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    prob: float,
    stats: FrameStats | GainStats | SimplexStats,
    sigma: float,
    bounds: tuple[float, float] = (0.0, 1.0),
    n_background: int = 0,
    gain: np.ndarray | None = None,
    gain_sd: np.ndarray | None = None,
    background: np.ndarray | None = None,
    map_shape: tuple[int, ...] | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    names: tuple[str, ...] | None = None,
    mc_se: np.ndarray | None = None,
    at_bound: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per frame, the same columns for every inference path.

    Columns, in order: map coordinates (spectrum images), ``x_map``, ``mean``, ``sd``, the
    equal-tailed ``prob`` interval (``q05``, ``q95`` for 0.9: :func:`interval_labels`), ``gain``
    and ``gain_sd`` (gain model), ``background_0..`` (background coefficients' posterior
    means), ``r2``, ``at_bound``, ``misfit_p`` and its Benjamini-Hochberg q-value ``misfit_q``
    (a frame is badly fit when ``misfit_q < 0.05``), the statistics (:func:`stats_columns`),
    then ``extra`` (e.g. NUTS' ``rhat``, ``ess_bulk``).

    With K >= 3 references (``names`` given, per-frame values of shape (N, K)) each per-weight
    variable is one column per reference, ``x_map_<name>``, ``mean_<name>``, ..., with
    ``mc_se_<name>`` after the interval; ``at_bound`` (the MAP has a weight at 0) is given.
    """
    import pandas as pd

    lo_name, hi_name = interval_labels(prob)
    cols: dict[str, np.ndarray] = dict(map_coords(map_shape, len(x_map)))
    per = {"x_map": x_map, "mean": mean, "sd": sd, lo_name: lo, hi_name: hi}
    if mc_se is not None:
        per["mc_se"] = mc_se
    for var, values in per.items():
        if names is None:
            cols[var] = np.asarray(values)
        else:
            cols.update({f"{var}_{r}": np.asarray(values)[:, i] for i, r in enumerate(names)})
    if gain is not None:
        cols["gain"] = np.asarray(gain)
        cols["gain_sd"] = np.asarray(gain_sd)
    if background is not None:
        for k in range(np.shape(background)[1]):
            cols[f"background_{k}"] = np.asarray(background)[:, k]
    cols["r2"] = np.asarray(stats.r2)
    if at_bound is None:
        at_bound = (np.asarray(x_map) <= bounds[0]) | (np.asarray(x_map) >= bounds[1])
    cols["at_bound"] = np.asarray(at_bound, bool)
    cols["misfit_p"] = misfit_pvalue(stats, sigma)
    cols.update(stats_columns(stats, n_background))
    cols.update(extra or {})
    df = pd.DataFrame(cols, index=pd.Index(np.asarray(frame), name="frame"))
    # After `extra`, which may replace misfit_p (a noise population's mixture of tails).
    df.insert(df.columns.get_loc("misfit_p") + 1, "misfit_q", misfit_qvalues(df["misfit_p"]))
    return df


def model_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The model recorded in a results file's or an InferenceData's attributes, whatever the
    format stored them as (JSON, netCDF text); files from before the model seam are the plain
    model."""
    import json

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    gain = parse(attrs.get("gain", False))
    shape = parse(attrs.get("map_shape"))
    return {
        "gain": gain in (True, 1, "True", "true"),
        "background": str(attrs.get("background", "none")),
        "n_background": int(parse(attrs.get("n_background", 0))),
        "map_shape": None if shape is None else tuple(int(v) for v in np.ravel(shape)),
    }


#: Per-frame columns of a temporal fit (``temporal='random_walk'``), after the statistics.
TEMPORAL_COLUMNS = ("time", "sequence", "mean_alone", "sd_alone", "cavity_mean", "cavity_sd")


def _flag(value: Any) -> bool:
    """A boolean attribute as any format stored it: bool, 0/1, or text."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true")
    return bool(value)


def temporal_from_columns(cols: Mapping[str, Any], attrs: Mapping[str, Any]) -> Any:
    """The :class:`~bayesmix._temporal.SequenceFit` of a temporal results table: its columns
    (:data:`TEMPORAL_COLUMNS`) and its ``temporal_*`` attributes; None for a table without a
    temporal model."""
    from bayesmix._stats import SmoothedStats
    from bayesmix._temporal import SequenceFit

    spec = str(attrs.get("temporal", "independent") or "independent")
    if spec.split(":")[0].strip() == "independent":
        return None
    missing = [c for c in TEMPORAL_COLUMNS if c not in cols]
    missing += [k for k in ("temporal_q", "temporal_log_evidence") if attrs.get(k) is None]
    if missing:
        raise InputError(f"the temporal fit's columns/attributes {missing} are missing")

    def col(name: str) -> np.ndarray:
        return np.asarray(cols[name], np.float64)

    sequence = np.asarray(cols["sequence"])
    if sequence.dtype.kind in "OSU":
        sequence = sequence.astype(str)
    elif sequence.dtype.kind == "f" and np.all(sequence == np.round(sequence)):
        sequence = sequence.astype(np.int64)  # integers a format widened to float
    limit = attrs.get("temporal_q_limit", "")
    limit = "" if limit is None or str(limit) in ("nan", "None") else str(limit)
    return SequenceFit(
        q=float(attrs["temporal_q"]), q_sd=float(attrs.get("temporal_q_sd", 0.0)),
        q_fixed=_flag(attrs.get("temporal_q_fixed", False)), q_limit=limit,
        times=col("time"), sequence=sequence, mean_alone=col("mean_alone"),
        sd_alone=col("sd_alone"), log_evidence=float(attrs["temporal_log_evidence"]),
        ep_iter=int(attrs.get("temporal_ep_iter", 0)),
        map_iter=int(attrs.get("temporal_map_iter", 0)),
        cavity=SmoothedStats(col("cavity_mean"), col("cavity_sd")),
    )  # fmt: skip
