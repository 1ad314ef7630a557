"""Writers: per-frame results as CSV, Parquet or netCDF; InferenceData as netCDF.

Every file is written atomically (a temporary file beside the target, renamed when complete) and
never replaces an existing file unless ``overwrite=True``. Each results file records how it was
made (bayesmix version, method, priors, sigma, seed where there is one): Parquet in its schema
metadata, netCDF as attributes, and CSV in a metadata file beside it, so that the CSV itself is
plain (header row first, one row per frame: ``pandas.read_csv``, R's ``read.csv`` and spreadsheets
open it with their defaults). That file follows the W3C "CSV on the Web" convention: ``results.csv``
is described by ``results.csv-metadata.json``, a CSVW table description (each column's name,
datatype and meaning) whose ``"bayesmix"`` object holds the provenance. :func:`read_results`
reads any of them back (CSV files of earlier versions, with ``# key: value`` lines before the
header, too), and :func:`map_result_from_table` rebuilds the :class:`MapResult`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesmix._errors import InputError
from bayesmix._io import atomic_write, atomic_write_all
from bayesmix._results import clean_attrs
from bayesmix._schema import interval_labels, label_quantile, percent

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
        raise InputError(
            "expected a MapResult (fit_map) or the InferenceData of bayesmix.sample, "
            f"got {type(result).__name__}"
        )
    if source is not None:
        source = np.asarray(source).astype(str)
        if source.shape != (len(df),):
            raise InputError(
                f"source must hold one label per frame ({len(df)}), got shape {source.shape}"
            )
        df.insert(0, "source", source)
    for i, (name, values) in enumerate((columns or {}).items()):
        values = np.asarray(values)
        if values.shape != (len(df),) or name in df.columns:
            raise InputError(
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


# CSV with a CSV-on-the-Web (CSVW) metadata file beside it.

#: ``results.csv`` is described by ``results.csv-metadata.json`` (CSVW's ``{url}-metadata.json``).
CSV_METADATA_SUFFIX = "-metadata.json"
_CSVW_CONTEXT = "http://www.w3.org/ns/csvw"
# numpy dtype -> CSVW (XML Schema) datatype, exact both ways so that dtypes round-trip.
_CSVW_TYPES = {
    "float64": "double", "float32": "float", "int64": "integer", "int32": "int",
    "int16": "short", "int8": "byte", "uint64": "unsignedLong", "uint32": "unsignedInt",
    "uint16": "unsignedShort", "uint8": "unsignedByte", "bool": "boolean",
}  # fmt: skip
_CSVW_DTYPES = {**{v: k for k, v in _CSVW_TYPES.items()}, "long": "int64", "string": "str"}
# Text that is a missing number (pandas' defaults); in text columns every cell is kept as text.
_NA_TEXT = ["", "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "#N/A",
            "<NA>", "None"]  # fmt: skip
# JSON has no NaN or infinity: such provenance values are written as these strings.
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

# What each column means; {w} is "the weight of reference A", or of the column's reference.
_DESCRIPTIONS = {
    "frame": "frame index: the frame's position in the stack (or its label)",
    "source": "file (and page) the frame was read from",
    "x_map": "posterior mode (MAP) of {w} (NUTS: the MAP the sampler started from)",
    "mean": "posterior mean of {w}",
    "sd": "posterior standard deviation of {w}",
    "mc_se": "Monte Carlo standard error of the posterior mean of {w}",
    "r2": "R^2 of the frame's unconstrained least-squares fit",
    "at_bound": "true when the posterior mode lies on a bound of the prior (K >= 3 "
    "references: a weight at 0)",
    "misfit_p": "chi-square p-value of the frame's residual: small when the references do not "
    "explain the frame",
    "misfit_q": "Benjamini-Hochberg q-value of misfit_p: a frame is flagged badly fit when "
    "misfit_q < 0.05",
    "xhat": "unconstrained least-squares weight of reference A (sufficient statistic)",
    "rss": "residual sum of squares of the frame's least-squares fit (sufficient statistic)",
    "dd": "||A - B||^2 over the frame's valid pixels (sufficient statistic)",
    "n_pixels": "number of valid pixels in the frame (sufficient statistic)",
    "loglik": "log marginal likelihood of the frame (its elpd term; see bayesmix.compare)",
    "rhat": "R-hat of {w} across the chains (NUTS)",
    "ess_bulk": "bulk effective sample size of {w} (NUTS)",
    "ess_tail": "tail effective sample size of {w} (NUTS)",
    "gain": "posterior mean of the frame's gain (the amount multiplying the mixture)",
    "gain_sd": "posterior standard deviation of the frame's gain",
    "sigma_frame": "posterior mean of the frame's noise scale (noise model per_frame)",
    "sigma_frame_sd": "posterior standard deviation of the frame's noise scale",
    "time": "the frame's time (temporal model)",
    "sequence": "the sequence the frame belongs to (temporal model)",
    "mean_alone": "posterior mean of {w} from the frame alone, without the random walk",
    "sd_alone": "posterior standard deviation of {w} from the frame alone",
    "cavity_mean": "mean of the frame's cavity: what its neighbours along the walk say of {w}",
    "cavity_sd": "standard deviation of the frame's cavity",
    "y_index": "row of the pixel in the map (spectrum image)",
    "x_index": "column of the pixel in the map (spectrum image)",
    "x_true": "true weight of reference A (simulation)",
}


def csv_metadata_path(path: str | os.PathLike) -> Path:
    """The CSVW metadata file of a CSV: ``results.csv`` -> ``results.csv-metadata.json``."""
    path = Path(path)
    return path.with_name(path.name + CSV_METADATA_SUFFIX)


def _column_description(name: str, prob: float | None, refs: Sequence[str]) -> str | None:
    """What a results column means, when known (None otherwise)."""
    for ref in refs:  # K >= 3: '<variable>_<reference>'
        if name.endswith(f"_{ref}") and len(name) > len(ref) + 1:
            text = _variable_description(name[: -len(ref) - 1], prob)
            if text is not None and "{w}" in text:
                return text.format(w=f"the weight of reference {ref}")
    text = _variable_description(name, prob)
    return None if text is None else text.format(w="the weight of reference A")


def _variable_description(name: str, prob: float | None) -> str | None:
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    if (q := label_quantile(name)) is not None:
        text = f"{percent(q)} posterior quantile of {{w}}"
        if prob is not None and name in interval_labels(prob):
            end = "lower" if q < 0.5 else "upper"
            text += f": the {end} end of the equal-tailed {percent(prob)} interval"
        return text
    if match := re.fullmatch(r"background_(\d+)", name):
        return f"posterior mean of background coefficient {match.group(1)}"
    if re.fullmatch(r"(z|m0|m1)_[ab]|w_\d+|m_\d+_\d+", name):
        return "sufficient statistic of the frame (rebuilds the fit with sigma)"
    return None


def _csvw_name(title: str) -> str:
    """A CSVW column name for a header: letters, digits, '_' and single inner '.' (URI template
    variable syntax, not starting with '_'), anything else percent-encoded."""
    out = [ch if ch.isascii() and (ch.isalnum() or ch == "_") else
           "".join(f"%{b:02X}" for b in ch.encode()) for ch in title]  # fmt: skip
    for i, ch in enumerate(title):
        if ch == "." and 0 < i < len(title) - 1 and "." not in (title[i - 1], title[i + 1]):
            out[i] = "."
    if title.startswith("_"):
        out[0] = "%5F"
    return "".join(out) or "_"


def _csvw_datatype(values: pd.Series | pd.Index) -> str:
    """The CSVW datatype of a column (text for anything without an exact one)."""
    return _CSVW_TYPES.get(str(values.dtype), "string")


def _json_value(value: Any) -> Any:
    """A provenance value as JSON: numbers, text, booleans, lists and objects as such."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "NaN"
        return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return str(value)


def _from_json(value: Any) -> Any:
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def csv_table_metadata(
    df: pd.DataFrame,
    url: str,
    provenance: Mapping[str, Any],
    descriptions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The CSVW table description of ``df`` written as the CSV ``url``.

    Each column (the index first, the table's primary key) gets its ``name``, ``titles`` (the
    header), ``datatype`` and, where known, a ``dc:description``; ``provenance`` goes, as JSON
    values, in a ``"bayesmix"`` object.
    """
    prob = provenance.get("prob")
    prob = float(prob) if isinstance(prob, (int, float)) else None
    refs = table_ref_names(df) or ()
    known = {**(descriptions or {})}
    key = str(df.index.name or "frame")
    columns = []
    for title, values in [(key, df.index), *((str(c), df[c]) for c in df.columns)]:
        column: dict[str, Any] = {"name": _csvw_name(title), "titles": title,
                                  "datatype": _csvw_datatype(values)}  # fmt: skip
        text = known.get(title) or _column_description(title, prob, refs)
        if text:
            column["dc:description"] = text
        columns.append(column)
    return {
        "@context": _CSVW_CONTEXT,
        "url": url,
        "tableSchema": {"columns": columns, "primaryKey": columns[0]["name"]},
        "bayesmix": _json_value(dict(provenance)),
    }


def _csv_cells(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the cells CSVW's datatypes read: booleans as true/false, infinities as
    INF/-INF, missing numbers empty, and a float column of whole numbers as 3.0, not 3 (which
    pandas and R would read as integers)."""
    out = df.copy(deep=False)
    for name in df.columns:
        values = df[name].to_numpy()
        if values.dtype == np.bool_:
            out[name] = np.where(values, "true", "false")
        elif values.dtype.kind == "f":
            finite = values[np.isfinite(values)]
            whole = finite.size > 0 and bool(np.all(finite == np.trunc(finite)))
            if not (whole or np.isinf(values).any()):
                continue  # to_csv's float_format writes it
            text = np.char.mod("%.17g", values.astype(np.float64)).astype(object)
            if whole:
                plain = np.isfinite(values) & (np.char.find(text.astype(str), "e") < 0)
                text[plain] = text[plain] + ".0"
            text[np.isnan(values)] = ""
            text[np.isposinf(values)] = "INF"
            text[np.isneginf(values)] = "-INF"
            out[name] = text
    return out


def write_csv_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    provenance: Mapping[str, Any],
    *,
    overwrite: bool = False,
    descriptions: Mapping[str, str] | None = None,
) -> Path:
    """Write ``df`` as a plain CSV (index first as column ``frame``, floats with 17 significant
    digits) and its CSVW metadata file (:func:`csv_table_metadata`) beside it.

    Neither file is written when either exists (unless ``overwrite``), nor one without the other.
    """
    path = Path(path)
    key = str(df.index.name or "frame")
    if key in df.columns:
        raise InputError(f"a column is named {key!r}, as the table's index; rename it")
    meta = csv_table_metadata(df, path.name, provenance, descriptions)
    text = json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def write_meta(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    def write_csv(tmp: str) -> None:
        _csv_cells(df).to_csv(tmp, index_label=key, float_format="%.17g", lineterminator="\n",
                              encoding="utf-8")  # fmt: skip

    # The metadata first, the CSV last: readers start from the CSV, so once it is there its
    # metadata is too; a failure before leaves no CSV, and a failed rename no half pair.
    atomic_write_all([(csv_metadata_path(path), write_meta), (path, write_csv)],
                     overwrite=overwrite)  # fmt: skip
    return path


def _read_csv_table(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A CSV and its provenance: from its CSVW metadata file; from the ``# key: value`` lines
    before the header (files of earlier versions); or none (a plain CSV, read with defaults).

    A file that is empty, separated by semicolons or tabs (a spreadsheet's export), or whose
    numeric columns hold text (a decimal comma, a typo) is refused with an :class:`InputError`
    naming the file, the column and an example value.
    """
    lines = _head_lines(path)
    n_meta = next((i for i, line in enumerate(lines) if not line.startswith("# ")), len(lines))
    if n_meta == len(lines):
        what = "only comment lines" if lines else "nothing"
        raise InputError(
            f"{path} holds {what}: a results CSV has a header row, then one row per frame; "
            "write it again with bayesmix.write_results (or bayesmix fit --out)"
        )
    _check_separator(path, lines[n_meta], n_meta)
    if n_meta:
        df, attrs = _read_commented_csv(path)
    elif csv_metadata_path(path).is_file():
        return _read_csvw(path, csv_metadata_path(path))  # its declared types are checked there
    else:
        df, attrs = pd.read_csv(path, index_col=0), {}
    df.attrs = attrs  # the reference names of a K >= 3 table tell its numeric columns
    _check_numbers(path, df, n_meta)
    return df, attrs


def _read_csvw(path: Path, sidecar: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A CSV read with the column types its CSVW metadata file declares."""
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise InputError(
            f"cannot read {sidecar}, the metadata file of {path.name}, as JSON: {exc}; restore "
            f"it, or move it away to read {path.name} as a plain CSV (without provenance)"
        ) from None
    schema = meta.get("tableSchema") if isinstance(meta, dict) else None
    columns = schema.get("columns") if isinstance(schema, dict) else None
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        raise InputError(f"{sidecar} is not a CSVW table description (no tableSchema.columns)")
    titles = [_column_title(c) for c in columns]
    header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    if header != titles:
        raise InputError(
            f"{sidecar.name} describes the columns {titles}, but the header of {path} is "
            f"{header}: the two files do not belong together"
        )
    dtypes, na_values = {}, {}
    for title, column in zip(titles, columns, strict=True):
        dtype = _CSVW_DTYPES.get(_base_datatype(column.get("datatype")))
        if dtype is not None:
            dtypes[title] = dtype
        if dtype != "str":
            na_values[title] = _NA_TEXT
    names = {c.get("name"): t for c, t in zip(columns, titles, strict=True)}
    key = names.get(schema.get("primaryKey"))
    try:
        df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=na_values,
                         index_col=key)  # fmt: skip
    except ValueError as exc:  # pandas names neither the column nor the value: find them
        _check_declared(path, dtypes)
        raise InputError(
            f"cannot read {path} with the column types of {sidecar.name}: {_first_line(exc)}"
        ) from None
    provenance = meta.get("bayesmix")
    return df, _from_json(provenance) if isinstance(provenance, dict) else {}


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _head_lines(path: Path, extra: int = 5) -> list[str]:
    """The comment lines, the header and up to ``extra`` rows (a UTF-8 BOM is dropped)."""
    out: list[str] = []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for line in fh:
                out.append(line.rstrip("\r\n"))
                if not line.startswith("# "):
                    extra -= 1
                    if extra < 0:
                        break
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
            f"{exc.start}): a results CSV is UTF-8; save it again as 'CSV UTF-8'"
        ) from None
    return out


# A number with a decimal comma, as a spreadsheet in many European locales writes it: 0,5.
_DECIMAL_COMMA = re.compile(r"\s*[-+]?\d*,\d+(?:[eE][-+]?\d+)?\s*")
# Columns bayesmix writes that are not numbers.
_TEXT_COLUMNS = ("frame", "source", "at_bound", "sequence")


def _check_separator(path: Path, header: str, n_meta: int) -> None:
    """Refuse a CSV separated by semicolons or tabs: pandas would read each row as one column."""
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    sep = max(counts, key=counts.__getitem__)
    if sep == "," or counts[sep] <= counts[","]:
        return
    name = {";": "semicolons (';')", "\t": "tabs"}[sep]
    sample = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skiprows=n_meta,
                         nrows=20, encoding="utf-8-sig")  # fmt: skip
    for column in sample.columns:
        text = sample[column].str.strip()
        text = text[text != ""]
        if len(text) and text.map(_DECIMAL_COMMA.fullmatch).map(bool).all():
            raise InputError(
                f"{path} is separated by {name} and its numbers look like decimal commas "
                f"(column {column!r} holds {text.iloc[0]!r}), as a spreadsheet in a European "
                "locale saves a CSV; bayesmix reads commas between values and a decimal point. "
                f"Convert it: pandas.read_csv(path, sep={sep!r}, decimal=',').to_csv(path, "
                "index=False), or export it with ',' as separator and '.' as decimal point"
            )
    raise InputError(
        f"{path} is separated by {name}, not commas (its header is {header[:80]!r}); bayesmix "
        f"reads comma-separated values. Convert it: pandas.read_csv(path, sep={sep!r})"
        ".to_csv(path, index=False)"
    )


_BOOL_TEXT = ("true", "false", "True", "False", "TRUE", "FALSE")  # what pandas reads as bool


def _fits(text: str, kind: str) -> bool:
    """Whether a cell reads as ``kind``: 'number', 'integer' (whole numbers) or 'boolean'."""
    if kind == "integer":
        return re.fullmatch(r"\s*[-+]?\d+\s*", text) is not None
    if kind == "boolean":
        return text.strip() in _BOOL_TEXT
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bad_value(path: Path, column: str, text: pd.Series, line: int, kind: str,
               declared: str | None = None) -> None:  # fmt: skip
    """The error for a column of ``kind`` holding ``text`` (the cells that do not fit it)."""
    first, where = text.iloc[0], f"line {line + int(text.index[0])}"
    if kind != "boolean" and text.map(_DECIMAL_COMMA.fullmatch).map(bool).all():
        raise InputError(
            f"column {column!r} of {path} holds numbers with a decimal comma ({first!r} on "
            f"{where}), as a spreadsheet in a European locale writes them; bayesmix reads a "
            "decimal point. Convert the file: pandas.read_csv(path, decimal=',').to_csv(path, "
            "index=False)"
        )
    want = {"integer": "whole numbers", "boolean": "true or false"}.get(kind, "numbers")
    said = f" (declared {declared} in its metadata file)" if declared else ""
    fix = "leave it empty for a missing number" if kind == "number" else "it cannot be missing"
    raise InputError(
        f"column {column!r} of {path} should hold {want}{said} but holds {first!r} on {where}; "
        f"correct that cell ({fix})"
    )


def _check_declared(path: Path, dtypes: dict[str, str]) -> None:
    """Name the first cell that does not fit its column's declared type, if any."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column, dtype in dtypes.items():
        if column not in raw.columns or dtype == "str":
            continue
        kind = {"bool": "boolean"}.get(dtype, "integer" if "int" in dtype else "number")
        text = raw[column]
        if kind == "number":
            text = text[~text.isin(_NA_TEXT)]  # a missing float is fine, a missing int is not
        bad = text[~text.map(lambda v, k=kind: _fits(v, k))]
        if len(bad):
            _bad_value(path, column, bad, 2, kind, _CSVW_TYPES.get(dtype))


def _check_numbers(path: Path, df: pd.DataFrame, n_meta: int) -> None:
    """A CSV read with pandas' defaults: text where numbers belong is refused. A column of
    decimal commas is, whatever its name; other text only in the columns bayesmix writes as
    numbers (a column of your own may hold text)."""
    refs = table_ref_names(df) or ()
    for column in df.columns:
        if df[column].dtype.kind in "biufc":
            continue
        text = df[column].dropna().astype(str).reset_index(drop=True)
        text = text[text.str.strip() != ""]
        if not len(text):
            continue
        comma = text.map(_DECIMAL_COMMA.fullmatch).map(bool).all()
        if comma or _numeric_column(str(column), refs):
            bad = text[~text.map(lambda v: _fits(v, "number"))]
            if len(bad):
                _bad_value(path, str(column), bad, n_meta + 2, "number")


def _numeric_column(name: str, refs: Sequence[str]) -> bool:
    """Whether bayesmix writes the column ``name`` as numbers (``mean``, ``q05``, ``sd_fe3``)."""
    for ref in refs:  # K >= 3: '<variable>_<reference>'
        if name.endswith(f"_{ref}") and len(name) > len(ref) + 1:
            name = name[: -len(ref) - 1]
            break
    return name not in _TEXT_COLUMNS and _variable_description(name, None) is not None


def _column_title(column: dict[str, Any]) -> str:
    titles = column.get("titles", column.get("name"))
    if isinstance(titles, list) and titles:
        titles = titles[0]
    if isinstance(titles, dict) and titles:  # a natural-language map: {"en": ...}
        titles = next(iter(titles.values()))
        titles = titles[0] if isinstance(titles, list) and titles else titles
    return str(titles)


def _base_datatype(datatype: Any) -> str | None:
    if isinstance(datatype, dict):
        datatype = datatype.get("base")
    return datatype if isinstance(datatype, str) else None


def _read_commented_csv(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A CSV of bayesmix before the metadata file: ``# key: value`` lines, then the table."""
    attrs: dict[str, Any] = {}
    n_meta = 0
    with open(path, encoding="utf-8-sig") as fh:
        for line in fh:
            if not line.startswith("# "):
                break
            key, _, value = line[2:].rstrip("\n").partition(": ")
            attrs[key] = _parse_value(value)
            n_meta += 1
    return pd.read_csv(path, skiprows=n_meta, index_col=0), attrs


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

    A CSV is plain (header row, then one row per frame, the index column ``frame`` first;
    ``pandas.read_csv(path)`` and R's ``read.csv(path)`` read it with their defaults); its
    provenance and column descriptions go beside it, in the CSVW metadata file
    ``<path>-metadata.json`` (``results.csv-metadata.json``). Parquet and netCDF hold their
    provenance inside.

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
        Replace an existing file (otherwise ``FileExistsError``; for a CSV, when either it or
        its metadata file exists, and then neither is written).
    meta : dict, optional
        Extra provenance to record (e.g. the input file names).
    columns : dict of str to array of shape (N,), optional
        Extra per-frame columns, placed first.

    Returns
    -------
    Path
        The file written (for a CSV, its metadata file is beside it).

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
        raise InputError(
            f"cannot tell the results format of {path} from its extension {suffix or '(none)'!r};"
            f" use one of {', '.join(RESULT_FORMATS)}"
        )
    df = results_table(result, prob=prob, source=source, columns=columns)
    if suffix == ".csv":
        return write_csv_table(df, path, {**df.attrs, **(meta or {})}, overwrite=overwrite)
    # Lists (the reference names, a map's shape) as JSON text, which both formats read back.
    attrs = clean_attrs({k: json.dumps(v) if isinstance(v, (list, tuple)) else v
                         for k, v in {**df.attrs, **(meta or {})}.items()})  # fmt: skip

    if suffix == ".parquet":

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

    A CSV's provenance and column types come from its metadata file ``<path>-metadata.json``
    (a CSV without one reads with pandas' defaults and empty ``attrs``); CSV files of earlier
    versions, with ``# key: value`` lines before the header, read too.

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
            df, attrs = _read_csv_table(path)
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
            raise InputError(
                f"cannot tell the results format of {path} from its extension "
                f"{suffix or '(none)'!r}; use one of {', '.join(RESULT_FORMATS)}"
            )
    except InputError:
        raise  # names the file already
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"cannot read {path} as a bayesmix results file: {_first_line(exc)}"
        ) from None
    if len(df) == 0:
        names = [n for n in (df.index.name, *df.columns) if n is not None]
        shown = ", ".join(map(str, names[:8])) + (", ..." if len(names) > 8 else "")
        raise InputError(
            f"{path} has a header but no rows (columns {shown}): a results table has one row per "
            "frame; was it written completely? Write it again with bayesmix.write_results (or "
            "bayesmix fit --out)"
        )
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
        raise InputError(
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
        raise InputError(
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
        raise InputError(
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
        raise InputError(
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
        sigma_method=str(attrs.get("sigma_method", "fixed" if attrs.get("sigma_fixed") else
                                   "marginal")),
    )  # fmt: skip


def write_idata(idata: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the InferenceData of :func:`bayesmix.sample` to netCDF (``.nc``), atomically.

    Examples
    --------
    >>> write_idata(None, "posterior.csv")
    Traceback (most recent call last):
    ...
    bayesmix._errors.InputError: an InferenceData is written as netCDF: ...
    """
    from bayesmix._arviz import is_inference_data
    from bayesmix._arviz import write_idata as _write

    path = Path(path)
    if path.suffix.lower() != ".nc":
        raise InputError(
            f"an InferenceData is written as netCDF: give a path ending in .nc, got '{path}'"
        )
    if not is_inference_data(idata):
        raise InputError(
            f"expected the InferenceData of bayesmix.sample, got {type(idata).__name__}"
        )
    return atomic_write(path, lambda tmp: _write(idata, tmp), overwrite=overwrite)
