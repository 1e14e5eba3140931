"""Writing and reading artifacts safely: atomic writes, pickle-free arrays, provenance.

Every file a stage produces goes through here, so that an interrupted run never leaves
a half-written file behind (write to a temporary file in the same folder, then rename)
and nothing is ever unpickled.

Every stage that writes a folder or file also:

* holds :func:`output_lock` on it, so that two runs never write the same output at once;
* builds it with :func:`replacing`: into a temporary sibling that is swapped in only once
  complete, so ``--force`` never destroys the old result before the new one exists.

Temporaries are named ``.<name>.tmp-<pid>...`` (and an old result being swapped out
``.<name>.old-<pid>``), so :func:`clean_stale_temporaries` can tell those of a dead
process (``kill -9``, power loss) from those of a run still going. A result of several
sibling files is swapped in with :func:`replacing_together`, which journals the swap so that
a kill half-way is completed, never left half old, half new.

An output is never allowed to be, contain or lie inside one of the run's inputs
(:func:`check_apart`), so ``--force`` can never delete what the run reads, nor one of its
other outputs (:func:`check_outputs_apart`); and ``--force`` replaces a folder only if this
package wrote it (:func:`check_replaceable`, :data:`OUTPUT_MARKER`), never a user's own, and a stage
never writes into a user's folder (:func:`check_own_folder`). A write that
fails for a full disk, a file-size limit or a quota is one :class:`InputError` naming the
path (:func:`reporting_disk_full`), never a traceback, and leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError, MissingInputError

PACKAGES = ("ensemble_fer", "tensorflow", "keras", "dlib-bin", "face_recognition_models",
            "numpy", "scipy", "scikit-learn", "scikit-image", "opencv-python-headless", "joblib")


DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large for this file system or limit",
             errno.EDQUOT: "disk quota exceeded"}
"""The write failures that are the machine's state, not a bug: reported as one line naming the path."""


def disk_full_error(exc: BaseException, path) -> InputError | None:
    """The one-line :class:`InputError` for a write that failed for a full disk, a file-size
    limit (``RLIMIT_FSIZE``) or a quota; ``None`` for any other exception."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return InputError(f"{DISK_FULL[exc.errno]} writing {path}; free some space (or choose another output) "
                          f"and run again")
    return None


@contextlib.contextmanager
def reporting_disk_full(path):
    """Turn a full-disk ``OSError`` inside the block into :func:`disk_full_error`'s InputError."""
    try:
        yield
    except OSError as exc:
        error = disk_full_error(exc, path)
        if error is None:
            raise
        raise error from None


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    ``suffix`` ends the temporary name (Keras, for one, insists on ``.keras``). A full disk
    while the block writes is :func:`disk_full_error`'s one line; the temporary is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets clean_stale_temporaries remove it after a kill -9.
    with reporting_disk_full(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=suffix)
    os.close(fd)
    try:
        with reporting_disk_full(path):
            yield Path(tmp)
            # mkstemp makes the file private (0600); give it the permissions a plain open() would.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- outputs apart from inputs
def check_apart(output, inputs, *, output_name: str, allow_inside: bool = False) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs`` (links resolved).

    Replacing such an output (``--force``) would delete the inputs, and writing inside an
    input folder mixes results with data that is read. ``output_name`` and each input's
    name (``inputs`` maps a description such as ``"--data"`` to a path, or is a list of
    paths) make the message. ``allow_inside``: an output inside an input *folder* is allowed
    (``predict . --csv out.csv``); the stage must then leave its outputs out of what it reads.
    Whatever the flags: this runs before ``--force`` is looked at.
    """
    out = _resolved(output)
    items = inputs.items() if isinstance(inputs, dict) else ((None, p) for p in inputs)
    for name, source in items:
        if source is None:
            continue
        problem = _nesting(out, _resolved(source))
        if problem is None or (problem == "lies inside" and allow_inside):
            continue
        what = f"{name} {source}" if name else f"the input {source}"
        raise InputError(f"{output_name} {output}: {problem} {what}; an output must be apart from the inputs (it would "
                         f"replace or mix with what the run reads): choose another {output_name}")


def check_outputs_apart(outputs: dict) -> None:
    """Refuse two of a run's ``outputs`` (option name -> path, None for an option not given) that
    are one path or lie one inside the other: each is built apart and swapped in whole, so one
    would replace or hide the other (``--csv res/e.csv --annotate res``)."""
    given = [(name, path) for name, path in outputs.items() if path is not None]
    for i, (name, path) in enumerate(given):
        for other_name, other in given[i + 1:]:
            problem = _nesting(_resolved(other), _resolved(path))
            if problem is not None:
                raise InputError(f"{other_name} {other}: {problem} {name} {path}; each output is written whole, "
                                 f"so they must be apart: choose another {other_name}")


def _nesting(path: Path, other: Path) -> str | None:
    """How the resolved ``path`` stands to the resolved ``other``: ``"is"``, ``"contains"``,
    ``"lies inside"``, or None when they are apart."""
    if path == other:
        return "is"
    if path in other.parents:
        return "contains"
    if other in path.parents:
        return "lies inside"
    return None


def _resolved(path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def output_lock(path):
    """Hold an exclusive lock on the output ``path`` (a folder or file) for the block.

    The lock is ``<path>.lock`` beside it, holding the holder's pid. It is an ``flock`` on
    that file, so the kernel releases it when the holder dies, however it dies: a lock file
    left by a dead process is simply taken over. A live holder (another process, or this one
    through another ``output_lock``) makes this raise :class:`InputError` at once, naming the
    path and the holder's pid; it never waits, because a second run of a stage on the same
    output is a mistake to report, not a queue. (``flock`` is per host: two machines sharing
    an NFS folder are not guarded against each other.)
    """
    path = Path(path)
    lock = path.parent / f"{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path.parent}: cannot create the output folder ({exc.strerror})") from None
    fd = _acquire(lock, path)
    try:
        yield lock
    finally:
        # Unlink while still holding the lock, so a process that opened the old file and
        # locks it after us sees it is no longer the lock file (see _acquire) and retries.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _acquire(lock: Path, path: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if disk_full_error(exc, lock):
                raise disk_full_error(exc, lock) from None
            raise InputError(f"{lock}: cannot create the lock file for {path} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{path}: another run (pid {holder}) is writing it (lock {lock}); wait for it "
                             f"to finish or choose another output") from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != os.fstat(fd).st_ino:
            # The previous holder removed the file between our open and our lock: retry on
            # the file that is now (or will be) at that path.
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            # A full disk: no empty lock file left behind, one line instead of a traceback.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            os.close(fd)
            error = disk_full_error(exc, lock)
            if error is None:
                raise
            raise error from None
        return fd


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


# --------------------------------------------------------------------------- what --force may replace
OUTPUT_MARKER = ".ensemble_fer-output"
"""The file every output folder gets when it is swapped in: ``--force`` replaces a folder only if
it holds this file (or nothing), so a user's own folder given as an output by mistake is
refused, never emptied."""


def mark_output(folder) -> None:
    """Mark ``folder`` as an output of this package (see :data:`OUTPUT_MARKER`). A folder that
    cannot be written is left unmarked: it could not be replaced either, and a later --force
    says so in one line."""
    marker = Path(folder) / OUTPUT_MARKER
    if not marker.exists():
        with contextlib.suppress(OSError):
            marker.write_text("written by ensemble_fer: --force may replace this whole folder\n")


def check_replaceable(path) -> None:
    """Refuse to replace ``path`` if it is a folder with something in it and no
    :data:`OUTPUT_MARKER`: ensemble_fer did not write it, and replacing it would delete what a
    user keeps there. A file, a missing path or an empty folder passes."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or (path / OUTPUT_MARKER).exists():
        return
    try:
        empty = next(os.scandir(path), None) is None
    except OSError:
        empty = False
    if not empty:
        raise InputError(f"{path}: is a folder ensemble_fer did not write (it has no {OUTPUT_MARKER}); "
                         f"--force replaces only its own outputs, so choose another output or remove it yourself")


def check_own_folder(folder, *, argument: str, kind: str, signs) -> None:
    """Refuse ``folder`` as an output that a stage writes files into over several runs (a
    variant's, a search's, the demo's folder), ``--force`` or not: a file, or a folder that holds
    something and shows none of ``signs``, so is a user's own, never written into nor cleared.

    ``signs``: what marks a folder of this ``kind``, each a tuple of names that must all be
    there (a folder's name ends in ``/``); list :data:`OUTPUT_MARKER` among them where any
    output of this package will do. A missing folder, an empty one, or one holding only the
    marker passes.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{argument}: must be a folder; received {folder}, which is a file")
    if not folder.is_dir():
        return
    def there(name: str) -> bool:
        return (folder / name).is_dir() if name.endswith("/") else (folder / name).is_file()
    if any(all(there(name) for name in sign) for sign in signs):
        return
    if any(entry.name != OUTPUT_MARKER for entry in folder.iterdir()):
        shown = [" and ".join(sign) for sign in signs]
        shown = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
        raise InputError(f"{argument}: {folder} holds files and is not {kind} (no {shown}): "
                         f"choose another {argument}")


# --------------------------------------------------------------------------- replacing
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?P<kind>tmp|old|swap)-(?P<pid>\d+)(?:-.*)?$")


@contextlib.contextmanager
def replacing(path, force: bool = False):
    """Yield a temporary sibling of ``path`` to build a new folder or file into; swap it
    into place only when the block ends without an exception.

    * Without ``force`` an existing ``path`` raises :class:`InputError` at once, before any
      work is done.
    * On success the new result replaces the old one atomically for a file (``os.replace``);
      for a folder the old one is renamed aside, the new one renamed in, then the old one
      deleted, so the old result is gone only once the new one is complete. (A crash between
      the two renames leaves the old result as ``.<name>.old-<pid>``;
      :func:`clean_stale_temporaries` puts it back.)
    * On an exception (Ctrl-C included) the temporary is removed and ``path`` is untouched.

    Hold :func:`output_lock` on ``path`` around it when another run could write it too.
    """
    path = Path(path)
    check_replaceable(path)     # first: --force would not replace a user's folder, so never suggest it
    if (path.exists() or path.is_symlink()) and not force:
        raise InputError(f"{path}: exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(tmp)  # left by an earlier failed block of this very process
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise RuntimeError(f"replacing({path}): the block wrote nothing at {tmp}")
        _swap_in(tmp, path)
    finally:
        _remove(tmp)


def _swap_in(tmp: Path, path: Path) -> None:
    if not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)
        return
    if tmp.is_dir() and not tmp.is_symlink():
        mark_output(tmp)
    if (path.exists() or path.is_symlink()) and tmp.is_dir() != path.is_dir():
        # a folder result where a file is (``export --out notes.txt --force``), or the reverse:
        # not an earlier result of this output, so it is not replaced
        raise InputError(f"{path}: is a {'file' if tmp.is_dir() else 'folder'} and the new result a "
                         f"{'folder' if tmp.is_dir() else 'file'}; it is not replaced: choose another output")
    if not (path.exists() or path.is_symlink()):
        os.rename(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    _remove(old)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def replacing_together(paths, force: bool = False):
    """:func:`replacing` for a result made of several files or folders (an ensemble and its
    report): yields ``{path: temporary}``, and when the block ends without an exception
    swaps them all in as one unit with :func:`swap_in_together`, the last path last (make
    it the one that points to the others). Without ``force`` any existing path is refused
    before the block runs."""
    paths = [Path(p) for p in paths]
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    for path in existing:
        check_replaceable(path)     # first: --force would not replace a user's folder, so never suggest it
    if existing and not force:
        raise InputError(f"{existing[0]}: exists; pass --force to replace it")
    for folder in dict.fromkeys(p.parent for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(folder)
    building = {p: p.parent / f".{p.name}.tmp-{os.getpid()}" for p in paths}
    for tmp in building.values():
        _remove(tmp)
    swapping = False
    try:
        yield building
        empty = [str(tmp) for tmp in building.values() if not (tmp.exists() or tmp.is_symlink())]
        if empty:
            raise RuntimeError(f"replacing_together: the block wrote nothing at {empty}")
        swapping = True
        swap_in_together(building)
    finally:
        if not swapping:
            for tmp in building.values():
                _remove(tmp)


def swap_in_together(built: dict) -> None:
    """Move each complete ``built`` file or folder onto its key path, as one unit.

    The list of moves is first written (atomically) to a journal beside the last path,
    ``.<name>.swap-<pid>``; only then are the renames made, in order, and the journal
    removed. A process killed between two renames leaves the journal, and whoever next
    cleans that folder (:func:`clean_stale_temporaries`, :func:`complete_interrupted_swaps`)
    finishes the moves: the result is never left half old, half new."""
    pairs = [(str(Path(b).absolute()), str(Path(p).absolute())) for p, b in built.items()]
    if not pairs:
        return
    for final, built_path in built.items():
        check_replaceable(final)    # before any move: a refused folder leaves every old result in place
        if Path(built_path).is_dir() and not Path(built_path).is_symlink():
            mark_output(built_path)
    last = Path(pairs[-1][1])
    journal = last.parent / f".{last.name}.swap-{os.getpid()}"
    write_json(journal, {"moves": pairs})
    _finish_swap(journal, os.getpid())


def _finish_swap(journal: Path, pid: int) -> None:
    moves = json.loads(journal.read_text())["moves"]
    for built, final in moves:
        built, final = Path(built), Path(final)
        old = final.parent / f".{final.name}.old-{pid}"
        if built.exists() or built.is_symlink():
            if (old.exists() or old.is_symlink()) and not (final.exists() or final.is_symlink()):
                os.rename(built, final)     # killed between the two renames of a folder swap
            else:
                _swap_in(built, final)
        if old.exists() or old.is_symlink():
            _remove(old)
    os.unlink(journal)


def complete_interrupted_swaps(folder) -> list[Path]:
    """Finish the swaps (:func:`swap_in_together`) that dead processes left half done in
    ``folder``; returns the journals completed. Readers of a multi-file result call it so
    that a kill during a swap is never seen; a folder they cannot write is left as it is."""
    done = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return done
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and match["kind"] == "swap" and not pid_alive(int(match["pid"])):
            try:
                _finish_swap(Path(entry.path), int(match["pid"]))
            except (OSError, ValueError, KeyError):
                continue
            done.append(Path(entry.path))
    return done


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def clean_stale_temporaries(folder) -> list[Path]:
    """Remove the temporaries that dead processes left in ``folder``; returns what it removed.

    ``.<name>.tmp-<pid>...`` of a pid that is no longer running are deleted. An old result
    ``.<name>.old-<pid>`` is deleted when ``<name>`` exists again and otherwise renamed back
    to ``<name>`` (the process died between the two renames of a swap). An interrupted
    multi-file swap is finished first (:func:`complete_interrupted_swaps`). Temporaries of
    live processes are left alone. A missing or unlistable folder cleans nothing.
    """
    folder = Path(folder)
    # First an interrupted multi-file swap is finished: its temporaries are the new result.
    removed = complete_interrupted_swaps(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or match["kind"] == "swap" or pid_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        original = folder / match["name"]
        if match["kind"] == "old" and not (original.exists() or original.is_symlink()):
            os.rename(path, original)
            continue
        _remove(path)
        removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInputError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text, so not JSON (byte {exc.start}: {exc.reason})") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be one of this project's files (a crafted file?)") from None


def save_npz(path, **arrays) -> None:
    """Save arrays compressed; refuses object arrays so the file never needs pickle."""
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"save_npz: array {name!r} has dtype object, which would need pickle")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def load_npz(path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file, never unpickling."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as exc:
        raise InputError(f"{path}: cannot be read without pickle ({exc})") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError ...
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(data) -> str:
    """A stable hash of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=_json_default).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
