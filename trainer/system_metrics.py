"""MLflow's own system metrics for a training run, restricted to the GPU the run uses.

MLflow's `SystemMetricsMonitor` samples CPU, memory, disk and network (psutil) and, when `pynvml`
(nvidia-ml-py) is installed and a GPU is present, every GPU of the machine. A run trains on one device, so
the GPU monitor is narrowed to that device (matched by UUID, which survives CUDA_VISIBLE_DEVICES
renumbering); its metrics read `system/gpu_0_*` for the run's own GPU.
"""

from __future__ import annotations

import logging

_logger = logging.getLogger(__name__)


def _narrow_gpus(monitor, gpu: int | None) -> None:
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    gpus = [m for m in monitor.monitors if isinstance(m, GPUMonitor)]
    if not gpus:
        return
    if gpu is None:  # a CPU run reports no GPU, even on a machine that has some
        monitor.monitors = [m for m in monitor.monitors if not isinstance(m, GPUMonitor)]
        return
    import pynvml
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(gpu).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception as err:  # an older driver, a MIG slice: fall back to the CUDA index
        _logger.info("GPU %s by UUID failed (%s): using NVML index %s", gpu, err, gpu)
        handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
    for m in gpus:
        m.gpu_handles, m.num_gpus = [handle], 1


def start_monitor(run_id: str, tracking_uri: str, interval: float, gpu: int | None = None):
    """Start MLflow's SystemMetricsMonitor on `run_id` (sampling every `interval` s); None if it cannot run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval, resume_logging=True, tracking_uri=tracking_uri
        )
        _narrow_gpus(monitor, gpu)
        monitor.start()
        return monitor
    except Exception as err:  # psutil missing, ...: training goes on without system metrics
        _logger.warning("system metrics are off for run %s: %s", run_id, err)
        return None
