"""Idle BLAS threads that would compete with the statistics pass for the cores.

After each multithreaded call, OpenBLAS (numpy's and scipy's BLAS) keeps its worker threads
spinning for about 2^28 cycles (~0.1 s) in case another call follows. A pass over the pixels
started in that window shares its cores with the spinners: on 2 cores, measured after a
``frames @ d`` of the same data, the pass took 1.9x its time alone (17 ms instead of 9 ms on
20,000 frames of 64x64). Before a large pass, the spinning pools are shut down with OpenBLAS's
own ``blas_thread_shutdown_`` (what OpenBLAS itself calls before a ``fork``); OpenBLAS starts
them again at its next multithreaded call (~0.1 ms). The number of threads is not changed.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

__all__ = ["quiet_blas_threads"]

#: Passes over fewer bytes than this are too short for the spinners to matter.
MIN_BYTES = 16 * 2**20

_LIBS: dict[str, Any] = {}


def _openblas_shutdowns() -> list[Any]:
    """``blas_thread_shutdown_`` of every OpenBLAS already loaded in this process (Linux)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line and ".so" in line}
    except OSError:
        return []
    out = []
    for path in sorted(paths):
        if path not in _LIBS:
            fn = None
            try:
                # RTLD_NOLOAD: only a library that is loaded already, never a new one.
                lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
                fn = getattr(lib, "blas_thread_shutdown_", None)
            except (OSError, AttributeError):
                fn = None
            _LIBS[path] = fn
        if _LIBS[path] is not None:
            out.append(_LIBS[path])
    return out


def quiet_blas_threads(n_bytes: int) -> int:
    """Stop OpenBLAS's spinning worker threads before a pass over ``n_bytes`` of frames.

    Returns how many BLAS libraries were told to (0 on other platforms or BLAS libraries, or for
    a pass too small to matter). ``BAYESMIX_KEEP_BLAS_THREADS=1`` turns this off.
    """
    if n_bytes < MIN_BYTES or not sys.platform.startswith("linux"):
        return 0
    if os.environ.get("BAYESMIX_KEEP_BLAS_THREADS", "") not in ("", "0"):
        return 0
    fns = _openblas_shutdowns()
    for fn in fns:
        fn()
    return len(fns)
