"""The check's first section: the device, its memory, the torch, CUDA and driver versions, its bf16 peak."""

from __future__ import annotations

import platform
import subprocess

import torch

from bench.gpu_check.common import Plan, Row

# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; the first name found in the device's wins.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def environment(plan: Plan) -> list[Row]:
    rows = [
        Row("environment", "torch", torch.__version__),
        Row("environment", "python", platform.python_version()),
    ]
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        rows += [
            Row("environment", "device", f"{torch.cuda.device_count()} x {props.name}"),
            Row("environment", "device memory", f"{props.total_memory / 1024**3:.1f} GiB"),
            Row("environment", "CUDA (torch build)", str(torch.version.cuda)),
            Row("environment", "driver", nvidia_driver()),
            Row("environment", "bf16 dense peak", peak_label(plan.peak_tflops or known_peak(props.name))),
        ]
    else:
        rows.append(Row("environment", "device", f"CPU, {torch.get_num_threads()} threads ({platform.machine()})"))
    return rows


def nvidia_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi did not answer)"
    return out.stdout.strip().splitlines()[0]


def known_peak(device_name: str) -> float | None:
    return next((tflops for name, tflops in BF16_PEAK_TFLOPS.items() if name in device_name), None)


def peak_label(tflops: float | None) -> str:
    return f"{tflops:g} TFLOP/s" if tflops else "unknown: pass --peak-tflops for MFU"
