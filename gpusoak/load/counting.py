"""A counting stand-in for cupy, over numpy: what "no host work inside a batch" means, checked
on a machine without a GPU.

``module()`` gives an array module (the ``xp`` the load's code takes) and a ``Backend``. Its arrays
behave like cupy's where it matters to the load:

- they live "on the device": turning one into a host value (``int``, ``float``, ``bool``,
  ``item``, ``tolist``, ``get``) is a **transfer**, counted. (``np.asarray`` on one is the one
  way out it cannot see: numpy takes a subclass's memory without asking it. cupy raises
  TypeError there, so code that did it would fail on the GPU path at once.)
- mixing one with a plain numpy array in an operation raises TypeError, as cupy refuses a
  ``numpy.ndarray`` operand;
- the backend's ``fetch`` is a transfer and its ``wait``/``sync`` a **synchronisation**, counted.

The load's tests run a whole window through it and assert how many transfers and
synchronisations a batch makes (tests/load/test_counting.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpusoak.load.checks import HostBackend


@dataclass
class Tally:
    transfers: int = 0  # device -> host
    syncs: int = 0
    uploads: int = 0  # host -> device


class DeviceArray(np.ndarray):
    """A numpy array that counts every way of reading it on the host (``_tally`` is set per module)."""

    _tally: Tally = Tally()

    def __array_wrap__(self, arr, context=None, return_scalar=False):  # noqa: ARG002 - numpy's signature
        # Keep 0-d results as device arrays: a reduction's value stays on the device until read.
        return np.asarray(arr).view(type(self))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for x in inputs:
            if isinstance(x, np.ndarray) and not isinstance(x, DeviceArray) and x.ndim > 0:
                raise TypeError(f"a host numpy array given to {ufunc.__name__} with a device array "
                                "(cupy refuses it: move it with xp.asarray)")
        plain = [x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, DeviceArray) else o for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        return _wrap(type(self), result)

    def _read(self) -> np.ndarray:
        type(self)._tally.transfers += 1
        return self.view(np.ndarray)

    def __int__(self) -> int:
        return int(self._read())

    def __float__(self) -> float:
        return float(self._read())

    def __bool__(self) -> bool:
        return bool(self._read())

    def __index__(self) -> int:
        return int(self._read())

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()

    def get(self, *args, **kwargs):  # noqa: ARG002 - cupy's device-to-host copy
        return self._read().copy()

    def argmax(self, *args, **kwargs):
        return _wrap(type(self), self.view(np.ndarray).argmax(*args, **kwargs))


def _wrap(cls: type, result: Any) -> Any:
    if isinstance(result, tuple):
        return tuple(_wrap(cls, r) for r in result)
    if isinstance(result, np.ndarray) and not isinstance(result, cls):
        return result.view(cls)
    if isinstance(result, np.generic):
        return np.asarray(result).view(cls)
    return result


class _Module:
    """numpy's namespace, every array it returns a device array; ``asarray`` of host data counts
    as an upload."""

    def __init__(self, cls: type, tally: Tally) -> None:
        self._cls, self._tally = cls, tally

    def asarray(self, x, dtype=None):
        if not isinstance(x, DeviceArray):
            self._tally.uploads += 1
        return np.asarray(x.view(np.ndarray) if isinstance(x, DeviceArray) else x, dtype=dtype).view(self._cls)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, type):
            return attr  # dtypes, constants, scalar types

        def call(*args, **kwargs):
            return _wrap(self._cls, attr(*args, **kwargs))

        return call


class CountingBackend(HostBackend):
    """HostBackend whose device is the counting module's: fetch, wait and sync are counted."""

    def __init__(self, xp: Any, tally: Tally) -> None:
        super().__init__(xp)
        self.tally = tally
        self.name = "cpu (counting numpy)"

    def fetch(self, arr: Any, after: Any = None) -> np.ndarray:  # noqa: ARG002
        self.tally.transfers += 1
        return np.array(arr.view(np.ndarray) if isinstance(arr, DeviceArray) else arr)

    def wait(self, event: Any) -> None:  # noqa: ARG002
        self.tally.syncs += 1

    def sync(self) -> None:
        self.tally.syncs += 1


def module() -> tuple[Any, CountingBackend, Tally]:
    """A fresh counting module: (xp, backend, tally)."""
    tally = Tally()
    cls = type("CountedArray", (DeviceArray,), {"_tally": tally})
    xp = _Module(cls, tally)
    return xp, CountingBackend(xp, tally), tally
