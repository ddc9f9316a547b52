"""What every command-line entry point shares: progress bars, one-line messages, exit codes.

Used by the ``gagavatar`` command (:mod:`.cli`) and the training commands
(:mod:`.training.cli`), so neither imports the other.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from .errors import Cancelled, GAGAvatarError
from .host_memory import keep_large_buffers

__all__ = ["progress_bar", "passes_progress", "Parser", "show_warning", "run_command"]


def progress_bar(desc: str, total: int | None = None, unit: str = "frame") -> Callable[..., None]:
    """A ``progress(done, total=None)`` callback drawing a tqdm bar on stderr; ``.close()`` ends it.

    Args:
        desc: the bar's label.
        total: the count when known (a callback's ``total`` replaces it).
        unit: what is counted (``"frame"``, ``"it"``, ...); ``"B"`` counts bytes, shown in kB, MB, ...
    """
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=True, file=sys.stderr,
               dynamic_ncols=True)

    def update(done: int, total_now: int | None = None) -> None:
        if total_now is not None and bar.total != total_now:
            bar.total = total_now
        bar.n = done
        bar.refresh()
    update.close = bar.close
    return update


def passes_progress(desc: str, labels: tuple[str, ...], unit: str = "frame") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for work counted over equal passes in one total (a
    video's tracking: its frames read, then fitted): one bar per pass, labelled ``desc: label``."""
    state = {"index": -1, "bar": None}

    def update(done: int, total: int) -> None:
        per = max(total // len(labels), 1)
        index = min(max(done - 1, 0) // per, len(labels) - 1)
        if index != state["index"]:
            if state["bar"] is not None:
                state["bar"](per, per)
                state["bar"].close()
            state["index"], state["bar"] = index, progress_bar(f"{desc}: {labels[index]}", per, unit)
        state["bar"](done - index * per, per)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
    update.close = close
    return update


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``error: ...``, exit code 2), like the commands' own."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as ``warning: <message>`` lines (no source file, line or code)."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand (``args.func``): its exit code, or 130 when cancelled and 2 (with a
    one-line ``error:`` message on stderr) on a user error or a disk error.

    The command line owns its process, so large CPU buffers are kept between frames
    (:func:`~.host_memory.keep_large_buffers`)."""
    keep_large_buffers()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return args.func(args)
    except Cancelled as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except GAGAvatarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, ...: what and where, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}: free some space or choose another place", file=sys.stderr)
        return 2
