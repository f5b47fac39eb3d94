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


class StoreUnavailableError(StorageError):
    """A store could not be reached or read for now (a timeout, a dropped connection, a 5xx of a bucket):
    the same request may succeed later, so it is worth a retry."""


class DeviceError(MagpipeError, RuntimeError):
    """Work was asked of a device (a GPU) that is not there: none visible, or no worker declares one."""


class OrchestrationError(MagpipeError, RuntimeError):
    """A remote stage (a deployment run, a cluster) did not finish."""


# errnos of a network or a device that may answer on the next try
_TRANSIENT_ERRNOS = {"EAGAIN", "EIO", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EHOSTUNREACH",
                     "ENETUNREACH", "ENETDOWN", "EPIPE"}
# exceptions of the storage and cluster libraries that mean "not now" rather than "never"
_TRANSIENT_NAMES = {"KilledWorker", "CommClosedError", "StreamClosedError", "ClientConnectionError",
                    "ServerDisconnectedError", "ServerTimeoutError", "ClientOSError", "EndpointConnectionError",
                    "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}


def is_transient(exc: BaseException) -> bool:
    """True for a failure a retry may cure: a store or network that did not answer (StoreUnavailableError, a
    timeout, a reset connection), a Dask worker lost. False for everything else: bad input, bad config, a
    refused lock, a bug. Flows retry only these (:func:`flows._common.retry_if_transient`)."""
    import errno

    if isinstance(exc, StoreUnavailableError):
        return True
    if isinstance(exc, MagpipeError):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if any(type(e).__name__ in _TRANSIENT_NAMES for e in (exc, exc.__cause__, exc.__context__) if e is not None):
        return True
    return isinstance(exc, OSError) and exc.errno is not None and errno.errorcode.get(exc.errno) in _TRANSIENT_ERRNOS
