"""Small file helpers shared by every feature: the cache directory, atomic writes, hashing.

Outputs are written to a temporary file in the same directory and renamed into place, so an
interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

SCHEMA_VERSION = 1


def cache_dir(*parts: str) -> Path:
    """The tool's cache: `$SUPERWEIGHT_CACHE`, else `$XDG_CACHE_HOME/superweight`, else ~/.cache."""
    root = os.environ.get("SUPERWEIGHT_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "superweight")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def output_path_problem(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at `path` (a folder there, or a file where a folder of its path
    should be), or None: checked before long work, so that it never ends in an error."""
    path = Path(path).expanduser()
    if path.is_dir():
        return f"{str(path)!r} is a folder, not a file"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot write {str(path)!r}: {str(parent)!r} is a file, not a folder"
    return None


def check_output_file(path: str | os.PathLike, force: bool, inputs: tuple = ()) -> Path:
    """Refuse, before any work, a file output that cannot be written (`output_path_problem`), that
    is one of the `inputs` (paths; references that are not files are skipped), or that exists
    without `force`. Returns the expanded path."""
    from superweight.errors import SuperweightError

    path = Path(path).expanduser()
    problem = output_path_problem(path)
    if problem:
        raise SuperweightError(problem)
    for item in inputs:
        source = Path(item).expanduser() if item else None
        if source is not None and source.is_file() and (
                source.resolve() == path.resolve() or (path.exists() and os.path.samefile(path, source))):
            raise SuperweightError(f"the output {str(path)!r} is the input; choose another file")
    if path.exists() and not force:
        raise SuperweightError(f"{str(path)!r} exists; choose another file or replace it (--force)")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `path`; nothing is left on failure."""
    from superweight.errors import SuperweightError

    path = Path(path)
    problem = output_path_problem(path)
    if problem:
        raise SuperweightError(problem)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SuperweightError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; a result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


_COMMAND: list[str] = []  # the command line of this process, when it runs the CLI


def set_command(argv: list[str] | None) -> None:
    """Remember the `superweight ...` command line, so that every result file says what made it
    (None: forget it, once the command is done, so a later library call is not stamped with it)."""
    import shlex

    _COMMAND[:] = [] if argv is None else ["superweight " + shlex.join(argv)]


def result_header(kind: str, **fields: Any) -> dict:
    """The fields every result file starts with: schema and tool versions, the command that made it
    (when run from the command line), what made it."""
    from superweight import __version__

    command = {"command": _COMMAND[0]} if _COMMAND else {}
    return {"schema_version": SCHEMA_VERSION, "tool": "superweight", "tool_version": __version__,
            "kind": kind, **command, **fields}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
