"""Files written whole or not at all, and a clear error when the space runs out.

:func:`atomic_write` is the one writer every output goes through (NIfTI, checkpoints, JSON):
it fills a hidden temporary sibling and renames it onto the target (:func:`os.replace`, atomic
on one filesystem), so a failed or killed write never leaves a partial file. A write that runs
out of space — ``ENOSPC`` (a full disk), ``EDQUOT`` (a quota), ``EFBIG`` (a file-size limit such
as ``ulimit -f``) or torch's ``unexpected pos`` / ``file write failed`` errors — raises
:class:`~napari_difftt.errors.DiskFull` (one line: device, path, MB needed and free). Sizes are
bytes; MB in messages are 10⁶ bytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import DiskFull

try:  # POSIX only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

__all__ = ["DiskFull", "atomic_write", "check_space", "free_bytes", "lifted_file_size_limit",
           "write_json"]

_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# what torch.save's zip writer raises when a write comes up short (a full disk, ulimit -f)
_TORCH_SHORT_WRITE = re.compile(r"unexpected pos|file write failed|inline_container")
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    *,
    overwrite: bool,
    size: int | None = None,
) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary sibling (same
    suffix), which is then renamed onto ``path``; the temporary is removed whatever happens.

    FileExistsError if ``path`` exists and not ``overwrite``. Out of space: :class:`DiskFull`
    (``needed`` is ``size`` when given, else the bytes written when it failed). Temporaries of
    earlier writes of ``path`` whose process is gone (a killed save) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    # Not mkstemp: its files are private (0600); this one gets the user's usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        write(tmp)
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if not _out_of_space(error):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        code = error.errno if isinstance(error, OSError) and error.errno else errno.ENOSPC
        raise DiskFull(mount_point(path), str(path), max(size or 0, written),
                       free_bytes(path.parent), code) from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_space(path: str | os.PathLike, needed: int) -> None:
    """Refuse, before any work, a file of ``needed`` bytes that cannot fit at ``path`` (free
    space of its filesystem or the file-size limit): :class:`DiskFull`."""
    path = Path(path)
    free = free_bytes(path.parent)
    if needed > free:
        code = errno.EFBIG if free == _file_size_limit() else errno.ENOSPC
        raise DiskFull(mount_point(path), str(path), needed, free, code)


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes one file may still take in ``folder`` (or its nearest existing parent): the
    filesystem's space available to this user, or the file-size limit when smaller."""
    stats = os.statvfs(_existing(Path(folder)))
    return min(stats.f_bavail * stats.f_frsize, _file_size_limit())


def mount_point(path: str | os.PathLike) -> str:
    """The mount point of the filesystem holding ``path`` (or its nearest existing parent)."""
    folder = _existing(Path(path)).resolve()
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return str(folder)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporaries of ``path`` left by writes whose process is gone (e.g. a
    save killed with kill -9); returns them. Those of a live process are left alone."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for candidate in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp*"):
            match = _TEMPORARY.match(candidate.name)
            if match and match["name"] == path.name and not _alive(int(match["pid"])):
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    return removed


@contextlib.contextmanager
def lifted_file_size_limit() -> Iterator[None]:
    """Raise the soft file-size limit (``ulimit -S -f``) to the hard one for a moment (to save
    work a run would otherwise lose), then restore it."""
    if resource is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def write_json(path: str | os.PathLike, data: object, *, overwrite: bool) -> Path:
    """Write ``data`` as strict JSON (``allow_nan=False``: an infinite or NaN number, e.g. the
    Hausdorff distance of an empty mask, is written as null), indented, atomically."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text), overwrite=overwrite,
                        size=len(text.encode()))


# --------------------------------------------------------------------------------------------
# helpers


def _glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _out_of_space(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in _NO_SPACE
    return bool(_TORCH_SHORT_WRITE.search(str(error)))


def _file_size_limit() -> int:
    if resource is None:
        return math.inf
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return math.inf if soft == resource.RLIM_INFINITY else int(soft)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
