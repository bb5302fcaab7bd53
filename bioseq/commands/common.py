"""Small helpers shared by the subcommands: warnings, random-weight detection, stdin / pipe inputs.

Nothing here imports torch or Lightning.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from bioseq.errors import BioseqError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help (unless None or already stated there), the epilog's examples kept
    line by line."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def warn(command: str, message: str) -> None:
    """One ``bioseq <command>: warning: <message>`` line on stderr."""
    print(f"bioseq {command}: warning: {message}", file=sys.stderr, flush=True)


def is_random_preset(spec) -> bool:
    """True when ``spec`` names a preset (and is not a directory): the backbone gets random weights."""
    if not isinstance(spec, str) or Path(spec).is_dir():
        return False
    from bioseq.models import PRESETS

    return spec in PRESETS


def random_weights_warning(command: str, spec: str) -> None:
    warn(command, f"{spec} is a preset name: the backbone has random weights, not pretrained ones "
                  "(give a checkpoint directory for pretrained weights)")


def check_input_file(path: str) -> None:
    """A one-line error for an input that is missing, a directory or unreadable (``-`` and pipes pass)."""
    if path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise BioseqError(f"{path}: is a directory, not a FASTA file")
    if not p.exists():
        raise BioseqError(f"{path}: no such file")
    if not os.access(p, os.R_OK):
        raise BioseqError(f"{path}: permission denied")


def is_stream(path: str) -> bool:
    """``-`` (stdin), a named pipe or a character device such as ``/dev/stdin`` or ``<(cmd)``."""
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


class SpooledInputs:
    """Context manager: inputs that are streams (``-``, pipes, ``/dev/stdin``) are copied once to temporary
    files, because the readers open an input more than once (compression sniffing, two passes). Regular
    files are used in place. ``paths`` are the files to read; ``names`` what to call them in messages."""

    def __init__(self, inputs: list[str], suffix: str = ".fa"):
        self.names = list(inputs)
        self.paths: list[str] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._suffix = suffix

    def __enter__(self) -> SpooledInputs:
        if sum(p == "-" for p in self.names) > 1:
            raise BioseqError("'-' (standard input) can be given only once")
        for k, name in enumerate(self.names):
            if not is_stream(name):
                self.paths.append(name)
                continue
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="bioseq-stdin-")
            target = Path(self._tmp.name) / f"input{k}{self._suffix}"
            with open(target, "wb") as out:
                if name == "-":
                    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
                else:
                    with open(name, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            self.paths.append(str(target))
        return self

    def rename(self, message: str) -> str:
        """``message`` with the temporary paths replaced by the names the user gave."""
        for path, name in zip(self.paths, self.names):
            if path != name:
                message = message.replace(path, "<stdin>" if name == "-" else name)
        return message

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
