"""Which JAX device runs the inference, scoped to a call (JAX's global default is untouched).

``device=None`` keeps JAX's default (a GPU when one is installed and visible, else the CPU).
``"cpu"`` or ``"gpu"`` pick that platform; asking for a GPU that JAX cannot see is an error,
not a silent fallback, so a job never runs 100x slower than its author expects. When the platform
has several devices, the fast path shards the frames across all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax

from bayesmix._errors import InputError

__all__ = ["DEVICES", "on_device", "platform_devices"]

DEVICES = ("cpu", "gpu")


def platform_devices(device: str | None) -> list[Any]:
    """The JAX devices of ``device`` ('cpu', 'gpu', or None for JAX's default platform)."""
    if device is None:
        return list(jax.devices())
    if device not in DEVICES:
        raise InputError(f"device must be one of {DEVICES} or None, got {device!r}")
    try:
        return list(jax.devices(device))
    except RuntimeError:
        seen = sorted({d.platform for d in jax.devices()})
        raise InputError(
            f"device={device!r}: JAX sees no {device.upper()} (it has: {', '.join(seen)}); "
            "install a GPU build of JAX (pip install 'jax[cuda12]') or use device='cpu'"
        ) from None


@contextlib.contextmanager
def on_device(device: str | None) -> Iterator[list[Any]]:
    """Run the enclosed JAX code on ``device``'s platform; yields its devices."""
    devices = platform_devices(device)
    if device is None:
        yield devices
        return
    with jax.default_device(devices[0]):
        yield devices
