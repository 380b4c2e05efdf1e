"""The XID catalog as data.

Source: NVIDIA, "Analyzing Xid Errors with the Xid Catalog" (Xid-Catalog.xlsx, sheets "Xids" and
"Fault Resolution Buckets"), as transcribed in shared/reference/gpu-reset-reference.md section 1.
``action`` is the catalog's automatable "Immediate Action" bucket. Which XIDs fail a reset cycle is
decided here, in ``fails_cycle``, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

RESTART_APP = "RESTART_APP"
RESET_GPU = "RESET_GPU"
RESTART_BM = "RESTART_BM"
CHECK_MECHANICALS = "CHECK_MECHANICALS"
IGNORE = "IGNORE"
CONTACT_SUPPORT = "CONTACT_SUPPORT"
WORKFLOW_XID_45 = "WORKFLOW_XID_45"
WORKFLOW_XID_48 = "WORKFLOW_XID_48"
WORKFLOW_NVLINK_ERR = "WORKFLOW_NVLINK_ERR"
WORKFLOW_NVLINK5_ERR = "WORKFLOW_NVLINK5_ERR"
XID_154 = "XID_154"


@dataclass(frozen=True)
class XidEntry:
    xid: int
    mnemonic: str
    description: str
    action: str  # Immediate Action bucket
    severity: str  # gpusoak's: "info" (app-level or informational), "reset" (needs a GPU reset), "reboot"


def _e(xid: int, mnemonic: str, description: str, action: str) -> XidEntry:
    return XidEntry(xid, mnemonic, description, action, _severity(xid, action))


def _severity(xid: int, action: str) -> str:
    if action == RESTART_BM:
        return "reboot"
    if action in (RESTART_APP, IGNORE, WORKFLOW_XID_45, XID_154):
        # XID 45 is logged for the channels torn down by a GPU reset itself; 154 only summarises
        # other XIDs (the recovery action it announces is read from NVML).
        return "info"
    return "reset"


CATALOG: dict[int, XidEntry] = {e.xid: e for e in (
    _e(8, "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", "GPU stopped processing", RESTART_APP),
    _e(13, "ROBUST_CHANNEL_GR_EXCEPTION", "Graphics Engine Exception", RESTART_APP),
    _e(31, "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", "GPU memory page fault", RESTART_APP),
    _e(32, "ROBUST_CHANNEL_PBDMA_ERROR", "Invalid or corrupted push buffer stream", RESTART_APP),
    _e(38, "ROBUST_CHANNEL_FECS_ERR_WATCHDOG_TIMEOUT", "Driver firmware error", IGNORE),
    _e(43, "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", "GPU stopped processing", IGNORE),
    _e(45, "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL", "Preemptive cleanup", WORKFLOW_XID_45),
    _e(48, "ROBUST_CHANNEL_GPU_ECC_DBE", "Double Bit ECC", WORKFLOW_XID_48),
    _e(54, "SILENT_RUNNING_PWR_REDUCED_CLOCKING", "Aux power not connected", CHECK_MECHANICALS),
    _e(56, "DISPLAY_CHANNEL_EXCEPTION", "Unused on A100-GB200", CONTACT_SUPPORT),
    _e(57, "FB_LINK_TRAINING_FAILURE_ERROR", "Unused", CONTACT_SUPPORT),
    _e(61, "PMU_BREAKPOINT", "Unused", CONTACT_SUPPORT),
    _e(62, "PMU_HALT_ERROR", "Internal micro-controller halt", RESET_GPU),
    _e(63, "INFOROM_DRAM_RETIREMENT_EVENT", "GPU memory remapping event", IGNORE),
    _e(64, "INFOROM_DRAM_RETIREMENT_FAILURE", "GPU memory remapping failure", RESET_GPU),
    _e(68, "ROBUST_CHANNEL_NVDEC0_ERROR", "NVDEC0 Exception", RESTART_APP),
    _e(69, "ROBUST_CHANNEL_GR_CLASS_ERROR", "Graphics Engine class error", RESTART_APP),
    _e(74, "NVLINK_ERROR", "NVLINK Error", WORKFLOW_NVLINK_ERR),
    _e(79, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "GPU has fallen off the bus", RESTART_BM),
    _e(92, "EXCESSIVE_SBE_INTERRUPTS", "High SBE rate", IGNORE),
    _e(94, "ROBUST_CHANNEL_CONTAINED_ERROR", "Contained memory error", RESTART_APP),
    _e(95, "ROBUST_CHANNEL_UNCONTAINED_ERROR", "Uncontained memory error", RESET_GPU),
    _e(109, "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "Context Switch Timeout", RESET_GPU),
    _e(110, "SEC_FAULT_ERROR", "Security Fault", RESET_GPU),
    _e(119, "GSP_RPC_TIMEOUT", "GSP RPC Timeout", RESET_GPU),
    _e(120, "GSP_ERROR", "GSP Error", RESET_GPU),
    _e(121, "C2C_ERROR", "C2C Error", IGNORE),
    _e(123, "SPI_PMU_RPC_WRITE_FAIL", "Unused", CONTACT_SUPPORT),
    _e(136, "ALI_TRAINING_FAIL", "Link Training Failed", RESET_GPU),
    _e(140, "UNRECOVERABLE_ECC_ERROR_ESCAPE", "ECC Unrecovered Error", RESET_GPU),
    _e(143, "GPU_INIT_ERROR", "GPU Initialization Error", RESET_GPU),
    _e(144, "NVLINK_SAW_ERROR", "NVLINK: SAW unit error", WORKFLOW_NVLINK5_ERR),
    _e(145, "NVLINK_RLW_ERROR", "NVLINK: RLW unit error", WORKFLOW_NVLINK5_ERR),
    _e(146, "NVLINK_TLW_ERROR", "NVLINK: TLW unit error", WORKFLOW_NVLINK5_ERR),
    _e(147, "NVLINK_TREX_ERROR", "NVLINK: TREX unit error", WORKFLOW_NVLINK5_ERR),
    _e(148, "NVLINK_NVLPW_CTRL_ERROR", "NVLINK: NVLPW_CTRL unit error", WORKFLOW_NVLINK5_ERR),
    _e(149, "NVLINK_NETIR_ERROR", "NVLINK: NETIR unit error", WORKFLOW_NVLINK5_ERR),
    _e(150, "NVLINK_MSE_ERROR", "NVLINK: MSE unit error", WORKFLOW_NVLINK5_ERR),
    _e(154, "GPU_RECOVERY_ACTION_CHANGED", "Recovery action changed", XID_154),
    _e(155, "NVLINK_SW_DEFINED_ERROR", "NVLink software-defined error", RESET_GPU),
    _e(156, "RESOURCE_RETIREMENT_EVENT", "Resource retirement event", RESET_GPU),
    _e(157, "RESOURCE_RETIREMENT_FAILURE", "Resource retirement failure", IGNORE),
    _e(158, "GPU_FATAL_TIMEOUT", "GPU fatal timeout", RESET_GPU),
)}


def lookup(xid: int) -> XidEntry | None:
    return CATALOG.get(xid)


def fails_cycle(xid: int) -> bool:
    """Does this XID, seen after a reset began, mean the GPU did not come back healthy?

    Catalog severities "reset" and "reboot" fail; application-level and informational ones do not.
    An XID missing from the catalog fails too: like NVIDIA's k8s-device-plugin, which marks a GPU
    unhealthy on any XID outside its ignore list, an unknown code is not assumed harmless.
    """
    entry = CATALOG.get(xid)
    return entry is None or entry.severity != "info"
