"""Kernels: the selective scan of the Mamba SSM (docs/method.md §6.2) with cuda / cpu / torch / ref backends."""
from mm2ct.ops.scan_inputs import mamba_like_inputs
from mm2ct.ops.selective_scan import (
    BACKENDS,
    available_backends,
    get_default_backend,
    selective_scan,
    selective_scan_ref,
    set_default_backend,
)

__all__ = ["BACKENDS", "available_backends", "get_default_backend", "mamba_like_inputs", "selective_scan",
           "selective_scan_ref", "set_default_backend"]
