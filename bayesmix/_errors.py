"""The error class of bad input.

Every problem with what the user passed (data, references, options, files) is raised as
:class:`InputError`, a :class:`ValueError` subclass, so ``except ValueError`` still catches it.
The command line exits with status 2 on these only: any other exception is a bug in bayesmix or
in a library below it, and is shown with its traceback (exit status 1).
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input: the message says what was expected, what was received, and how to fix it.

    Examples
    --------
    >>> import numpy as np, bayesmix
    >>> try:
    ...     bayesmix.fit_map(np.zeros((0, 4)), np.ones(4), np.zeros(4))
    ... except bayesmix.InputError as exc:
    ...     print(type(exc).__mro__[1].__name__)
    ValueError
    """
