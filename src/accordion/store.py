"""Small JSON files written atomically: a crash leaves the old or the new file, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            # One string from the C encoder (json.dump to a file, or any indent, encodes in Python: 20x slower
            # on a 4,000-node status file).
            f.write(json.dumps(data, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        # Name the file the user knows, not the temporary one (or none, for a failed write).
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only file system: there is no temporary file to remove


def private(path: str, flags: int) -> int:
    """An `opener` for open(): files Accordion creates are readable by root only (mode 0600)."""
    return os.open(path, flags, 0o600)


def read_json(path: Path, default: object) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
