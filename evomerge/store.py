"""The run directory: atomic writes, an append-only evaluation log, and a lock against two writers."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class RunDirError(RuntimeError):
    """The run directory cannot be written (full disk, permissions) or is in use by another process."""


class RunLock:
    """An exclusive advisory lock on `run_dir/.lock` for the life of a run.

    flock locks belong to the open file, so the kernel drops the lock when the process dies, even by SIGKILL: a
    killed run never leaves a stale lock, and a second process on the same directory is refused at once.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"run directory {self.path.parent} is in use by another evomerge process "
                                  f"(pid {owner}, lock {self.path}); wait for it to finish or use another "
                                  f"directory") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_writable(run_dir: str | Path) -> None:
    """Fail before any compute if the run directory cannot be created or written."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / ".write_test", b"ok")
        (run_dir / ".write_test").unlink()
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} is not writable: {e.strerror or e}; expected a directory this "
                          f"process can create files in (check permissions and free disk space)") from None


def check_creatable(path: str | Path, what: str) -> None:
    """Fail if `path` could not be created: its nearest existing ancestor must be a folder this process can create
    files in. Creates nothing (a refused command leaves no empty folder behind)."""
    path = Path(path).expanduser().absolute()
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise RunDirError(f"{what} {path} cannot be created or written ({e.strerror or e}); expected a folder this "
                          "process can create files in (check permissions and free disk space)") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a single line and fsync it, so a crash loses at most the line being written.

    A last line torn by an earlier crash is cut off first (or, if it is a whole record missing only its newline,
    completed), so the new record never lands on a fragment: every append-only log stays readable.
    """
    line = json.dumps(record, default=_json_default, ensure_ascii=False) + "\n"
    with open(path, "a+b") as f:
        _mend_tail(f)
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _mend_tail(f) -> None:
    """Make a JSONL file opened "a+b" end at a record boundary (see append_jsonl)."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    start = size
    while start > 0:  # find the start of the last line, reading back in blocks
        block = min(65536, start)
        f.seek(start - block)
        chunk = f.read(block)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            start = start - block + cut + 1
            break
        start -= block
    f.seek(start)
    try:
        json.loads(f.read().decode("utf-8"))
        f.write(b"\n")  # a whole record: keep it
    except (json.JSONDecodeError, UnicodeDecodeError):
        f.truncate(start)


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Replace a JSONL file atomically (used when resuming cuts the log back to the last checkpoint)."""
    text = "".join(json.dumps(r, default=_json_default, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read records, dropping a final line cut short by a crash (every complete line parses)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn last line from a killed process
            raise ValueError(f"{path}:{i + 1}: corrupt record in the middle of the log") from None
    return records


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
