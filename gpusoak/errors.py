"""The small exception family of gpusoak.

Every error carries structured fields (bdf, action, path, ...) and builds its message from them.
OSError is translated into this family once, at the boundary where it happens (``from err``).
All of them pickle, so they cross the process boundary of a load child or a write worker.
"""

from __future__ import annotations

import errno
from typing import Any


class GpusoakError(Exception):
    """Base of every error gpusoak raises on purpose."""

    def __init__(self, detail: str = "", **fields: Any) -> None:
        self.detail = detail
        self.fields = {k: v for k, v in fields.items() if v is not None}
        super().__init__(self._message())

    def _message(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.detail} ({where})" if where else self.detail

    def __getattr__(self, name: str) -> Any:
        # bdf, action, path ... read as attributes; absent ones are None.
        if name.startswith("__"):
            raise AttributeError(name)
        return self.__dict__.get("fields", {}).get(name)

    def __reduce__(self):
        return (_rebuild, (type(self), self.detail, self.fields))


def _rebuild(cls: type[GpusoakError], detail: str, fields: dict[str, Any]) -> GpusoakError:
    return cls(detail, **fields)


class InvalidAddress(GpusoakError, ValueError):
    """Text that is not a PCI address; nothing built from it reaches a path."""


class UsageError(GpusoakError):
    """A bad option or argument from the user."""


class NoGpu(GpusoakError):
    """The node shows no GPU to test (and no --devices were named): nothing was tested, so there is
    no verdict, not even retest; `gpusoak run` exits 3."""


class ScenarioError(GpusoakError):
    """A simulated-node scenario file that cannot be used."""


class DeviceGone(GpusoakError):
    """The device vanished: its sysfs directory or its NVML handle is gone."""


class AccessDenied(GpusoakError):
    """The OS or NVML refused: not root, no permission."""


class Hung(GpusoakError):
    """A write or command did not finish before its deadline."""


class WriteFailed(GpusoakError):
    """The kernel rejected a write (the errno is in ``fields``)."""


class Busy(GpusoakError):
    """The kernel said try again (EAGAIN) and still did after a retry: nothing was done, so the
    cycle is skipped with the reason, neither failed nor recovered."""


class SysfsError(GpusoakError):
    """A sysfs read failed for a reason other than absence."""


class CannotLook(GpusoakError):
    """A check could not read what it needs (``path``): it has not passed, and what it guards is
    refused with reason ``cannot_look``."""


class NvmlUnavailable(GpusoakError):
    """NVML cannot be used at all (no library, no driver): NVML checks are skipped with this reason."""


class NvmlFailure(GpusoakError):
    """An NVML call failed in a way that is not "unsupported" (GPU lost, reset required, ...)."""


class JournalError(GpusoakError):
    """The journal could not be written or read (full disk, permissions, corrupt file)."""


def from_oserror(err: OSError, what: str, **fields: Any) -> GpusoakError:
    """Translate an OSError into the family; ``what`` says what was being done."""
    code = err.errno
    name = errno.errorcode.get(code or 0, str(code))
    detail = f"{what}: {err.strerror or err} [{name}]"
    if code in (errno.EACCES, errno.EPERM):
        return AccessDenied(detail, **fields)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return DeviceGone(detail, **fields)
    return WriteFailed(detail, errno=name, **fields)
