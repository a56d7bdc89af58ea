"""The ``mm2ct`` command.

Each subcommand lives in the module that does the work; this file only lists them.  A module listed here
provides ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help).  Modules are imported only when their subcommand runs or when --help is built.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "env": ("mm2ct.env_info", "print versions, devices and the available selective-scan backends"),
    "phantom": ("mm2ct.data.phantom", "generate procedural pelvis phantom patients (T1w, T2w, CT in HU, mask)"),
    "prepare": ("mm2ct.data.slices", "build the slice cache (splits, normalised 2-D slices) of a dataset"),
    "translate": ("mm2ct.infer", "T1/T2 NIfTI -> synthetic CT NIfTI (HU, input grid) with a trained checkpoint"),
    "reproduce": ("mm2ct.reproduce", "run the notebooks in order with papermill for a profile"),
}


def register(name: str, module: str, help: str) -> None:
    """Add a subcommand (used by modules of later features)."""
    SUBCOMMANDS[name] = (module, help)


def build_parser() -> argparse.ArgumentParser:
    from mm2ct import PAPER, __version__

    parser = argparse.ArgumentParser(prog="mm2ct", description=f"mm2ct {__version__}: reproduction of {PAPER}")
    parser.add_argument("--version", action="version", version=f"mm2ct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
