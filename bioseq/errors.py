"""User-facing errors.

Every error a user can cause with bad input derives from :class:`BioseqError`. Its message is one
line that names the file, record and position where known; the CLI prints it to stderr and exits
with status 2 (``BIOSEQ_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations


class BioseqError(Exception):
    """An error caused by the user's input or arguments, reported as one line."""


def locate(path: object = None, record: object = None, line: int | None = None,
           position: int | None = None) -> str:
    """Format ``file:line: record 'id' position N`` from the parts that are known."""
    parts = []
    if path is not None:
        parts.append(f"{path}" + (f":{line}" if line is not None else ""))
    elif line is not None:
        parts.append(f"line {line}")
    if record is not None:
        parts.append(f"record '{record}'")
    if position is not None:
        parts.append(f"position {position}")
    return ", ".join(parts)
