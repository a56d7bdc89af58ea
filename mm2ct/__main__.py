"""``python -m mm2ct`` (also what ``torchrun -m mm2ct train ...`` runs)."""
import sys

from mm2ct.cli import main

sys.exit(main())
