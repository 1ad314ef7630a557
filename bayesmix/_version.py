"""The package version, in its own module so that nothing needs to import the package root."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bayesmix")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
