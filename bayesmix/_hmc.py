"""NUTS compiled once: NumPyro's NUTS kernel driven by one jitted program per model and options.

``numpyro.infer.MCMC`` builds new closures (potential, kernels, loop bodies) on every ``run``, so
each call compiles a new program; JAX keeps every one of them (about 400 memory mappings each),
and a process that samples in a loop dies after ~170 calls. Here the whole run (initialisation,
warm-up, sampling, the model's deterministic sites) is one function of the data, the starting
point and the key, built once per (model, chain count, lengths, chain method, target) and jitted:
a call with new data of the same shapes reuses the compiled program. A new shape (another number
of frames) compiles once more; the compiled programs of recent shapes are kept (JAX's cache).
Frames are not padded to buckets as in the fast path: padded frames would be latent variables
of the sampler, changing its adaptation and its draws.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix._precision import x64

#: Fields of NumPyro's HMCState kept per draw (the ArviZ sample_stats).
EXTRA_FIELDS = (
    "diverging",
    "num_steps",
    "energy",
    "accept_prob",
    "adapt_state.step_size",
    "potential_energy",
)

#: Progress is reported about this many times per chain.
_PROGRESS_UPDATES = 50

#: The progress bar of the running call (callbacks arrive on JAX's threads, not the caller's).
_BAR: list[Any] = [None]


def _tick(n: Any) -> None:
    bar = _BAR[0]
    if bar is not None:
        bar.update(int(n))


def _field(state: Any, name: str) -> Any:
    for part in name.split("."):
        state = getattr(state, part)
    return state


@functools.lru_cache(maxsize=64)
def _program(func: Callable, static: tuple, num_chains: int, num_warmup: int, num_samples: int,
             method: str, target_accept: float) -> Callable:  # fmt: skip
    """The compiled-once run of ``func(*args, **dict(static))``: ``run(key, init, args)`` with
    ``init`` the unconstrained starting values (leading chain axis) returns the model's sites and
    deterministic sites per draw and the extra fields, each (chain, draw, ...)."""
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import initialize_model

    model = partial(func, **dict(static))
    total = num_warmup + num_samples
    every = max(1, total // _PROGRESS_UPDATES)

    def progress(i: Any) -> None:
        # The loop index is not batched over chains, so the branch stays a branch.
        jax.lax.cond((i + 1) % every == 0, lambda: jax.debug.callback(_tick, every),
                     lambda: None)  # fmt: skip

    def one_chain(key: Any, z0: Any, args: tuple) -> tuple[dict, dict]:
        k_model, k_run = jax.random.split(key)
        _, pe_gen, post_gen, _ = initialize_model(k_model, model, model_args=args,
                                                  dynamic_args=True)  # fmt: skip
        init_kernel, sample_kernel = hmc(potential_fn_gen=pe_gen, algo="NUTS")
        state = init_kernel(z0, num_warmup, target_accept_prob=target_accept,
                            trajectory_length=None, model_args=args, rng_key=k_run)  # fmt: skip
        post = post_gen(*args)

        def record(st: Any) -> tuple[dict, dict]:
            return post(st.z), {f: _field(st, f) for f in EXTRA_FIELDS}

        # One loop for warm-up and sampling (one copy of the NUTS kernel to compile, as
        # NumPyro's fori_collect): draws after the warm-up are written into a buffer.
        buf = jax.tree.map(lambda a: jnp.zeros((num_samples, *a.shape), a.dtype),
                           jax.eval_shape(record, state))  # fmt: skip

        def step(i: Any, carry: tuple[Any, Any]) -> tuple[Any, Any]:
            st, out = carry
            progress(i)
            st = sample_kernel(st, model_args=args)
            j = jnp.maximum(i - num_warmup, 0)
            out = jax.lax.cond(
                i >= num_warmup,
                lambda o: jax.tree.map(lambda a, v: a.at[j].set(v), o, record(st)),
                lambda o: o,
                out,
            )
            return st, out

        return jax.lax.fori_loop(0, total, step, (state, buf))[1]

    if method == "parallel":
        return jax.pmap(one_chain, in_axes=(0, 0, None))
    if method == "sequential":
        return jax.jit(lambda keys, z0, args: jax.lax.map(lambda kz: one_chain(*kz, args),
                                                          (keys, z0)))  # fmt: skip
    return jax.jit(jax.vmap(one_chain, in_axes=(0, 0, None)))


def _static_parts(model_fn: Callable) -> tuple[Callable, tuple]:
    if isinstance(model_fn, partial):
        if model_fn.args:
            raise TypeError("pass the model's static options as keywords of functools.partial")
        return model_fn.func, tuple(sorted(model_fn.keywords.items()))
    return model_fn, ()


def run_nuts(model_fn: Callable, args: tuple, init: dict[str, np.ndarray], *, num_chains: int,
             num_warmup: int, num_samples: int, method: str, dtype: str, target_accept: float,
             progress: bool, seed: int) -> tuple[dict, dict, float]:  # fmt: skip
    """NUTS on ``model_fn(*args)`` from ``init`` (unconstrained values, leading chain axis).

    ``model_fn`` is a module-level NumPyro model or a ``functools.partial`` of one whose keywords
    are its static (hashable) options; the arrays of ``args`` are cast to ``dtype`` and traced.
    ``method`` is 'vectorized', 'sequential' or 'parallel' (the caller resolves 'auto').
    Returns the draws and extra fields (numpy, (chain, draw, ...), draws in float64) and the
    seconds the run took (a first call of a shape includes its compilation).
    """
    func, static = _static_parts(model_fn)
    run = _program(func, static, int(num_chains), int(num_warmup), int(num_samples), method,
                   float(target_accept))  # fmt: skip
    scope = x64() if dtype == "float64" else contextlib.nullcontext()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(num_chains) * (int(num_warmup) + int(num_samples)),
                   desc=f"NUTS, {num_chains} chain(s)", unit="it")  # fmt: skip
    with scope:
        ft = jnp.float64 if dtype == "float64" else jnp.float32
        args = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64), ft), args)
        z0 = {k: jnp.asarray(np.asarray(v, np.float64), ft) for k, v in init.items()}
        keys = jax.random.split(jax.random.PRNGKey(seed), int(num_chains))
        _BAR[0] = bar
        t0 = time.perf_counter()
        try:
            draws, extra = run(keys, z0, args)
            jax.block_until_ready((draws, extra))
            jax.effects_barrier()
        finally:
            _BAR[0] = None
            if bar is not None:
                bar.update(bar.total - bar.n)
                bar.close()
        seconds = time.perf_counter() - t0
        draws = {k: np.asarray(v, np.float64) for k, v in draws.items()}
        extra = {k: np.asarray(v) for k, v in extra.items()}
    return draws, extra, seconds
