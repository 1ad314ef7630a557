"""Priors on the mixing weight ``x`` and on the noise scale ``sigma``.

Priors on ``x`` (the weight of reference A):

- :class:`TruncatedNormal` (the default, ``TruncatedNormal(0.55, 0.15, 0.0, 1.0)``),
- :class:`Uniform`,
- :class:`Beta` (on [0, 1]).

With K >= 3 references the weights live on the simplex and their prior is :class:`Dirichlet`
(default ``Dirichlet(1)``, flat on the simplex); for two references ``Dirichlet([a, b])`` is
``Beta(a, b)``.

Priors on ``sigma`` (the pixel noise scale, shared by all frames):

- :class:`Jeffreys` (the default): :math:`p(\\sigma) \\propto 1/\\sigma`, scale-invariant and
  improper; the posterior is proper as soon as one frame has a non-zero residual.
- :class:`InverseGamma` on :math:`\\sigma^2`, for users who know the noise level roughly.

Both sigma priors keep the noise update of the MAP in closed form:

.. math::

    \\hat\\sigma^2 = \\frac{\\mathrm{SSE}(x) + 2\\beta}{n + 2\\alpha + 1}

with :math:`\\alpha = \\beta = 0` for Jeffreys, where ``n`` is the total number of valid pixels.

All priors validate their parameters when built and are immutable (frozen dataclasses), so one
object can be shared between calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, gammaln, log_ndtr, xlog1py, xlogy

from bayesmix._errors import InputError

__all__ = [
    "Beta",
    "Dirichlet",
    "InverseGamma",
    "Jeffreys",
    "LEARN_FAMILIES",
    "Learn",
    "PointMassMixture",
    "SigmaPrior",
    "TruncatedNormal",
    "Uniform",
    "XPrior",
    "learn",
    "parse_prior",
    "parse_sigma_prior",
    "prior_spec",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value!r}")
    return value


def _check_bounds(low: float, high: float) -> tuple[float, float]:
    low = _check_finite("low", low)
    high = _check_finite("high", high)
    if not low < high:
        raise InputError(
            f"prior bounds must satisfy low < high, got low={low}, high={high}; "
            "swap them or widen the interval"
        )
    return low, high


@dataclass(frozen=True)
class TruncatedNormal:
    """Normal(loc, scale) truncated to [low, high]: the default prior on ``x``.

    Parameters
    ----------
    loc, scale : float
        Location and scale of the normal before truncation; ``loc`` must lie in [low, high].
    low, high : float
        Bounds of the support, ``low < high``.

    Notes
    -----
    Conjugate to the Gaussian likelihood of a frame: given sigma the posterior of ``x`` is again a
    truncated normal, so the MAP, the mean, the sd and the quantiles are exact closed forms.

    Examples
    --------
    >>> from bayesmix.priors import TruncatedNormal
    >>> TruncatedNormal()
    TruncatedNormal(loc=0.55, scale=0.15, low=0.0, high=1.0)
    """

    loc: float = 0.55
    scale: float = 0.15
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        low, high = _check_bounds(self.low, self.high)
        loc = _check_finite("loc", self.loc)
        scale = _check_finite("scale", self.scale)
        if scale <= 0:
            raise InputError(f"scale must be > 0, got {scale}")
        if not low <= loc <= high:
            raise InputError(
                f"prior loc={loc} is outside its bounds [{low}, {high}]; a prior centred outside "
                "its own support is almost always a typo"
            )
        for name, v in (("loc", loc), ("scale", scale), ("low", low), ("high", high)):
            object.__setattr__(self, name, v)

    @property
    def bounds(self) -> tuple[float, float]:
        """The support ``(low, high)``."""
        return (self.low, self.high)

    def gaussian_params(self) -> tuple[float, float]:
        """``(mean, precision)`` of the Gaussian factor of the prior density."""
        return (self.loc, 1.0 / self.scale**2)

    def log_prob(self, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised log density, ``-inf`` outside [low, high]."""
        x = jnp.asarray(x)
        z = (x - self.loc) / self.scale
        a = (self.low - self.loc) / self.scale
        b = (self.high - self.loc) / self.scale
        # log(Phi(b) - Phi(a)) without cancellation: a <= 0 <= b since loc is inside the bounds.
        log_z = jnp.log1p(-jnp.exp(log_ndtr(a)) - jnp.exp(log_ndtr(-b)))
        lp = -0.5 * z**2 - _LOG_SQRT_2PI - jnp.log(self.scale) - log_z
        return jnp.where((x >= self.low) & (x <= self.high), lp, -jnp.inf)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws (numpy), for simulations."""
        from scipy.stats import truncnorm

        a = (self.low - self.loc) / self.scale
        b = (self.high - self.loc) / self.scale
        return truncnorm.rvs(a, b, loc=self.loc, scale=self.scale, size=size, random_state=rng)


@dataclass(frozen=True)
class Uniform:
    """Uniform prior on [low, high].

    Examples
    --------
    >>> from bayesmix.priors import Uniform
    >>> Uniform(0.2, 0.9).bounds
    (0.2, 0.9)
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        low, high = _check_bounds(self.low, self.high)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def bounds(self) -> tuple[float, float]:
        """The support ``(low, high)``."""
        return (self.low, self.high)

    def gaussian_params(self) -> tuple[float, float]:
        """``(mean, precision)``: a flat prior is a Gaussian factor of zero precision."""
        return (0.5 * (self.low + self.high), 0.0)

    def log_prob(self, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised log density, ``-inf`` outside [low, high]."""
        x = jnp.asarray(x)
        lp = -jnp.log(self.high - self.low) * jnp.ones_like(x, dtype=jnp.result_type(float))
        return jnp.where((x >= self.low) & (x <= self.high), lp, -jnp.inf)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws (numpy), for simulations."""
        return rng.uniform(self.low, self.high, size)


@dataclass(frozen=True)
class Beta:
    """Beta(a, b) prior on [0, 1].

    Parameters
    ----------
    a, b : float
        Shape parameters, both >= 1 so that the posterior is log-concave and its mode unique
        (shapes below 1 put infinite density on a bound, which the quadrature does not resolve).

    Notes
    -----
    Not conjugate: the MAP is found by a safeguarded Newton iteration and the posterior mean, sd
    and quantiles by quadrature on a fine grid fitted to each frame's posterior.

    Examples
    --------
    >>> from bayesmix.priors import Beta
    >>> Beta(5.5, 4.5).mean
    0.55
    """

    a: float = 5.5
    b: float = 4.5

    def __post_init__(self) -> None:
        a = _check_finite("a", self.a)
        b = _check_finite("b", self.b)
        if a < 1 or b < 1:
            raise InputError(
                f"Beta shapes must both be >= 1, got a={a}, b={b}; shapes below 1 put infinite "
                "density on a bound: use Uniform() for a flat prior"
            )
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    @property
    def bounds(self) -> tuple[float, float]:
        """The support ``(0, 1)``."""
        return (0.0, 1.0)

    @property
    def mean(self) -> float:
        """Prior mean ``a / (a + b)``."""
        return self.a / (self.a + self.b)

    def log_prob(self, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised log density, ``-inf`` outside [0, 1]."""
        x = jnp.asarray(x)
        lp = xlogy(self.a - 1.0, x) + xlog1py(self.b - 1.0, -x) - betaln(self.a, self.b)
        return jnp.where((x >= 0.0) & (x <= 1.0), lp, -jnp.inf)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws (numpy), for simulations."""
        return rng.beta(self.a, self.b, size)


@dataclass(frozen=True)
class Dirichlet:
    """Dirichlet(alpha) prior on the K weights of K references (a point of the simplex).

    Parameters
    ----------
    alpha : float or sequence of K floats
        Concentrations, each > 0. A scalar is symmetric and takes its length from the number of
        references of the fit; ``Dirichlet(1.0)`` (the default for K >= 3) is flat on the
        simplex.

    Notes
    -----
    .. math::

        \\log p(x) = \\sum_k (\\alpha_k - 1) \\log x_k - \\log B(\\alpha), \\qquad
        x_k \\ge 0, \\ \\sum_k x_k = 1 .

    A component with :math:`\\alpha_k < 1` makes the density infinite on the face
    :math:`x_k = 0`: the posterior then has no finite mode. The posterior mean, sd and intervals
    are unaffected (they use the density as it is); the reported MAP is the mode with such
    :math:`\\alpha_k` raised to 1, i.e. the best fit on the simplex under the prior's bounded part,
    and it lies on that face whenever the data put the weight near 0. For two references
    ``Dirichlet([a, b])`` is ``Beta(a, b)`` (the fast path converts it).

    Examples
    --------
    >>> from bayesmix.priors import Dirichlet
    >>> Dirichlet(2.0).expand(3)
    Dirichlet(alpha=(2.0, 2.0, 2.0))
    >>> round(float(Dirichlet([1.0, 1.0, 1.0]).log_prob([0.2, 0.3, 0.5])), 6)  # log Gamma(3)
    0.693147
    """

    alpha: float | tuple[float, ...] = 1.0

    def __post_init__(self) -> None:
        raw = self.alpha
        arr = np.asarray(raw, dtype=object if isinstance(raw, str) else None)
        if arr.dtype.kind not in "fiu" or arr.ndim > 1 or arr.size == 0:
            raise InputError(
                f"Dirichlet alpha must be a positive number or a sequence of K positive numbers, "
                f"got {raw!r}"
            )
        vals = [float(v) for v in np.ravel(arr)]
        for v in vals:
            if not (math.isfinite(v) and v > 0):
                raise InputError(
                    f"Dirichlet concentrations must be finite and > 0, got alpha={raw!r}; "
                    "alpha = 1 is flat on the simplex"
                )
        if arr.ndim == 1 and len(vals) < 2:
            raise InputError(f"a Dirichlet needs K >= 2 concentrations, got {len(vals)}")
        object.__setattr__(self, "alpha", tuple(vals) if arr.ndim == 1 else vals[0])

    @property
    def n_refs(self) -> int | None:
        """K, or None for a symmetric Dirichlet whose length comes from the fit."""
        return len(self.alpha) if isinstance(self.alpha, tuple) else None

    def expand(self, k: int) -> Dirichlet:
        """This prior for ``k`` references (a symmetric one repeated; else its length checked)."""
        if isinstance(self.alpha, tuple):
            if len(self.alpha) != k:
                raise InputError(
                    f"Dirichlet alpha has {len(self.alpha)} concentrations but the fit has {k} "
                    f"references; pass one alpha per reference (or a scalar for a symmetric prior)"
                )
            return self
        return Dirichlet((float(self.alpha),) * k)

    @property
    def bounds(self) -> tuple[float, float]:
        """The range of each weight, ``(0, 1)``."""
        return (0.0, 1.0)

    @property
    def concentrations(self) -> np.ndarray:
        """alpha as an array of shape (K,) (a symmetric prior must be expanded first)."""
        return np.asarray(self.alpha, np.float64)

    def log_prob(self, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised log density of points ``x`` of shape (..., K); ``-inf`` off the simplex."""
        x = jnp.asarray(x)
        alpha = jnp.broadcast_to(jnp.asarray(self.alpha, x.dtype), x.shape[-1:])
        norm = jnp.sum(gammaln(alpha)) - gammaln(jnp.sum(alpha))
        lp = jnp.sum(xlogy(alpha - 1.0, x), axis=-1) - norm
        tol = 64 * jnp.finfo(x.dtype).eps
        inside = jnp.all(x >= 0.0, axis=-1) & (jnp.abs(jnp.sum(x, axis=-1) - 1.0) <= tol)
        return jnp.where(inside, lp, -jnp.inf)

    def log_prob_log(self, log_x: jnp.ndarray) -> jnp.ndarray:
        """:meth:`log_prob` at ``x = exp(log_x)`` for points of the simplex given by their log
        weights (..., K): exact where a weight underflows (NUTS works in log weights)."""
        log_x = jnp.asarray(log_x)
        alpha = jnp.broadcast_to(jnp.asarray(self.alpha, log_x.dtype), log_x.shape[-1:])
        norm = jnp.sum(gammaln(alpha)) - gammaln(jnp.sum(alpha))
        return jnp.sum((alpha - 1.0) * log_x, axis=-1) - norm

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws (numpy), shape (size, K), for simulations."""
        if not isinstance(self.alpha, tuple):
            raise InputError("expand a symmetric Dirichlet to K references first: .expand(K)")
        return rng.dirichlet(self.concentrations, size)


@dataclass(frozen=True)
class PointMassMixture:
    """Nearly pure phases: a point mass on each pure phase plus a continuous part.

    With probability ``atoms[k]`` a frame is pure reference k (its weight vector is the k-th
    vertex of the simplex; with two references ``atoms = (p_A, p_B)`` put mass on ``x = 1`` and
    ``x = 0``); with probability ``1 - sum(atoms)`` its weights follow ``continuous``.

    Parameters
    ----------
    atoms : sequence of K floats
        Probability of each pure phase, each >= 0, summing to less than 1.
    continuous : TruncatedNormal or Dirichlet
        The continuous part: a truncated normal on [0, 1] with two references, ``Dirichlet(1)``
        (flat on the simplex) with three.

    Notes
    -----
    The posterior of a frame is again such a mixture: the probability that it is pure phase k
    is the prior's ``atoms[k]`` times the frame's likelihood at that vertex, against the
    continuous part's marginal likelihood (closed form with two references, 1-D quadrature with
    three). Its highest-density intervals contain the atom whenever the atom's posterior
    probability is large enough, so a weight of exactly 0 can be covered.

    Examples
    --------
    >>> from bayesmix.priors import PointMassMixture, TruncatedNormal
    >>> p = PointMassMixture((0.2, 0.3), TruncatedNormal(0.5, 0.2))
    >>> round(p.continuous_weight, 3)
    0.5
    """

    atoms: tuple[float, ...] = (0.25, 0.25)
    continuous: TruncatedNormal | Dirichlet = field(default_factory=TruncatedNormal)

    def __post_init__(self) -> None:
        try:
            atoms = tuple(float(v) for v in np.ravel(np.asarray(self.atoms, np.float64)))
        except (TypeError, ValueError):
            raise InputError(
                f"atoms must be K probabilities (one per reference), got {self.atoms!r}"
            ) from None
        if len(atoms) < 2 or not all(math.isfinite(v) and v >= 0 for v in atoms) or (
            not sum(atoms) < 1.0
        ):
            raise InputError(
                f"atoms must be K >= 2 probabilities >= 0 whose sum is below 1 (the rest is the "
                f"continuous part's), got {self.atoms!r}"
            )
        cont = self.continuous
        if len(atoms) == 2 and not isinstance(cont, TruncatedNormal):
            raise InputError(
                "with two references the continuous part must be a TruncatedNormal on [0, 1], "
                f"got {cont!r}"
            )
        if isinstance(cont, TruncatedNormal) and cont.bounds != (0.0, 1.0):
            raise InputError(f"the continuous part must live on [0, 1], got bounds {cont.bounds}")
        if len(atoms) > 2:
            if not isinstance(cont, Dirichlet):
                raise InputError(
                    f"with {len(atoms)} references the continuous part must be a Dirichlet, "
                    f"got {cont!r}"
                )
            cont = cont.expand(len(atoms))
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "continuous", cont)

    @property
    def bounds(self) -> tuple[float, float]:
        """The range of each weight, ``(0, 1)``."""
        return (0.0, 1.0)

    @property
    def n_refs(self) -> int:
        """K, the number of references."""
        return len(self.atoms)

    @property
    def continuous_weight(self) -> float:
        """Probability of the continuous part, ``1 - sum(atoms)``."""
        return 1.0 - float(sum(self.atoms))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws (numpy; (size,) of x with two references, else (size, K))."""
        k = self.n_refs
        probs = np.asarray([*self.atoms, self.continuous_weight])
        which = rng.choice(k + 1, size=size, p=probs / probs.sum())
        cont = self.continuous.sample(rng, size)
        if k == 2:
            return np.where(which == 0, 1.0, np.where(which == 1, 0.0, cont))
        eye = np.eye(k)
        return np.where((which < k)[:, None], eye[np.minimum(which, k - 1)], cont)


#: The families ``prior="learn"`` can learn (:func:`learn`).
LEARN_FAMILIES = ("truncnormal", "beta", "dirichlet", "point_mass")


@dataclass(frozen=True)
class Learn:
    """Learn the prior on the weights from all frames (empirical Bayes): build with :func:`learn`.

    ``family`` None is the default family: the truncated normal for two references, the
    Dirichlet for three.
    """

    family: str | None = None

    def __post_init__(self) -> None:
        fam = self.family
        if fam is not None:
            if not isinstance(fam, str):
                fam = _FAMILY_OF_CLASS.get(fam) if isinstance(fam, type) else None
                if fam is None:
                    raise InputError(
                        f"learn(family) takes one of {LEARN_FAMILIES} (or the prior class), got "
                        f"{self.family!r}"
                    )
            fam = fam.strip().lower()
            if fam not in LEARN_FAMILIES:
                raise InputError(f"learn(family) takes one of {LEARN_FAMILIES}, got {fam!r}")
        object.__setattr__(self, "family", fam)

    def resolve(self, n_refs: int) -> Learn:
        """This spec for ``n_refs`` references (the default family filled in, checked)."""
        fam = self.family or ("truncnormal" if n_refs == 2 else "dirichlet")
        if fam in ("truncnormal", "beta") and n_refs != 2:
            raise InputError(
                f"learn({fam!r}) is a prior on the one weight of two references; with {n_refs} "
                "references learn 'dirichlet' or 'point_mass'"
            )
        if n_refs > 3:
            raise InputError(
                f"prior='learn' needs K <= 3 references (the exact marginal likelihood of a "
                f"frame is a quadrature over the simplex), got {n_refs}; give a fixed "
                "Dirichlet(alpha) prior instead"
            )
        if fam == "dirichlet" and n_refs == 2:
            fam = "beta"  # Dirichlet([a, b]) is Beta(a, b)
        return Learn(fam)

    @property
    def bounds(self) -> tuple[float, float]:
        """The range of each weight, ``(0, 1)``."""
        return (0.0, 1.0)


_FAMILY_OF_CLASS: dict[type, str] = {
    TruncatedNormal: "truncnormal", Beta: "beta", Dirichlet: "dirichlet",
    PointMassMixture: "point_mass"}  # fmt: skip


def learn(family: str | type | None = None) -> Learn:
    """Learn the prior on the weights from the frames, by maximum marginal likelihood.

    Parameters
    ----------
    family : {'truncnormal', 'beta', 'dirichlet', 'point_mass'} or prior class, optional
        The family whose hyperparameters are learned, jointly with sigma. Default: the
        truncated normal for two references, the Dirichlet for three. 'point_mass' is a point
        mass on each pure phase plus a continuous part (:class:`PointMassMixture`), for
        nearly pure phases.

    Examples
    --------
    >>> from bayesmix.priors import learn
    >>> learn()
    Learn(family=None)
    >>> learn("beta")
    Learn(family='beta')
    """
    return Learn(family)


@dataclass(frozen=True)
class Jeffreys:
    """Jeffreys prior on the noise scale, :math:`p(\\sigma) \\propto 1/\\sigma` (the default).

    Improper but harmless: with millions of pixels the data fix sigma to a relative precision of
    about :math:`1/\\sqrt{2n}`.
    """

    @property
    def ig_params(self) -> tuple[float, float]:
        """``(concentration, scale)`` of the equivalent inverse-gamma on sigma^2 (both 0)."""
        return (0.0, 0.0)


@dataclass(frozen=True)
class InverseGamma:
    """Inverse-gamma prior on :math:`\\sigma^2` with ``concentration`` and ``scale``.

    :math:`p(\\sigma^2) \\propto (\\sigma^2)^{-\\alpha-1} e^{-\\beta/\\sigma^2}`; its mode is
    :math:`\\beta / (\\alpha + 1)`. Use it to encode a rough prior noise level.

    Examples
    --------
    >>> from bayesmix.priors import InverseGamma
    >>> InverseGamma(2.0, 0.03).ig_params
    (2.0, 0.03)
    """

    concentration: float
    scale: float

    def __post_init__(self) -> None:
        a = _check_finite("concentration", self.concentration)
        b = _check_finite("scale", self.scale)
        if a <= 0 or b <= 0:
            raise InputError(f"InverseGamma needs concentration > 0 and scale > 0, got {a}, {b}")
        object.__setattr__(self, "concentration", a)
        object.__setattr__(self, "scale", b)

    @property
    def ig_params(self) -> tuple[float, float]:
        """``(concentration, scale)`` of the inverse-gamma on sigma^2."""
        return (self.concentration, self.scale)


_PYTREE_FIELDS: dict[type, tuple[str, ...]] = {}


def _unvalidated(cls: type, *values: object) -> object:
    """A prior of type ``cls`` with these parameters (in field order), without its
    constructor's checks: for parameters made inside jitted code, which may be traced (a
    population learned or sampled from the frames), and for unflattening."""
    obj = object.__new__(cls)
    for f, v in zip(_PYTREE_FIELDS[cls], values, strict=True):
        object.__setattr__(obj, f, v)
    return obj


def _register_pytree(cls: type, fields: tuple[str, ...]) -> None:
    """Register a prior as a pytree whose leaves are its parameters: jitted code then takes the
    prior as a traced argument (its type, not its numbers, selects the compiled program), and
    ``log_prob`` runs on traced parameters. Unflattening skips validation, which already ran."""
    _PYTREE_FIELDS[cls] = fields

    def flatten(prior: object) -> tuple[tuple[object, ...], None]:
        return tuple(getattr(prior, f) for f in fields), None

    def unflatten(_: None, leaves: tuple[object, ...]) -> object:
        return _unvalidated(cls, *leaves)

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)


_register_pytree(TruncatedNormal, ("loc", "scale", "low", "high"))
_register_pytree(Uniform, ("low", "high"))
_register_pytree(Beta, ("a", "b"))
_register_pytree(Dirichlet, ("alpha",))
_register_pytree(PointMassMixture, ("atoms", "continuous"))

XPrior = TruncatedNormal | Uniform | Beta | Dirichlet | PointMassMixture
SigmaPrior = Jeffreys | InverseGamma

DEFAULT_PRIOR = TruncatedNormal()
DEFAULT_SIGMA_PRIOR = Jeffreys()


def check_prior(prior: object | None, n_refs: int = 2) -> XPrior:
    """Return ``prior`` (or the default) for a fit with ``n_refs`` references, raising a clear
    error for anything else.

    Two references: TruncatedNormal (default), Uniform, Beta, or Dirichlet([a, b]) (returned as
    Beta(a, b)). K >= 3: Dirichlet (default Dirichlet(1)), expanded to length K.
    """
    if prior is None:
        return DEFAULT_PRIOR if n_refs == 2 else Dirichlet(1.0).expand(n_refs)
    if isinstance(prior, str):
        if prior.strip().lower() != "learn":
            raise InputError(
                f"prior must be one of TruncatedNormal, Uniform, Beta, Dirichlet, "
                f"PointMassMixture (from bayesmix.priors) or 'learn', got {prior!r}; for a text "
                "form use bayesmix.priors.parse_prior"
            )
        prior = Learn()
    if isinstance(prior, Learn):
        return prior.resolve(n_refs)  # type: ignore[return-value]
    if isinstance(prior, PointMassMixture):
        if prior.n_refs != n_refs:
            raise InputError(
                f"PointMassMixture has {prior.n_refs} atoms but the fit has {n_refs} references; "
                "give one atom per reference"
            )
        return prior
    if not isinstance(prior, (TruncatedNormal, Uniform, Beta, Dirichlet)):
        raise InputError(
            f"prior must be one of TruncatedNormal, Uniform, Beta, Dirichlet, PointMassMixture "
            f"(from bayesmix.priors) or 'learn', got {type(prior).__name__}"
        )
    if isinstance(prior, Dirichlet):
        prior = prior.expand(n_refs)
        if n_refs == 2:
            a, b = prior.alpha  # type: ignore[misc]
            if a < 1 or b < 1:
                raise InputError(
                    f"with two references Dirichlet([a, b]) is Beta(a, b), which needs a, b >= 1 "
                    f"(got {prior.alpha}); use Uniform() for a flat prior"
                )
            return Beta(a, b)
        return prior
    if n_refs != 2:
        raise InputError(
            f"with {n_refs} references the weights lie on the simplex: the prior must be "
            f"Dirichlet(alpha) (bayesmix.priors), got {type(prior).__name__}; "
            f"{type(prior).__name__} is a prior on the one weight of two references"
        )
    return prior


def check_sigma_prior(prior: object | None) -> SigmaPrior:
    """Return ``prior`` or the default sigma prior, raising a clear error for anything else."""
    if prior is None:
        return DEFAULT_SIGMA_PRIOR
    if not isinstance(prior, (Jeffreys, InverseGamma)):
        raise InputError(
            f"sigma_prior must be Jeffreys() or InverseGamma(...) (from bayesmix.priors), "
            f"got {type(prior).__name__}"
        )
    return prior


# name -> (class, parameter names); the short text form used by the CLI and in result files.
_X_SPECS: dict[str, tuple[type, tuple[str, ...]]] = {
    "truncnormal": (TruncatedNormal, ("loc", "scale", "low", "high")),
    "uniform": (Uniform, ("low", "high")),
    "beta": (Beta, ("a", "b")),
    "dirichlet": (Dirichlet, ("alpha",)),
}
_SIGMA_SPECS: dict[str, tuple[type, tuple[str, ...]]] = {
    "jeffreys": (Jeffreys, ()),
    "invgamma": (InverseGamma, ("concentration", "scale")),
}
# Fewest parameters each form accepts (the rest take the class defaults).
_MIN_ARGS = {"truncnormal": 2, "uniform": 0, "beta": 2, "dirichlet": 1, "jeffreys": 0,
             "invgamma": 2}  # fmt: skip


def _parse(spec: str, table: dict[str, tuple[type, tuple[str, ...]]], what: str) -> object:
    if not isinstance(spec, str):
        raise InputError(f"{what} spec must be a string such as 'beta:2,2', got {spec!r}")
    name, _, args = spec.strip().partition(":")
    name = name.strip().lower()
    forms = ", ".join(f"{k}:{','.join(v[1]).upper()}" if v[1] else k for k, v in table.items())
    if name not in table:
        raise InputError(f"unknown {what} {name!r}; expected one of: {forms}")
    cls, params = table[name]
    try:
        values = [float(v) for v in args.split(",")] if args.strip() else []
    except ValueError:
        raise InputError(f"{what} {spec!r}: parameters must be numbers, as in {forms}") from None
    if cls is Dirichlet and values:
        return Dirichlet(values[0] if len(values) == 1 else tuple(values))
    if not _MIN_ARGS[name] <= len(values) <= len(params):
        raise InputError(
            f"{what} {spec!r} takes {_MIN_ARGS[name]} to {len(params)} parameters "
            f"({', '.join(params) or 'none'}), got {len(values)}"
        )
    return cls(*values)


def parse_prior(spec: str) -> XPrior | Learn:
    """Build a prior on x from its short text form (the CLI's ``--prior``).

    Forms: ``truncnormal:LOC,SCALE[,LOW,HIGH]``, ``uniform[:LOW,HIGH]``, ``beta:A,B``,
    ``dirichlet:ALPHA`` (symmetric) or ``dirichlet:A1,A2,...`` (one per reference),
    ``point_mass:P1,...,PK/CONTINUOUS`` (:class:`PointMassMixture`), and ``learn`` or
    ``learn:FAMILY`` (:func:`learn`).

    Examples
    --------
    >>> from bayesmix.priors import parse_prior
    >>> parse_prior("truncnormal:0.5,0.2")
    TruncatedNormal(loc=0.5, scale=0.2, low=0.0, high=1.0)
    >>> parse_prior("gamma:1,2")
    Traceback (most recent call last):
    ...
    bayesmix._errors.InputError: unknown prior 'gamma'; expected one of: ...
    """
    if isinstance(spec, str):
        name, _, args = spec.strip().partition(":")
        if name.strip().lower() == "learn":
            return Learn(args.strip() or None)
        if name.strip().lower() == "point_mass":
            atoms, slash, cont = args.partition("/")
            try:
                values = tuple(float(v) for v in atoms.split(","))
            except ValueError:
                raise InputError(
                    f"prior {spec!r}: the form is point_mass:P1,...,PK/CONTINUOUS, e.g. "
                    "point_mass:0.2,0.3/truncnormal:0.5,0.2"
                ) from None
            k = len(values)
            default = TruncatedNormal() if k == 2 else Dirichlet(1.0)
            return PointMassMixture(values, parse_prior(cont) if slash else default)
    return _parse(spec, _X_SPECS, "prior")  # type: ignore[return-value]


def parse_sigma_prior(spec: str) -> SigmaPrior:
    """Build a prior on sigma from its short text form: ``jeffreys`` or ``invgamma:ALPHA,BETA``."""
    return _parse(spec, _SIGMA_SPECS, "sigma prior")  # type: ignore[return-value]


def prior_spec(prior: XPrior | SigmaPrior | Learn) -> str:
    """The short text form of a prior: the inverse of :func:`parse_prior` and
    :func:`parse_sigma_prior`.

    Examples
    --------
    >>> from bayesmix.priors import Beta, parse_prior, prior_spec
    >>> prior_spec(Beta(2.0, 3.0))
    'beta:2,3'
    >>> parse_prior(prior_spec(Beta(2.0, 3.0))) == Beta(2.0, 3.0)
    True
    """
    if isinstance(prior, Learn):
        return "learn" if prior.family is None else f"learn:{prior.family}"
    if isinstance(prior, PointMassMixture):
        atoms = ",".join(f"{v!r}".removesuffix(".0") for v in prior.atoms)
        return f"point_mass:{atoms}/{prior_spec(prior.continuous)}"
    if isinstance(prior, Dirichlet):
        return "dirichlet:" + ",".join(
            f"{v!r}".removesuffix(".0") for v in np.atleast_1d(prior.alpha).tolist()
        )
    for name, (cls, params) in {**_X_SPECS, **_SIGMA_SPECS}.items():
        if type(prior) is cls:
            values = ",".join(f"{float(getattr(prior, p))!r}".removesuffix(".0") for p in params)
            return f"{name}:{values}" if values else name
    raise InputError(f"not a bayesmix prior: {prior!r}")
