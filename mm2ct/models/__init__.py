"""Networks (no training logic). The fusion-module parts are re-exported here; generators, discriminators and
translators are imported from their own modules (``mm2ct.models.ncsnpp``, ``mm2ct.translators``, ...)."""
from mm2ct.models.channel_swap import TokenSwapMamba, channel_swap
from mm2ct.models.cross_modal import CrossModalMamba, M3Block
from mm2ct.models.enhance import DFEM, ECA, FinalFusion, difference_attention
from mm2ct.models.fusion import FusionModule, parameter_table
from mm2ct.models.ldc import LDC
from mm2ct.models.mamba import (Mamba, MambaBlock, MambaStack, close_stream, map_to_sequence, raster_index,
                                sequence_to_map, set_scan_backend)

__all__ = [
    "DFEM", "ECA", "LDC", "CrossModalMamba", "FinalFusion", "FusionModule", "M3Block", "Mamba", "MambaBlock",
    "MambaStack",
    "TokenSwapMamba", "channel_swap", "close_stream", "difference_attention", "map_to_sequence", "parameter_table",
    "raster_index", "sequence_to_map", "set_scan_backend",
]
