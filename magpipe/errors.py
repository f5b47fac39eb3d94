"""Every exception and warning magpipe raises.

Each error also subclasses a built-in, so callers can catch either the specific
magpipe error or the built-in one (``ValueError``, ``OSError``).
"""

from __future__ import annotations


class MagpipeError(Exception):
    """Base of every magpipe error."""


class ConfigError(MagpipeError, ValueError):
    """A configuration value is invalid or inconsistent."""


class InputError(MagpipeError, ValueError):
    """Bad user input: the message names the file and the problem."""


class DataValidationError(InputError):
    """The data can be read but cannot be used (wrong dims, no valid cells, ...)."""


class CRSMismatchError(DataValidationError):
    """Two inputs are on grids or coordinate systems that cannot be matched."""


class StorageError(MagpipeError, OSError):
    """An output store cannot be written or is locked by another run."""


class DeviceError(MagpipeError, RuntimeError):
    """Work was asked of a device (a GPU) that is not there: none visible, or no worker declares one."""


class OrchestrationError(MagpipeError, RuntimeError):
    """A remote stage (a deployment run, a cluster) did not finish."""
