"""mm2ct: MR-to-CT translation with a Mamba multi-modal fusion module (Gong et al., arXiv 2508.05476).

The thin package behind the notebook suite: selective scan kernels (``mm2ct.ops``), models (``mm2ct.models``),
data (``mm2ct.data``), training, metrics, inference and reports.
"""
from pathlib import Path

__version__ = "0.1.0"

PAPER = (
    "Gong C., et al. MM2CT: MR-to-CT translation for multi-modal image fusion with Mamba. arXiv:2508.05476 (2025)."
)


def repo_root() -> Path:
    """The checkout this package was installed from (editable install), else the current directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "notebooks").is_dir() else Path.cwd()
