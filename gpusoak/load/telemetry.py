"""What the GPU reported while the load ran: power, SM clock, temperature, utilisation (NVML).

Sampled by the load child, a thread beside the load, never by the soak: the child holds the GPU
anyway (its CUDA context), so its NVML handle costs nothing, while the soak must hold no device file
across its resets (gpusoak/host/nvml.py). The GPU is taken by PCI bus id
(nvmlDeviceGetHandleByPciBusId), which attaches that GPU alone. Each reading that NVML cannot give
(NVML_ERROR_NOT_SUPPORTED on a part, no permission) is left out and named; NVML missing altogether
is a value with its reason, never the load's failure.

NVML's units (nvml.h): nvmlDeviceGetPowerUsage milliwatts; nvmlDeviceGetClockInfo(NVML_CLOCK_SM)
MHz; nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU) degrees C; nvmlDeviceGetUtilizationRates:
percent of the last sample period (1 s to 1/6 s, per product) in which a kernel ran (``gpu``) and
in which device memory was read or written (``memory``).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from gpusoak.model import PciAddress

NVML_CLOCK_SM = 1  # nvml.h nvmlClockType_t
NVML_TEMPERATURE_GPU = 0  # nvml.h nvmlTemperatureSensors_t
READINGS = ("power_w", "sm_clock_mhz", "temperature_c", "utilisation_pct", "memory_utilisation_pct")


class Sampler:
    """``with Sampler(lib, bdf, period_s) as s: ...`` then ``s.summary()``. ``lib`` is pynvml or a
    pynvml-compatible object (the simulator's); None means NVML could not be had (``why``)."""

    def __init__(self, lib: Any, bdf: PciAddress, period_s: float = 0.5, why: str | None = None) -> None:
        self.lib, self.bdf, self.period_s = lib, bdf, period_s
        self.samples: dict[str, list[float]] = {name: [] for name in READINGS}
        self.missing: dict[str, str] = {}
        self.why = why
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None

    def __enter__(self) -> Sampler:
        if self.lib is None:
            return self
        try:
            self.lib.nvmlInit()
            self._handle = self.lib.nvmlDeviceGetHandleByPciBusId(self.bdf.nvml_bus_id)
        except Exception as err:  # noqa: BLE001 - any NVML failure means "could not sample"
            self.why = f"NVML could not give the GPU: {type(err).__name__}: {err}"
            self._shutdown()
            return self
        self.sample()  # one reading before the load, whatever happens next
        self._thread = threading.Thread(target=self._run, name="gpusoak-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._handle is not None:
            self.sample()
        self._shutdown()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def _shutdown(self) -> None:
        if self.lib is not None:
            try:
                self.lib.nvmlShutdown()
            except Exception:  # noqa: BLE001, S110 - nothing was initialised, or it is already gone
                pass

    def sample(self) -> None:
        lib, h = self.lib, self._handle
        reads = {
            "power_w": lambda: lib.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "sm_clock_mhz": lambda: float(lib.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM)),
            "temperature_c": lambda: float(lib.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU)),
            "utilisation_pct": lambda: float(lib.nvmlDeviceGetUtilizationRates(h).gpu),
            "memory_utilisation_pct": lambda: float(lib.nvmlDeviceGetUtilizationRates(h).memory),
        }
        for name, read in reads.items():
            if name in self.missing:
                continue
            try:
                self.samples[name].append(read())
            except Exception as err:  # noqa: BLE001 - not supported on this part, or no permission
                self.missing[name] = f"{type(err).__name__}: {err}"

    def summary(self) -> dict[str, Any]:
        """Per reading: samples, mean, max (min for the clock: a throttled clock is the finding)."""
        if self._handle is None:
            return {"unavailable": self.why or "NVML was not asked"}
        out: dict[str, Any] = {"period_s": self.period_s, "missing": dict(self.missing)}
        for name, values in self.samples.items():
            if values:
                out[name] = {"samples": len(values), "mean": round(statistics.fmean(values), 2),
                             "max": round(max(values), 2), "min": round(min(values), 2)}
        return out


def nvml_library() -> tuple[Any, str | None]:
    """pynvml, or None and why (nvidia-ml-py not installed)."""
    try:
        import pynvml
    except ImportError as err:
        return None, f"nvidia-ml-py is not installed: {err}"
    return pynvml, None


def wait_one_period(period_s: float) -> None:
    """For tests: long enough that the sampler thread has read at least once more."""
    time.sleep(period_s * 2.5)
