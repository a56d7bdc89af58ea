"""Data: the embedded pelvis phantom, NIfTI/DICOM I/O, dataset layouts, preprocessing and slice caches.

Data flows one way (``docs/contributing.md``, Layout; ``docs/data.md``): source layout -> volumes (canonical RAS,
HU for CT) -> normalised 2-D slices on disk (``slices.ensure_cache``) -> ``slices.SliceDataset``.
"""
from mm2ct.data.io import DataError

__all__ = ["DataError"]
