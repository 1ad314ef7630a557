"""Writers: per-frame results as CSV, Parquet or netCDF; InferenceData as netCDF.

Every file is written atomically (a temporary file beside the target, renamed when complete) and
never replaces an existing file unless ``overwrite=True``. Each results file records how it was
made (bayesmix version, method, priors, sigma, seed where there is one): CSV as ``# key: value``
lines before the header, Parquet in its schema metadata, netCDF as attributes. :func:`read_results`
reads any of them back, and :func:`map_result_from_table` rebuilds the :class:`MapResult`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesmix._io import atomic_write
from bayesmix._results import clean_attrs

__all__ = ["map_result_from_table", "read_results", "results_table", "write_idata", "write_results"]

RESULT_FORMATS = (".csv", ".parquet", ".nc")
_META_KEY = b"bayesmix"


def results_table(
    result: Any, *, prob: float = 0.9, source: Any = None, columns: dict[str, Any] | None = None
) -> pd.DataFrame:
    """One row per frame of a :class:`MapResult` or of the InferenceData of a NUTS run.

    Columns: ``source`` (file/page of the frame, when given), ``x_map``, ``mean``, ``sd``, the
    equal-tailed ``prob`` interval (``q05``, ``q95`` for 0.9), ``r2``, ``at_bound``, the
    statistics ``xhat``, ``rss``, ``dd``, ``n_pixels``, and for NUTS ``rhat`` and ``ess_bulk``.
    ``columns`` adds per-frame columns of your own first (e.g. a simulation's true x).
    ``df.attrs`` holds the provenance.
    """
    from bayesmix._arviz import is_inference_data, nuts_table
    from bayesmix._results import MapResult, _check_prob

    prob = _check_prob(prob)
    if isinstance(result, MapResult):
        df = result.to_dataframe(prob)
    elif is_inference_data(result):
        df = nuts_table(result, prob)
        _nuts_temporal(result, df)
    else:
        raise ValueError(
            "expected a MapResult (fit_map) or the InferenceData of bayesmix.sample, "
            f"got {type(result).__name__}"
        )
    if source is not None:
        source = np.asarray(source).astype(str)
        if source.shape != (len(df),):
            raise ValueError(
                f"source must hold one label per frame ({len(df)}), got shape {source.shape}"
            )
        df.insert(0, "source", source)
    for i, (name, values) in enumerate((columns or {}).items()):
        values = np.asarray(values)
        if values.shape != (len(df),) or name in df.columns:
            raise ValueError(
                f"extra column {name!r} must be new and hold one value per frame ({len(df)}), "
                f"got shape {values.shape}"
            )
        df.insert(i, name, values)
    df.attrs["prob"] = prob
    return df


def _nuts_temporal(idata: Any, df: pd.DataFrame) -> None:
    """A NUTS run of a temporal model: each frame's ``time`` and ``sequence`` (its constant
    data) as columns, q's posterior mean and sd as ``temporal_q``, ``temporal_q_sd``."""
    const = getattr(idata, "constant_data", None)
    for name in ("time", "sequence"):
        if const is not None and name in const and name not in df.columns:
            values = np.asarray(const[name])
            if values.shape == (len(df),):
                df[name] = values
    post = getattr(idata, "posterior", None)
    if post is not None and "q" in post:
        q = np.asarray(post["q"], np.float64)
        df.attrs.update({"temporal_q": float(q.mean()), "temporal_q_sd": float(q.std())})


def write_results(
    result: Any,
    path: str | os.PathLike,
    *,
    prob: float = 0.9,
    source: Any = None,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
    columns: dict[str, Any] | None = None,
) -> Path:
    """Write per-frame results, format chosen by extension: ``.csv``, ``.parquet`` or ``.nc``.

    Parameters
    ----------
    result : MapResult or arviz.InferenceData
        From :func:`bayesmix.fit_map` or :func:`bayesmix.sample`.
    path : str or path
        Target file; its folder must exist.
    prob : float
        Mass of the equal-tailed interval columns.
    source : array of str, shape (N,), optional
        Where each frame came from (``read_frames(...).source``).
    overwrite : bool
        Replace an existing file (otherwise ``FileExistsError``).
    meta : dict, optional
        Extra provenance to record (e.g. the input file names).
    columns : dict of str to array of shape (N,), optional
        Extra per-frame columns, placed first.

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> import bayesmix, tempfile, pathlib
    >>> sim = bayesmix.simulate(50, shape=(16, 16), seed=0)
    >>> res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    >>> out = bayesmix.write_results(res, pathlib.Path(tempfile.mkdtemp()) / "res.csv")
    >>> back = bayesmix.read_results(out)
    >>> bool((back["x_map"] == res.x).all()), back.attrs["method"]
    (True, 'map')
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RESULT_FORMATS:
        raise ValueError(
            f"cannot tell the results format of {path} from its extension {suffix or '(none)'!r};"
            f" use one of {', '.join(RESULT_FORMATS)}"
        )
    df = results_table(result, prob=prob, source=source, columns=columns)
    # Lists (the reference names, a map's shape) as JSON text, which every format reads back.
    attrs = clean_attrs({k: json.dumps(v) if isinstance(v, (list, tuple)) else v
                         for k, v in {**df.attrs, **(meta or {})}.items()})  # fmt: skip

    if suffix == ".csv":

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                for key, value in attrs.items():
                    fh.write(f"# {key}: {json.dumps(value)}\n")
                df.to_csv(fh, float_format="%.17g")

    elif suffix == ".parquet":

        def write(tmp: str) -> None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=True)
            extra = {_META_KEY: json.dumps(attrs).encode()}
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
            pq.write_table(table, tmp)

    else:

        def write(tmp: str) -> None:
            import xarray as xr

            ds = xr.Dataset.from_dataframe(df)
            ds.attrs.update(attrs)
            ds.to_netcdf(tmp, engine="h5netcdf")

    return atomic_write(path, write, overwrite=overwrite)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results file written by :func:`write_results` (CSV, Parquet or netCDF).

    Returns
    -------
    pandas.DataFrame
        One row per frame (index ``frame``), the provenance in ``df.attrs``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            attrs: dict[str, Any] = {}
            n_meta = 0
            with open(path) as fh:
                for line in fh:
                    if not line.startswith("# "):
                        break
                    key, _, value = line[2:].rstrip("\n").partition(": ")
                    attrs[key] = _parse_value(value)
                    n_meta += 1
            df = pd.read_csv(path, skiprows=n_meta, index_col=0)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            df = table.to_pandas()
            attrs = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        elif suffix == ".nc":
            import xarray as xr

            with xr.open_dataset(path, engine="h5netcdf") as ds:
                df = ds.load().to_dataframe()
                attrs = dict(ds.attrs)
        else:
            raise ValueError(f"use one of {', '.join(RESULT_FORMATS)}")
    except (OSError, ValueError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read {path} as a bayesmix results file: {msg}") from None
    df.attrs = attrs
    return df


def _attr_list(value: Any) -> list[Any] | None:
    """A list attribute as any format stored it: a list, JSON text, or Python's repr."""
    import ast

    if value is None or isinstance(value, (list, tuple, np.ndarray)):
        return None if value is None else list(np.ravel(value))
    text = str(value)
    for parse in (json.loads, ast.literal_eval):
        try:
            out = parse(text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(out, (list, tuple)):
            return list(out)
    return None


def table_ref_names(df: pd.DataFrame) -> tuple[str, ...] | None:
    """The reference names of a K >= 3 results table (None for two references): from its
    ``references`` attribute, else from its ``mean_<reference>`` columns."""
    names = _attr_list(df.attrs.get("references"))
    if names is None:
        if "mean" in df.columns:
            return None
        names = [c[len("mean_") :] for c in df.columns if c.startswith("mean_")]
    names = [str(n) for n in names]
    return tuple(names) if len(names) > 2 else None


def map_result_from_table(df: pd.DataFrame) -> Any:
    """Rebuild the :class:`MapResult` of a results table written from :func:`fit_map`.

    The statistics columns and the recorded sigma and priors determine every other number.
    With K >= 3 references (columns ``mean_<reference>``, ...) the sampler's summaries are
    rerun with the recorded ``draws`` and ``seed``: the same numbers as the fit's.
    """
    from bayesmix._model import make_model
    from bayesmix._precision import x64
    from bayesmix._results import MapResult
    from bayesmix._schema import model_attrs, stats_from_columns, temporal_from_columns
    from bayesmix._simplex import fit_simplex, fit_simplex_gain
    from bayesmix.noise import NOISE_PARAMS, parse_noise
    from bayesmix.priors import parse_prior, parse_sigma_prior
    from bayesmix.temporal import check_temporal

    attrs = df.attrs
    if attrs.get("method") != "map":
        raise ValueError(
            f"this results table comes from method {attrs.get('method')!r}, not the fast MAP "
            "path; for a NUTS run, pass its InferenceData (.nc written with --idata) instead"
        )
    names = table_ref_names(df)
    k = 2 if names is None else len(names)
    per_weight = ("x_map", "mean", "sd")
    need = [*(per_weight if names is None else
              [f"{v}_{r}" for v in per_weight for r in names]), "r2", "at_bound"]  # fmt: skip
    missing = [c for c in need if c not in df.columns]
    if missing or "sigma" not in attrs or "prior" not in attrs:
        raise ValueError(
            f"results table lacks {missing or 'its sigma/prior metadata'}; write it with "
            "bayesmix.write_results (or bayesmix fit --out)"
        )
    info = model_attrs(attrs)
    try:
        stats = stats_from_columns(
            {c: df[c].to_numpy() for c in df.columns},
            gain=info["gain"], n_background=info["n_background"], n_refs=k,
        )  # fmt: skip
    except ValueError as exc:
        raise ValueError(
            f"results table: {exc}; write it with bayesmix.write_results (or bayesmix fit --out)"
        ) from None

    def weight(var: str) -> np.ndarray:
        if names is None:
            return df[var].to_numpy(np.float64)
        return np.stack([df[f"{var}_{r}"].to_numpy(np.float64) for r in names], axis=1)

    sigma_prior = parse_sigma_prior(str(attrs.get("sigma_prior", "jeffreys")))
    bg_cols = [c for c in df.columns if c.startswith("background_")]
    background = info["background"]
    model = make_model(
        prior=parse_prior(str(attrs["prior"])), sigma_prior=sigma_prior, gain=info["gain"],
        n_refs=k, ref_names=names,
        # A user's own basis images are not in the table: its size is what the results need.
        background=np.zeros((len(bg_cols), 1)) if background == "custom" else background,
    )  # fmt: skip
    noise = parse_noise(str(attrs.get("noise", "gaussian")))
    model = dataclasses.replace(model, noise=noise)
    # A temporal fit: its model from the spec, the walk's numbers from the columns and attrs
    # (the frames' marginals are their cavities truncated to the bounds: interval() needs them).
    temporal = check_temporal(str(attrs.get("temporal", "independent") or "independent"))
    try:
        sequence_fit = temporal_from_columns({c: df[c].to_numpy() for c in df.columns}, attrs)
    except ValueError as exc:
        raise ValueError(
            f"results table: {exc}; write it with bayesmix.write_results (or bayesmix fit --out)"
        ) from None
    if sequence_fit is not None:
        model = dataclasses.replace(model, temporal=temporal)
    noise_params = {k: int(attrs[k]) if k == "noise_passes" else float(attrs[k])
                    for k in NOISE_PARAMS if attrs.get(k) is not None}  # fmt: skip
    noise_cols = {c: df[c].to_numpy(np.float64) for c in ("sigma_frame", "sigma_frame_sd",
                                                          "loglik") if c in df.columns}  # fmt: skip
    sigma = float(attrs["sigma"])
    simplex: dict[str, Any] = {}
    if names is not None:
        draws, seed = int(attrs.get("draws", 400)), int(attrs.get("seed", 0))
        refit = fit_simplex_gain if info["gain"] else fit_simplex
        with x64():
            fit = refit(np.asarray(stats.w), np.asarray(stats.chol), model.prior.concentrations,
                        sigma**2, draws=draws, seed=seed)  # fmt: skip
        simplex = {"simplex": fit, "seed": seed, "n_draws": draws}
    return MapResult(
        x=weight("x_map"), mean=weight("mean"), sd=weight("sd"), sigma=sigma,
        r2=df["r2"].to_numpy(np.float64), at_bound=df["at_bound"].to_numpy(bool), stats=stats,
        prior=model.prior, sigma_prior=sigma_prior,
        sigma_fixed=bool(attrs.get("sigma_fixed", False)), n_iter=int(attrs.get("n_iter", 0)),
        converged=bool(attrs.get("converged", True)), frame=df.index.to_numpy(), model=model,
        gain=df["gain"].to_numpy(np.float64) if "gain" in df else None,
        gain_sd=df["gain_sd"].to_numpy(np.float64) if "gain_sd" in df else None,
        background=df[bg_cols].to_numpy(np.float64) if bg_cols else None,
        map_shape=info["map_shape"], noise_params=noise_params, **noise_cols, **simplex,
        temporal=sequence_fit, device=str(attrs.get("device", "") or ""),
    )  # fmt: skip


def write_idata(idata: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the InferenceData of :func:`bayesmix.sample` to netCDF (``.nc``), atomically.

    Examples
    --------
    >>> write_idata(None, "posterior.csv")
    Traceback (most recent call last):
    ...
    ValueError: an InferenceData is written as netCDF: give a path ending in .nc, got ...
    """
    from bayesmix._arviz import is_inference_data
    from bayesmix._arviz import write_idata as _write

    path = Path(path)
    if path.suffix.lower() != ".nc":
        raise ValueError(
            f"an InferenceData is written as netCDF: give a path ending in .nc, got '{path}'"
        )
    if not is_inference_data(idata):
        raise ValueError(
            f"expected the InferenceData of bayesmix.sample, got {type(idata).__name__}"
        )
    return atomic_write(path, lambda tmp: _write(idata, tmp), overwrite=overwrite)
