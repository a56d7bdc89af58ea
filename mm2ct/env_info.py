"""``mm2ct env``: versions, devices, which selective-scan backends can run here, and the CUDA kernels beside them."""
from __future__ import annotations

import importlib
import os
import platform
import sys


def _version(name: str) -> str:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - mamba_ssm raises all kinds of errors without CUDA
        return f"not usable ({type(e).__name__})" if not isinstance(e, ImportError) else "not installed"
    return str(getattr(mod, "__version__", "installed"))


def report() -> dict[str, object]:
    """Everything `mm2ct env` prints, as a dict (the notebooks show it too)."""
    import torch

    from mm2ct import __version__
    from mm2ct.ops import available_backends, cuda_kernels

    info: dict[str, object] = {
        "mm2ct": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for pkg in ("torch", "numpy", "scipy", "nibabel", "pydicom", "skimage", "matplotlib", "papermill",
                "mamba_ssm", "causal_conv1d"):
        info[pkg] = _version(pkg)
    info["cuda"] = torch.cuda.is_available()
    info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    kernels = cuda_kernels.status()  # the scan kernel is the "cuda" backend; the other two sit beside it
    info["scan_backends"] = {**available_backends(), "causal_conv1d": kernels["causal_conv1d"],
                             "mamba_inner": kernels["mamba_inner"]}
    return info


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    info = report()
    if args.json:
        import json

        print(json.dumps(info, indent=2, default=str))
        return 0
    backends = info.pop("scan_backends")
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {v}")
    print("selective-scan backends, and the CUDA kernels beside them (causal conv, fused mixer):")
    width = max(len(name) for name in backends)
    for name, (ok, why) in backends.items():
        print(f"  {name:<{width}} {'yes' if ok else 'no '}  {why}")
    return 0
