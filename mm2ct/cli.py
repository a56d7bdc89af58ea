"""The ``mm2ct`` command.

Each subcommand lives in the module that does the work; this file only lists them.  A module listed here
provides ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help).  A module is imported only when its subcommand runs.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "env": ("mm2ct.env_info", "print versions, devices and the available selective-scan backends"),
    "phantom": ("mm2ct.data.phantom", "generate procedural pelvis phantom patients (T1w, T2w, CT in HU, mask)"),
    "prepare": ("mm2ct.data.slices", "build the slice cache (splits, normalised 2-D slices) of a dataset"),
    "train": ("mm2ct.train", "train translators (CycleGAN, SynDiff, MM2CT and ablations) for a profile"),
    "evaluate": ("mm2ct.evaluate", "evaluate trained translators on the test patients (paper-style + HU metrics)"),
    "translate": ("mm2ct.infer", "T1/T2 NIfTI -> synthetic CT NIfTI (HU, input grid) with a trained checkpoint"),
    "reproduce": ("mm2ct.reproduce", "run the notebooks in order with papermill for a profile"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` is imported and configured (fast start-up)."""
    from mm2ct import PAPER, __version__

    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="mm2ct", description=f"mm2ct {__version__}: reproduction of {PAPER}")
    parser.add_argument("--version", action="version", version=f"mm2ct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.configure(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
