"""A keyed, atomic, memory-mapped cache of named fixed-shape arrays (N x ...).

Image datasets decode their files once into such a cache and train from it:
CelebA stores ``images`` (N x 3 x R x R, uint8) beside its labels; Taskonomy
will store RGB plus dense targets of other dtypes (uint8, uint16) the same way.

Layout: ``<parent>/<name>/<digest>/`` holds one ``<array>.npy`` per array and
``manifest.json``; ``digest`` is a hash of the ``key`` (whatever the content
depends on: source files' hashes, sizes and times, resolution, decoder
version). A build writes into a temporary sibling directory
(``.tmp-<digest>-<pid>-<random>``), fsyncs every file, writes the manifest
last, fsyncs, then renames the directory into place (``os.replace``). A
directory is read only when its manifest says it is complete, names the same
key, and every array file has exactly the expected shape, dtype and size, so a
build killed midway leaves nothing that is later read as complete; its
temporary directory is removed by the next build once its process is gone.

Afterwards the arrays are memory-mapped (``np.load(mmap_mode="c")``:
copy-on-write, so ``torch.from_numpy`` gets a writable view and nothing is
copied until written; the file never changes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from branchbench.datasets.base import DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
RowFn = Callable[[int], Mapping[str, np.ndarray]]
"""Row ``i`` of every array that is not prefilled: ``{name: array of the row's shape}``."""


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/branchbench``, else ``~/.cache/branchbench``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "branchbench"


@dataclass(frozen=True)
class ArraySpec:
    """One array of the cache: the shape of one row and the dtype (e.g. ``"uint8"``)."""

    shape: tuple[int, ...]
    dtype: str

    def nbytes(self, rows: int) -> int:
        return rows * math.prod(self.shape) * np.dtype(self.dtype).itemsize


def key_digest(key: Mapping[str, Any]) -> str:
    """A stable hash of a JSON-able key."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        if not directory:
            raise
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class ArrayCache:
    """Several named arrays of ``rows`` rows each, built once under a key, memory-mapped after.

    ``lineage`` names what the cache is a version of (e.g. a data root and a
    resolution): after a successful build, caches of the same name and lineage
    under other keys are stale and removed, so a changed source file does not
    leave old copies behind.
    """

    def __init__(
        self,
        parent: str | Path,
        name: str,
        key: Mapping[str, Any],
        rows: int,
        arrays: Mapping[str, ArraySpec],
        meta: Mapping[str, Any] | None = None,
        lineage: str | None = None,
    ) -> None:
        if rows < 1:
            raise ValueError(f"cache {name!r}: rows must be >= 1, got {rows}")
        self.parent = Path(parent).expanduser()
        self.name = name
        self.key = dict(key)
        self.rows = int(rows)
        self.arrays = {k: ArraySpec(tuple(int(d) for d in v.shape), str(np.dtype(v.dtype))) for k, v in arrays.items()}
        self.meta = dict(meta or {})
        self.lineage = lineage
        self.digest = key_digest({"format": FORMAT_VERSION, "key": self.key, "rows": self.rows,
                                  "arrays": {k: [list(v.shape), v.dtype] for k, v in self.arrays.items()}})

    # ------------------------------------------------------------- reading
    @property
    def path(self) -> Path:
        return self.parent / self.name / self.digest[:20]

    @property
    def nbytes(self) -> int:
        return sum(spec.nbytes(self.rows) for spec in self.arrays.values())

    def _file(self, directory: Path, name: str) -> Path:
        return directory / f"{name}.npy"

    def manifest(self) -> dict[str, Any] | None:
        """The manifest of a complete cache, else None."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not (isinstance(manifest, dict) and manifest.get("complete") is True
                and manifest.get("digest") == self.digest and manifest.get("key") == json.loads(
                    json.dumps(self.key, default=str))):
            return None
        for name, spec in self.arrays.items():
            try:
                array = np.load(self._file(self.path, name), mmap_mode="r")
            except (OSError, ValueError):
                return None
            if array.shape != (self.rows, *spec.shape) or str(array.dtype) != spec.dtype:
                return None
            expected = array.offset + spec.nbytes(self.rows)
            if self._file(self.path, name).stat().st_size != expected:
                return None
        return manifest

    def complete(self) -> bool:
        return self.manifest() is not None

    def open(self) -> dict[str, np.ndarray]:
        """Every array, memory-mapped copy-on-write; raises if the cache is not complete."""
        if not self.complete():
            raise DataError(f"{self.path}: the cache is missing or incomplete. Fix: build it (prepare) first")
        return {name: np.load(self._file(self.path, name), mmap_mode="c") for name in self.arrays}

    # ------------------------------------------------------------- writing
    def _check_space(self) -> None:
        self.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.parent).free
        needed = self.nbytes + (64 << 20)
        if free < needed:
            raise DataError(
                f"{self.parent}: the {self.name} cache needs {needed / 2**30:.2f} GiB but only "
                f"{free / 2**30:.2f} GiB are free. Fix: free disk space, or point cache_dir at a "
                "disk with room"
            )

    def _remove_stale_temps(self) -> None:
        """Temporary directories of this key whose build process is gone (killed builds)."""
        folder = self.parent / self.name
        if not folder.is_dir():
            return
        prefix = f"{TMP_PREFIX}{self.digest[:20]}-"
        for entry in folder.iterdir():
            if not entry.name.startswith(prefix):
                continue
            try:
                pid = int(entry.name[len(prefix):].split("-")[0])
            except ValueError:
                pid = -1
            if pid != os.getpid() and not (pid > 0 and _pid_alive(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    def _remove_stale_versions(self) -> None:
        if self.lineage is None:
            return
        for entry in (self.parent / self.name).iterdir():
            if entry.name.startswith(TMP_PREFIX) or entry == self.path or not entry.is_dir():
                continue
            try:
                other = json.loads((entry / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(other, dict) and other.get("lineage") == self.lineage:
                shutil.rmtree(entry, ignore_errors=True)

    def build(
        self,
        row_fn: RowFn | None,
        *,
        prefilled: Mapping[str, np.ndarray] | None = None,
        workers: int = 1,
        progress: Callable[[int, str], Any] | None = None,
        chunk: int = 256,
        desc: str | None = None,
    ) -> None:
        """Write the cache atomically: ``prefilled`` arrays as given, the rest from ``row_fn``.

        ``row_fn(i)`` runs on ``workers`` threads (decoders such as Pillow release
        the GIL); its first exception stops the build, removes the temporary
        directory and propagates. A cache that is already complete is kept.
        """
        prefilled = dict(prefilled or {})
        unknown = sorted(set(prefilled) - set(self.arrays))
        if unknown:
            raise ValueError(f"cache {self.name!r}: prefilled arrays {unknown} are not declared")
        pending = [n for n in self.arrays if n not in prefilled]
        if pending and row_fn is None:
            raise ValueError(f"cache {self.name!r}: arrays {pending} need a row_fn")
        if self.complete():
            return
        self._check_space()
        self._remove_stale_temps()
        folder = self.parent / self.name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{TMP_PREFIX}{self.digest[:20]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            out = {
                name: np.lib.format.open_memmap(
                    self._file(tmp, name), mode="w+", dtype=spec.dtype, shape=(self.rows, *spec.shape))
                for name, spec in self.arrays.items()
            }
            for name, values in prefilled.items():
                values = np.asarray(values)
                if values.shape != out[name].shape:
                    raise ValueError(f"cache {self.name!r}: prefilled {name!r} has shape {values.shape}, "
                                     f"expected {out[name].shape}")
                out[name][...] = values
            if pending:
                self._fill(out, pending, row_fn, workers, progress, chunk, desc or f"caching {self.name}")
            for array in out.values():
                array.flush()
            out.clear()  # drops the maps
            for name in self.arrays:
                _fsync_path(self._file(tmp, name))
            manifest = {
                "complete": True,
                "format": FORMAT_VERSION,
                "digest": self.digest,
                "key": self.key,
                "lineage": self.lineage,
                "rows": self.rows,
                "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.arrays.items()},
                "meta": self.meta,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            with open(tmp / MANIFEST, "w") as handle:
                json.dump(manifest, handle, indent=1, sort_keys=True, default=str)
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_path(tmp, directory=True)
            self._install(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._remove_stale_versions()

    def _install(self, tmp: Path) -> None:
        final = self.path
        if final.exists():  # an incomplete or damaged copy: move it aside first
            if self.complete():  # another process finished the same build meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return
            trash = final.with_name(f"{TMP_PREFIX}{self.digest[:20]}-{os.getpid()}-old-{uuid.uuid4().hex[:8]}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not self.complete():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_path(final.parent, directory=True)

    def _fill(self, out, names: Sequence[str], row_fn: RowFn, workers: int, progress, chunk: int, desc: str) -> None:
        bar = progress(self.rows, desc) if progress is not None else None

        def fill(start: int, stop: int) -> int:
            for i in range(start, stop):
                row = row_fn(i)
                for name in names:
                    out[name][i] = row[name]
            return stop - start

        starts = range(0, self.rows, max(1, chunk))
        try:
            if workers <= 1:
                for start in starts:
                    done = fill(start, min(start + chunk, self.rows))
                    if bar is not None:
                        bar.update(done)
                return
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(fill, s, min(s + chunk, self.rows)) for s in starts}
                while futures:
                    finished, futures = wait(futures, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        if future.exception() is not None:
                            for other in futures:
                                other.cancel()
                            raise future.exception()
                        if bar is not None:
                            bar.update(future.result())
        finally:
            if bar is not None:
                bar.close()
