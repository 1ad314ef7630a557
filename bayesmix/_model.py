"""The model: one description that every step of the pipeline reads.

A frame ``y_i`` (n pixels) is

.. math::

    y_i = g_i \\,(x_i A + (1 - x_i) B) + \\sum_p c_{ip} N_p + \\varepsilon_i,
    \\qquad \\varepsilon_i \\sim \\mathcal N(0, \\sigma^2 I),

with the references ``A``, ``B``, a background basis ``N`` (none, a constant, a constant plus a
ramp along each frame axis, or images of the user's own) whose coefficients have a flat prior, an
optional per-frame gain ``g_i > 0`` (flat prior; ``g_i = 1`` when off), the prior on ``x`` and
the prior on ``sigma``. :class:`MixingModel` holds these choices; from it

- the statistics pass takes its basis (:meth:`MixingModel.basis`),
- the fast path and NUTS take the per-frame likelihood (the type of the reduced statistics it
  returns selects the closed forms, see :mod:`bayesmix._posterior`),
- results, writers, the report and the CLI take its description (:meth:`MixingModel.describe`).

Adding a model (K references, a noise model, a sequence prior) means adding a field here, the
statistics its likelihood needs, and the posterior methods registered for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesmix._errors import InputError
from bayesmix.noise import NOISES, Gaussian, NoiseModel, PerFrame, check_noise, noise_spec
from bayesmix.priors import SigmaPrior, XPrior, check_prior, check_sigma_prior
from bayesmix.temporal import Independent, TemporalModel, check_temporal, temporal_spec

__all__ = ["BACKGROUNDS", "NOISES", "MixingModel", "make_model"]

#: Named background bases; an array of basis images is accepted as well.
BACKGROUNDS = ("none", "constant", "linear")


def _ramps(frame_shape: tuple[int, ...]) -> list[np.ndarray]:
    """A ramp from -1 to 1 along each axis of the frame (axes of length 1 have none)."""
    out = []
    for axis, size in enumerate(frame_shape):
        if size < 2:
            continue
        shape = [1] * len(frame_shape)
        shape[axis] = size
        ramp = np.linspace(-1.0, 1.0, size).reshape(shape)
        out.append(np.broadcast_to(ramp, frame_shape).astype(np.float64))
    return out


@dataclass(frozen=True)
class MixingModel:
    """What is assumed about every frame: references, background, gain, noise, priors.

    Parameters
    ----------
    background : {'none', 'constant', 'linear'} or array, shape (P, *S)
        The background basis, integrated out exactly with a flat prior on its coefficients.
        'linear' is a constant plus a ramp along each frame axis (a slope for spectra, a plane
        for images). An array gives P basis images of the frame shape.
    gain : bool
        A per-frame positive amount or exposure ``g_i`` multiplying the mixture, integrated out
        exactly (flat prior on ``g > 0``).
    n_refs : int
        K, the number of references (2: the weight ``x`` of A; K >= 3: weights on the simplex).
    ref_names : tuple of str
        A name per reference, for the results' columns and the ``reference`` dimension.
    noise : Gaussian, PerFrame, PoissonGaussian or StudentT
        The pixel noise model (:mod:`bayesmix.noise`); default i.i.d. Gaussian with one scale
        sigma.
    temporal : Independent or RandomWalk
        How the weights of frames along a sequence are related (:mod:`bayesmix.temporal`);
        default independent frames.
    prior, sigma_prior
        Priors on each weight and on sigma (defaults as in :func:`bayesmix.fit_map`).

    Examples
    --------
    >>> from bayesmix._model import make_model
    >>> m = make_model(background="linear", gain=True)
    >>> m.basis_size((123,)), m.describe()["background"]
    (2, 'linear')
    >>> make_model().is_plain
    True
    """

    background: str | np.ndarray = "none"
    gain: bool = False
    noise: NoiseModel = field(default_factory=Gaussian)
    temporal: TemporalModel = field(default_factory=Independent)
    prior: XPrior = field(default=None)  # type: ignore[assignment]
    sigma_prior: SigmaPrior = field(default=None)  # type: ignore[assignment]
    n_refs: int = 2
    ref_names: tuple[str, ...] = ("A", "B")

    @property
    def is_plain(self) -> bool:
        """The two-reference model of the first release: no background, no gain."""
        return (
            isinstance(self.background, str) and self.background == "none" and not self.gain
            and self.n_refs == 2
        )  # fmt: skip

    @property
    def is_simplex(self) -> bool:
        """K >= 3 references: the weights are a point of the simplex, one per reference."""
        return self.n_refs > 2

    def basis_size(self, frame_shape: tuple[int, ...]) -> int:
        """P, the number of background basis images for frames of ``frame_shape``."""
        if not isinstance(self.background, str):
            return int(self.background.shape[0])
        if self.background == "none":
            return 0
        if self.background == "constant":
            return 1
        return 1 + len(_ramps(tuple(frame_shape)))

    def basis(self, frame_shape: tuple[int, ...]) -> np.ndarray:
        """The background basis, float64 of shape (P, *S)."""
        frame_shape = tuple(frame_shape)
        if not isinstance(self.background, str):
            if tuple(self.background.shape[1:]) != frame_shape:
                raise InputError(
                    f"background basis images must have the frame shape {frame_shape}, got "
                    f"{tuple(self.background.shape[1:])} (the array's shape is (P, *S))"
                )
            return np.asarray(self.background, np.float64)
        if self.background == "none":
            return np.zeros((0, *frame_shape))
        ones = np.ones(frame_shape)
        if self.background == "constant":
            return ones[None]
        return np.stack([ones, *_ramps(frame_shape)])

    def describe(self) -> dict[str, Any]:
        """The model in words and numbers, for provenance (results files, reports)."""
        bg = self.background if isinstance(self.background, str) else "custom"
        out: dict[str, Any] = {
            "background": bg, "gain": bool(self.gain), "noise": noise_spec(self.noise),
            "temporal": temporal_spec(self.temporal)}
        if not isinstance(self.background, str):
            out["background_terms"] = int(self.background.shape[0])
        if self.is_simplex:
            out["n_refs"] = self.n_refs
            out["references"] = list(self.ref_names)
        return out

    @property
    def name(self) -> str:
        """A short name, e.g. ``'linear background + gain'``."""
        parts = []
        bg = self.describe()["background"]
        if bg != "none":
            parts.append(f"{bg} background")
        if self.gain:
            parts.append("gain")
        if self.is_simplex:
            parts.insert(0, f"{self.n_refs} references")
        if not isinstance(self.noise, Gaussian):
            parts.append(f"{noise_spec(self.noise)} noise")
        if not isinstance(self.temporal, Independent):
            parts.append(temporal_spec(self.temporal).replace("_", " "))
        return " + ".join(parts) if parts else "two references"


def _check_background(background: Any) -> str | np.ndarray:
    if background is None:
        return "none"
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise InputError(
                f"background must be one of {BACKGROUNDS}, None, or an array of basis images "
                f"of shape (P, *S), got {background!r}"
            )
        return background
    arr = np.asarray(background)
    if arr.dtype.kind not in "fiu":
        raise InputError(
            f"a background basis must hold real numbers, got dtype {arr.dtype}; pass "
            "'constant', 'linear' or an array of shape (P, *S)"
        )
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise InputError(
            f"a background basis array must have shape (P, *S) with P >= 1 basis images, got "
            f"{arr.shape}; a single image needs a leading axis: basis[None]"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError("the background basis has NaN or Inf pixels; basis images must be finite")
    arr.setflags(write=False)
    return arr


def make_model(
    *,
    background: Any = None,
    gain: bool = False,
    noise: Any = "gaussian",
    temporal: Any = None,
    prior: XPrior | None = None,
    sigma_prior: SigmaPrior | None = None,
    n_refs: int = 2,
    ref_names: tuple[str, ...] | None = None,
) -> MixingModel:
    """A validated :class:`MixingModel` (every option checked before any work)."""
    if not isinstance(gain, (bool, np.bool_)):
        raise InputError(f"gain must be True or False, got {gain!r}")
    noise = check_noise(noise)
    temporal = check_temporal(temporal)
    n_refs = int(n_refs)
    names = ref_names_for(n_refs, ref_names)
    prior = check_prior(prior, n_refs)
    _check_learned(prior, gain=bool(gain), n_refs=n_refs, noise=noise, temporal=temporal)
    if isinstance(noise, PerFrame):
        from bayesmix.priors import TruncatedNormal, Uniform

        if gain or n_refs > 2 or not isinstance(prior, (TruncatedNormal, Uniform)):
            raise InputError(
                "noise='per_frame' is supported for two references without gain and with a "
                f"truncated-normal or uniform prior; got {n_refs} references, gain={bool(gain)},"
                f" prior {prior!r}. Use noise='gaussian' with a variance map, or fit groups of "
                "frames of similar quality separately"
            )
    if not isinstance(temporal, Independent):
        _check_temporal_model(temporal, gain=bool(gain), n_refs=n_refs, noise=noise, prior=prior)
    return MixingModel(
        background=_check_background(background),
        gain=bool(gain),
        noise=noise,
        temporal=temporal,
        prior=prior,
        sigma_prior=check_sigma_prior(sigma_prior),
        n_refs=n_refs,
        ref_names=names,
    )


def _check_learned(prior, *, gain, n_refs, noise, temporal) -> None:
    """The models a learned prior (or point masses on the pure phases) is available with."""
    from bayesmix.priors import Learn, PointMassMixture

    point_mass = isinstance(prior, PointMassMixture) or (
        isinstance(prior, Learn) and prior.family == "point_mass")
    why = None
    if point_mass and gain:
        why = "point masses on the pure phases with gain=True"
    elif isinstance(prior, Learn) and gain and n_refs > 2:
        why = f"gain=True with {n_refs} references"
    elif isinstance(prior, Learn) and isinstance(noise, PerFrame):
        why = ("noise='per_frame' (learn one population at a time: the weights' with "
               "noise='gaussian', or the noise scales' with a fixed prior)")
    elif isinstance(prior, Learn) and not isinstance(temporal, Independent):
        why = f"temporal={temporal_spec(temporal)!r} (the walk's start prior is fixed)"
    if why is not None:
        what = "prior='learn'" if isinstance(prior, Learn) else "a PointMassMixture prior"
        raise InputError(
            f"{what} is not supported with {why}; use a fixed prior (bayesmix.priors) or drop "
            "that option"
        )


def _check_temporal_model(temporal, *, gain, n_refs, noise, prior) -> None:
    """A random walk on x needs each frame's likelihood Gaussian in x and a Gaussian start."""
    from bayesmix.priors import TruncatedNormal, Uniform

    why = None
    if n_refs > 2:
        why = f"{n_refs} references (the weights are a point of the simplex, not one number)"
    elif gain:
        why = "gain=True (integrating the gain out leaves a likelihood that is not Gaussian in x)"
    elif isinstance(noise, PerFrame):
        why = ("noise='per_frame' (integrating each frame's sigma out leaves a Student-t in x, "
               "not a Gaussian)")
    elif not isinstance(prior, (TruncatedNormal, Uniform)):
        why = f"the prior {prior!r} (the walk starts from a truncated-normal or uniform prior)"
    if why is not None:
        raise InputError(
            f"temporal={temporal_spec(temporal)!r} needs each frame's likelihood Gaussian in one "
            f"weight x; it is not supported with {why}. Fit with temporal='independent', or "
            "without that option"
        )


def check_nuts(model: MixingModel) -> None:
    """Refuse, before any work, the models the NUTS path does not sample yet."""
    if model.gain and model.n_refs > 2:
        raise InputError(
            f"NUTS with gain=True and {model.n_refs} references is not supported yet: use "
            "bayesmix.fit_map (exact sampler on the positive orthant), or fit without gain"
        )
    if not isinstance(model.temporal, Independent) and model.noise.reweights:
        raise InputError(
            f"temporal={temporal_spec(model.temporal)!r} on the NUTS path samples the walk on "
            f"the per-frame statistics, which hold a Gaussian likelihood only; "
            f"noise={noise_spec(model.noise)!r} needs the pixel-level likelihood. Use "
            "noise='gaussian' (optionally with variance=) for the walk under NUTS, or "
            f"bayesmix.fit_map(..., temporal='random_walk', noise={noise_spec(model.noise)!r})"
        )


def ref_names_for(n_refs: int, names: Any = None) -> tuple[str, ...]:
    """Names of K references: the ones given (unique, non-empty), or A, B, C, ..."""
    if names is None:
        return tuple(chr(ord("A") + k) if k < 26 else f"R{k}" for k in range(n_refs))
    names = tuple(str(v) for v in names)
    if len(names) != n_refs or len(set(names)) != n_refs or not all(names):
        raise InputError(
            f"reference names must be {n_refs} distinct non-empty strings, got {names!r}"
        )
    return names


def check_design(
    model: MixingModel, refs: np.ndarray, frame_shape: tuple[int, ...],
    pixels: np.ndarray | None,
) -> np.ndarray:  # fmt: skip
    """The model's design matrix on the selected pixels, float64 of shape (P + K, n), background
    first, then the K references; raises when the model cannot be identified from these
    pixels."""
    n_px = int(np.prod(frame_shape))
    basis = model.basis(frame_shape).reshape(model.basis_size(frame_shape), n_px)
    if pixels is not None:
        basis = basis[:, pixels]
    refs = np.asarray(refs, np.float64)
    k = refs.shape[0]
    if k != model.n_refs:
        raise InputError(f"the model has {model.n_refs} references, got {k} reference frames")
    design = np.vstack([basis, refs])
    n_par, n = design.shape
    if n_par >= n:
        raise InputError(
            f"the model has {n_par} linear terms ({n_par - k} background + {k} references) but "
            f"a frame has only {n} pixels: nothing would be left to measure the noise; use "
            "fewer references, a simpler background or more pixels per frame"
        )
    if k > 2:
        if np.linalg.matrix_rank(refs) < k:
            raise InputError(
                f"the {k} references are linearly dependent on the selected pixels (one is a "
                "combination of the others), so their weights are not identifiable; drop the "
                "redundant reference"
            )
        # Rows scaled to unit norm: the references are in the data's units, the basis is not.
        if np.linalg.matrix_rank(design / np.linalg.norm(design, axis=1)[:, None]) < n_par:
            raise InputError(
                "the background basis explains a combination of the references (the design "
                "[background, references] is linearly dependent): the weights are not "
                "identifiable; use a background basis that does not contain the references"
            )
        return design
    ref_a, ref_b = refs
    if n_par > 2:
        bg = design[:-2]
        if np.linalg.matrix_rank(bg) < bg.shape[0]:
            raise InputError(
                "the background basis images are linearly dependent (one is a combination of "
                "the others); remove the redundant ones"
            )
        # The weight x lives in the direction A - B: it is identifiable only if A - B is not
        # explained by the background (with gain, A and B must each stay independent of it).
        for name, vec in (("A - B", ref_a - ref_b),) + (
            (("A", ref_a), ("B", ref_b)) if model.gain else ()
        ):
            coef, *_ = np.linalg.lstsq(bg.T, vec, rcond=None)
            left = np.linalg.norm(vec - bg.T @ coef)
            if not left > 1e-9 * np.linalg.norm(vec):  # relative: the data may be in any unit
                raise InputError(
                    f"the background basis explains {name} entirely (collinear with the "
                    "references): the weight x is not identifiable; use a background basis "
                    "that does not contain the references"
                )
    if model.gain and np.linalg.matrix_rank(design[-2:]) < 2:
        raise InputError(
            "with gain=True the references A and B must not be proportional: g * (x A + (1-x) B)"
            " cannot tell x from g when B = k A"
        )
    return design
