"""The ``cpu`` backend: a fused C++ selective-scan kernel (mm2ct/ops/csrc/selective_scan_cpu.cpp), built on first
use with ``torch.utils.cpp_extension.load`` and cached in the torch extensions directory.

The build uses ``-march=native``; the extension's name carries a fingerprint of this CPU (model and ISA flags), so a
cache shared with another machine never loads code compiled for a different instruction set.
If the build fails (no compiler, ...) the ``auto`` backend warns once and falls back to ``torch``.
"""
from __future__ import annotations

import hashlib
import platform
import time
import warnings
from pathlib import Path

SOURCE = Path(__file__).parent / "csrc" / "selective_scan_cpu.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]

_module = None  # the loaded extension
_error: str | None = None  # why it cannot be built (set once)
_warned = False
_build_note = ""  # "built now in 31 s" or "loaded from cache", for status()


def cpu_fingerprint() -> str:
    """Short hash of the CPU model and ISA flags (x86 /proc/cpuinfo; else platform strings)."""
    info = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                info += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def extension_name() -> str:
    return f"mm2ct_selective_scan_cpu_{cpu_fingerprint()}"


def _build():
    """Compile (or load from the cache) the extension module."""
    from torch.utils.cpp_extension import load

    if not SOURCE.is_file():
        raise RuntimeError(f"kernel source missing: {SOURCE}")
    return load(name=extension_name(), sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                verbose=False)


def load_module():
    """The built extension; raises RuntimeError with the reason if it cannot be built (the attempt is made once)."""
    global _module, _error, _build_note
    if _module is None and _error is None:
        t0 = time.perf_counter()
        try:
            _module = _build()
        except Exception as e:  # noqa: BLE001 - compiler missing, build error, import error: all mean "fall back"
            msg = str(e).strip().splitlines()
            _error = f"{type(e).__name__}: {msg[-1] if msg else ''}"[:300]
        else:
            dt = time.perf_counter() - t0
            _build_note = f"built now in {dt:.0f} s" if dt > 2 else "loaded from cache"
    if _module is None:
        raise RuntimeError(f"the fused C++ selective-scan kernel is unavailable ({_error})")
    return _module


def usable(warn: bool = False) -> bool:
    """Whether the kernel builds here; with ``warn``, the first failure emits one warning (then falls back)."""
    global _warned
    try:
        load_module()
        return True
    except RuntimeError as e:
        if warn and not _warned:
            _warned = True
            warnings.warn(f"{e}; selective_scan falls back to the pure-PyTorch backend", RuntimeWarning, stacklevel=4)
        return False


def status() -> tuple[bool, str]:
    """(usable, reason) for ``available_backends``; builds the kernel if it is not built yet."""
    try:
        mod = load_module()
    except RuntimeError as e:
        return False, str(e)
    return True, f"C++ kernel {_build_note} (cached at {Path(mod.__file__).parent})"
