"""The optional CUDA kernels (docs/method.md §6.2): mamba-ssm's selective scan and fused Mamba inner function, and
causal-conv1d's depthwise causal convolution, each imported once per process.

Importing them can fail in many ways, and every one means "unavailable" (the reason is kept for ``mm2ct env``):
not installed; installed without the compiled extension (recent mamba-ssm imports ``selective_scan_cuda`` guarded,
installs it only on request, and fails only when the scan is called, so the extension is imported here explicitly);
causal-conv1d imports ``causal_conv1d_cuda`` unguarded and raises ImportError (or OSError for a missing CUDA runtime
library); an extension built for another torch raises on import. Hence ``try/except Exception`` around each import.

The kernels take float32, float16 or bfloat16 inputs on CUDA (csrc/selective_scan/selective_scan.cpp,
causal-conv1d's csrc/causal_conv1d.cpp); the selective scan needs N <= 256, the causal conv a width of 2 to 4.
"""
from __future__ import annotations

import functools

import torch

DEVICE_TYPE = "cuda"  # the device type the kernels run on (tests point it at "cpu" with stand-in kernels)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CONV_WIDTHS = (2, 3, 4)
MAX_STATE = 256
EXTENSIONS = {  # compiled module -> how to get it
    "selective_scan_cuda": "recent mamba-ssm builds it only with MAMBA_KEEP_CUDA_BUILD=TRUE pip install "
                           "--no-build-isolation mamba-ssm",
    "causal_conv1d_cuda": "reinstall with pip install --no-build-isolation causal-conv1d on a CUDA machine",
}


def _reason(package: str, e: Exception) -> str:
    """One line: "<package> not installed", "<package> installed without its CUDA extension ...", or "<package> not
    usable: <error>"."""
    if isinstance(e, ModuleNotFoundError) and e.name == package:
        return f"{package} not installed"
    if isinstance(e, ModuleNotFoundError) and e.name in EXTENSIONS:
        return f"{package} installed without its CUDA extension {e.name} ({EXTENSIONS[e.name]})"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{package} not usable: {type(e).__name__}: {first}"[:300]


@functools.lru_cache(maxsize=None)
def scan_kernel():
    """(mamba-ssm's ``selective_scan_fn``, None), or (None, why it is unavailable)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        import selective_scan_cuda  # noqa: F401 - the compiled kernel itself
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        return None, _reason("mamba_ssm", e)
    return selective_scan_fn, None


@functools.lru_cache(maxsize=None)
def conv_kernel():
    """(causal-conv1d's ``causal_conv1d_fn``, None), or (None, why it is unavailable)."""
    try:
        from causal_conv1d import causal_conv1d_fn
        import causal_conv1d_cuda  # noqa: F401 - the compiled kernel itself
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        return None, _reason("causal_conv1d", e)
    return causal_conv1d_fn, None


@functools.lru_cache(maxsize=None)
def inner_kernel():
    """(mamba-ssm's fused ``mamba_inner_fn``, None), or (None, why it is unavailable).

    It needs both kernels, and mamba-ssm must have reached causal-conv1d's functions when it was imported (it sets
    them to None on an ImportError, e.g. a causal-conv1d too old for its ``cpp_functions``).
    """
    for fn, why in (scan_kernel(), conv_kernel()):
        if fn is None:
            return None, why
    from mamba_ssm.ops import selective_scan_interface as ssi  # imported by scan_kernel() already

    if getattr(ssi, "causal_conv1d_fwd_function", None) is None and getattr(ssi, "causal_conv1d_cuda", None) is None:
        return None, "mamba_ssm imported without causal-conv1d's functions (versions of the two do not match)"
    return ssi.mamba_inner_fn, None


def status() -> dict[str, tuple[bool, str]]:
    """For each kernel the Mamba mixers use on CUDA: (usable here, short reason)."""
    gpu = torch.cuda.is_available()
    out = {}
    for name, (fn, why), what in (
        ("selective_scan", scan_kernel(), "mamba_ssm selective_scan_fn"),
        ("causal_conv1d", conv_kernel(), "causal_conv1d_fn (depthwise conv + SiLU)"),
        ("mamba_inner", inner_kernel(), "mamba_ssm mamba_inner_fn (whole mixer fused)"),
    ):
        if fn is None:
            out[name] = (False, why)
        else:
            out[name] = (gpu, what if gpu else f"{what} installed but no CUDA device")
    return out


def cache_clear() -> None:
    """Forget the import results (tests that simulate broken installs)."""
    for f in (scan_kernel, conv_kernel, inner_kernel):
        f.cache_clear()
