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
from dataclasses import dataclass

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
    "SigmaPrior",
    "TruncatedNormal",
    "Uniform",
    "XPrior",
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


def _register_pytree(cls: type, fields: tuple[str, ...]) -> None:
    """Register a prior as a pytree whose leaves are its parameters: jitted code then takes the
    prior as a traced argument (its type, not its numbers, selects the compiled program), and
    ``log_prob`` runs on traced parameters. Unflattening skips validation, which already ran."""

    def flatten(prior: object) -> tuple[tuple[object, ...], None]:
        return tuple(getattr(prior, f) for f in fields), None

    def unflatten(_: None, leaves: tuple[object, ...]) -> object:
        obj = object.__new__(cls)
        for f, v in zip(fields, leaves, strict=True):
            object.__setattr__(obj, f, v)
        return obj

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)


_register_pytree(TruncatedNormal, ("loc", "scale", "low", "high"))
_register_pytree(Uniform, ("low", "high"))
_register_pytree(Beta, ("a", "b"))
_register_pytree(Dirichlet, ("alpha",))

XPrior = TruncatedNormal | Uniform | Beta | Dirichlet
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
    if not isinstance(prior, (TruncatedNormal, Uniform, Beta, Dirichlet)):
        raise InputError(
            f"prior must be one of TruncatedNormal, Uniform, Beta, Dirichlet (from "
            f"bayesmix.priors), got {type(prior).__name__}"
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


def parse_prior(spec: str) -> XPrior:
    """Build a prior on x from its short text form (the CLI's ``--prior``).

    Forms: ``truncnormal:LOC,SCALE[,LOW,HIGH]``, ``uniform[:LOW,HIGH]``, ``beta:A,B``,
    ``dirichlet:ALPHA`` (symmetric) or ``dirichlet:A1,A2,...`` (one per reference).

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
    return _parse(spec, _X_SPECS, "prior")  # type: ignore[return-value]


def parse_sigma_prior(spec: str) -> SigmaPrior:
    """Build a prior on sigma from its short text form: ``jeffreys`` or ``invgamma:ALPHA,BETA``."""
    return _parse(spec, _SIGMA_SPECS, "sigma prior")  # type: ignore[return-value]


def prior_spec(prior: XPrior | SigmaPrior) -> str:
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
    if isinstance(prior, Dirichlet):
        return "dirichlet:" + ",".join(
            f"{v!r}".removesuffix(".0") for v in np.atleast_1d(prior.alpha).tolist()
        )
    for name, (cls, params) in {**_X_SPECS, **_SIGMA_SPECS}.items():
        if type(prior) is cls:
            values = ",".join(f"{float(getattr(prior, p))!r}".removesuffix(".0") for p in params)
            return f"{name}:{values}" if values else name
    raise InputError(f"not a bayesmix prior: {prior!r}")
