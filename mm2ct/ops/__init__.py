"""Kernels: the selective scan of the Mamba SSM (docs/method.md §6.2) with cuda / cpu / torch / ref backends, the
depthwise causal conv and the fused mixer (mamba-ssm's ``mamba_inner_fn``) that CUDA adds beside it."""
from mm2ct.ops.causal_conv import causal_conv1d, causal_conv1d_ref
from mm2ct.ops.mamba_inner import fused_inner_applies, mamba_inner
from mm2ct.ops.scan_inputs import mamba_like_inputs
from mm2ct.ops.selective_scan import (
    BACKENDS,
    available_backends,
    get_default_backend,
    selective_scan,
    selective_scan_ref,
    set_default_backend,
)

__all__ = ["BACKENDS", "available_backends", "causal_conv1d", "causal_conv1d_ref", "fused_inner_applies",
           "get_default_backend", "mamba_inner", "mamba_like_inputs", "selective_scan", "selective_scan_ref",
           "set_default_backend"]
