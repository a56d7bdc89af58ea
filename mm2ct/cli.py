"""The ``mm2ct`` command.

Each subcommand lives in the module that does the work; this file lists them and does what every subcommand
shares: ``--workdir`` (where runs, generated data and caches go; ``mm2ct.workspace``), and one way to fail. An
expected error (bad data, a bad profile, a missing or corrupt file, a full disk, a refused run folder, ...)
prints one or two lines that name the file and what to do, and exits with 1; ``--debug`` or ``MM2CT_DEBUG=1``
adds the traceback. Anything else is a bug and prints its traceback. SIGTERM is turned into an exception, so that
a terminated command removes its temporary files like an interrupted one.

A module listed here provides ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator

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
DEBUG_ENV = "MM2CT_DEBUG"

_DISK_FULL = "the disk is full: free some space, or put the work directory elsewhere (--workdir)"
_NO_WRITE = ("no permission to write there: choose a folder you can write to (--workdir, --out) or change its "
             "permissions")
_HINTS = {errno.ENOSPC: _DISK_FULL, errno.EDQUOT: _DISK_FULL, errno.EACCES: _NO_WRITE, errno.EPERM: _NO_WRITE,
          errno.EROFS: "a read-only file system: choose another folder (--workdir, --out)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that ``finally`` blocks remove temporary files on the way out."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _common() -> argparse.ArgumentParser:
    """The options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where runs/, data/generated/ and data/cache/ go (default: $MM2CT_WORKDIR, else the "
                        "repository root)")
    p.add_argument("--debug", action="store_true",
                   help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    return p


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` is imported and configured (fast start-up)."""
    from mm2ct import PAPER, __version__

    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = argparse.ArgumentParser(prog="mm2ct", description=f"mm2ct {__version__}: reproduction of {PAPER}")
    parser.add_argument("--version", action="version", version=f"mm2ct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common()
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        if name == chosen:
            mod = importlib.import_module(module)
            mod.configure(p)
            p.set_defaults(_run=mod.run)
    return parser


def expected(e: BaseException) -> bool:
    """Whether ``e`` is an error the user can act on (bad input, a file, the disk, memory) rather than a bug:
    ValueError (DataError, ConfigError, RunError, ...), OSError, a non-finite loss, out of GPU memory, or a
    RuntimeError that wraps one of those (a failed training worker)."""
    if isinstance(e, (ValueError, OSError, FloatingPointError)) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and e.__cause__ is not None and expected(e.__cause__)


def describe(e: BaseException) -> str:
    """The one-line message of an expected error: the file first, then what is wrong and what to do."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
        msg = f"{where}: {e.strerror}"
    else:
        msg = str(e) or type(e).__name__
    hint = _HINTS.get(e.errno) if isinstance(e, OSError) else None
    if type(e).__name__ == "OutOfMemoryError":
        hint = "out of GPU memory: lower train.batch_size (translate: --batch-size) or use a smaller profile"
    return msg + (f"; {hint}" if hint and hint not in msg else "")


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    from mm2ct.workspace import WORKDIR_ENV, using_workdir

    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        # the work directory goes through the environment: notebook kernels and worker processes inherit it
        with using_workdir(args.workdir or os.environ.get(WORKDIR_ENV) or None), _terminate_as_exception():
            return int(args._run(args) or 0)
    except Terminated:
        print(f"mm2ct {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"mm2ct {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into expected errors and bugs below
        if not expected(e):
            raise
        if debug:
            traceback.print_exc()
        print(f"mm2ct {args.command}: error: {describe(e)}", file=sys.stderr)
        if not debug:
            print(f"  (the traceback: --debug or {DEBUG_ENV}=1)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
