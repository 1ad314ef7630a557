"""Choosing between models of the same frames: expected log predictive density per frame.

(For a random walk along the frames, each frame's one-step-ahead density instead; see
:func:`compare`.)

Frames are conditionally independent given the shared noise parameters, so leaving frame i out
changes only what is learned about its own weights (and its own noise scale). Its leave-one-
frame-out predictive density is then the frame's marginal likelihood, its weights integrated
over their prior, at the shared parameters learned from all frames (one frame moves them by
O(1/N); summed over frames that is Takeuchi's correction, about one nat per shared parameter,
which is subtracted): closed form for Gaussian-factor likelihoods (``MapResult.loglik``). For a NUTS
run, PSIS-LOO (ArviZ) on its pointwise log-likelihood, with the exact value where Pareto k is
high (see :func:`bayesmix._arviz.elpd_frames`).
"""

from __future__ import annotations

from functools import singledispatch
from typing import TYPE_CHECKING, Any

import numpy as np

from bayesmix._errors import InputError
from bayesmix._results import MapResult

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["compare", "elpd"]


@singledispatch
def elpd(result: Any) -> tuple[np.ndarray, str]:
    """Per-frame expected log predictive density of a fit, and how it was computed."""
    from bayesmix._arviz import elpd_frames, is_inference_data

    if is_inference_data(result):
        return elpd_frames(result)
    raise InputError(
        "compare takes results of bayesmix.fit_map or the InferenceData of bayesmix.sample, "
        f"got {type(result).__name__}"
    )


@elpd.register
def _(result: MapResult) -> tuple[np.ndarray, str]:
    if result.loglik is None:
        raise InputError(
            f"this fit ({result.model.name}, prior {result.prior!r}) has no per-frame marginal "
            "likelihood: compare needs two references without gain (with any prior on x); fit "
            "the models to compare with those"
        )
    # The shared parameters were learned with frame i in: TIC's correction, one nat per shared
    # parameter in all, spread over the frames (what the frame's own weights cost is exact).
    n = len(result.loglik)
    # Along a random walk a frame's density given all the others is not a per-frame closed
    # form; each frame's density given the frames before it is (the Kalman filter's), and the
    # sum is the log marginal likelihood. For independent frames the two scores coincide, so
    # both kinds of fit are on one scale.
    method = ("one-step-ahead (Kalman filter)" if result.temporal is not None
              else "exact leave-one-frame-out")  # fmt: skip
    return np.asarray(result.loglik, np.float64) - shared_params(result) / n, method


def shared_params(result: MapResult) -> int:
    """How many parameters shared by all frames the fit learned (noise scale, noise model)."""
    from bayesmix.noise import PerFrame, PoissonGaussian, StudentT

    noise = result.model.noise
    if isinstance(noise, PerFrame):
        return 2  # mu and tau of log sigma
    k = 0 if result.sigma_fixed else 1
    if result.temporal is not None:
        k += not result.temporal.q_fixed
    if isinstance(noise, PoissonGaussian):
        k += (noise.gain is None) + (noise.read_sd is None)
    if isinstance(noise, StudentT):
        k += noise.df is None
    return k


def _describe(result: Any) -> dict[str, Any]:
    from bayesmix._schema import model_attrs

    attrs = result._attrs() if isinstance(result, MapResult) else dict(result.attrs)
    info = model_attrs(attrs)
    return {"noise": attrs.get("noise"), "background": info["background"],
            "n_refs": int(attrs.get("n_refs", 2)), "gain": info["gain"]}  # fmt: skip


def compare(*results: Any, names: Any = None) -> pd.DataFrame:
    """Rank fits of the same frames by their expected log predictive density (leave one frame
    out).

    Parameters
    ----------
    *results : MapResult or InferenceData
        Fits of the same frames (same frames in the same order, same references and
        background), e.g. with different ``noise=`` models.
    names : sequence of str, optional
        A name per fit (default: each fit's noise model).

    Returns
    -------
    DataFrame
        One row per fit, best first: ``elpd`` (sum over frames), ``se``, ``elpd_diff`` and
        ``dse`` (the difference to the best and its standard error, from the per-frame
        differences), ``weight`` (stacking-free pseudo-BMA weight), ``n_frames``, ``method``.

    Notes
    -----
    With :math:`\\ell_{mi}` model m's log predictive density of frame i,

    .. math::

        \\mathrm{elpd}_m = \\sum_i \\ell_{mi}, \\qquad
        \\mathrm{dse}_m = \\sqrt{N \\,\\mathrm{Var}_i(\\ell_{mi} - \\ell_{bi})},

    b the best model. A difference of several dse is a clear preference.

    A fit with ``temporal='random_walk'`` is scored by each frame's density given the frames
    before it (its terms sum to the log marginal likelihood); for a fit of independent frames
    that is the same number as leaving the frame out, so the two compare directly.

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(300, shape=(16, 16), noise=0.1, seed=0)
    >>> fits = [bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, noise=nz)
    ...         for nz in ("gaussian", "per_frame")]
    >>> list(bayesmix.compare(*fits).index)[0]
    'gaussian'
    """
    import pandas as pd

    if len(results) < 2:
        raise InputError(f"compare needs at least two fits of the same frames, got {len(results)}")
    if names is None:
        names = [str(_describe(r)["noise"] or f"model {k}") for k, r in enumerate(results)]
        if len(set(names)) < len(names):
            names = [f"{n} ({k})" for k, n in enumerate(names)]
    names = [str(n) for n in names]
    if len(names) != len(results) or len(set(names)) != len(names):
        raise InputError(f"names must be {len(results)} distinct strings, got {names!r}")
    terms, methods = zip(*(elpd(r) for r in results), strict=True)
    sizes = {len(t) for t in terms}
    if len(sizes) > 1:
        raise InputError(
            f"the fits hold different numbers of frames ({sorted(sizes)}); compare fits of the "
            "same frames"
        )
    info = [_describe(r) for r in results]
    for key in ("background", "n_refs", "gain"):
        if len({str(i[key]) for i in info}) > 1:
            raise InputError(
                f"the fits differ in {key} ({[i[key] for i in info]}): their likelihoods are not "
                "on one scale (a flat prior on background coefficients or a gain is improper); "
                "compare noise models with the same references, background and gain"
            )
    stack = np.stack(terms)  # (M, N)
    if not np.all(np.isfinite(stack)):
        raise InputError("a fit's per-frame log predictive density is not finite")
    n = stack.shape[1]
    total = stack.sum(axis=1)
    se = np.sqrt(n * stack.var(axis=1))
    best = int(np.argmax(total))
    diff = stack - stack[best]
    dse = np.sqrt(n * diff.var(axis=1))
    rel = total - total.max()
    weight = np.exp(rel) / np.exp(rel).sum()
    df = pd.DataFrame({
        "elpd": total, "se": se, "elpd_diff": total - total[best], "dse": dse,
        "weight": weight, "n_frames": n, "method": list(methods),
    }, index=pd.Index(names, name="model"))  # fmt: skip
    return df.sort_values("elpd", ascending=False)
