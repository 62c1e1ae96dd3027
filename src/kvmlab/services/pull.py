"""Pull images: download (resumable) and verify; then store (imagestore).

The steps are separate functions so each can be tested alone:

* :func:`download` streams a URL into ``cache_dir/downloads/<key>-<name>.part`` with a
  checksum computed while the bytes arrive; an interrupted download is resumed with an HTTP
  ``Range`` request on the next call; a checksum mismatch removes the partial file.
* :func:`pull_image` puts it all together and hands the verified file to
  :func:`kvmlab.services.imagestore.import_image`, which detects its format, unpacks or
  converts it (:mod:`kvmlab.services.imageformat`) and stores it in the image pool.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import re
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from kvmlab import errors
from kvmlab.services import fetch

if TYPE_CHECKING:  # the download path imports no more than it needs
    from kvmlab.env import Env
    from kvmlab.models import Volume

CHUNK = 1 << 20
USER_AGENT = "kvmlab (+https://kvmlab.dev)"
ByteProgress = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None when the server did not say)."""

_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map the pages at once, not page by page
_HEX = re.compile(r"[0-9a-fA-F]+")
_ALGORITHMS = {64: "sha256", 128: "sha512"}


class DownloadFailed(errors.OperationFailed):
    """The server could not be reached or answered with an error (``status``: its HTTP code)."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class DownloadInterrupted(DownloadFailed):
    """The transfer stopped part-way; the partial file is kept for a resume."""


class DownloadCancelled(errors.OperationFailed):
    """The caller stopped the transfer (:func:`download`'s ``cancel``)."""


class ChecksumMismatch(errors.OperationFailed):
    """The downloaded bytes are not the ones the checksum promised (nothing was kept)."""


class Checksum(NamedTuple):
    """An expected digest: ``sha256`` or ``sha512`` and its lower-case hex."""

    algorithm: str
    hexdigest: str

    @classmethod
    def from_hex(cls, hexdigest: str, what: str = "checksum") -> Checksum:
        """A checksum whose algorithm follows from the length (64: SHA-256, 128: SHA-512)."""
        h = hexdigest.strip().lower()
        if not _HEX.fullmatch(h) or len(h) not in _ALGORITHMS:
            raise errors.InvalidInput(
                f"{what} {hexdigest!r} is not a SHA-256 or SHA-512 hex digest",
                hint="give 64 (SHA-256) or 128 (SHA-512) hexadecimal digits",
            )
        return cls(_ALGORITHMS[len(h)], h)


# -- checksum files -------------------------------------------------------------------------
def parse_checksums(text: str, filename: str, source: str = "the checksum file") -> Checksum:
    """Find ``filename``'s digest in a ``SHA256SUMS``/``SHA512SUMS`` text.

    Understands the coreutils format (``HEX  name``, ``HEX *name``) and the BSD one
    (``SHA256 (name) = HEX``).
    """
    bsd = re.compile(r"^(SHA256|SHA512) \((.+)\) = ([0-9a-fA-F]+)$")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = bsd.match(line)
        if m:
            name, digest = m.group(2), m.group(3)
        else:
            parts = line.split(None, 1)
            if len(parts) != 2:
                continue
            digest, name = parts[0], parts[1].lstrip("*").strip()
        if name.removeprefix("./") == filename:
            return Checksum.from_hex(digest, f"the digest of {filename} in {source}")
    raise errors.NotFound(
        f"{source} has no line for {filename!r}",
        hint="check the URL of the checksum file, or give --sha256 yourself",
    )


def fetch_checksum(url: str, filename: str, timeout: float = 30.0) -> Checksum:
    """Download a checksum file and return the digest it lists for ``filename``."""
    with _open(url, {}, timeout) as resp:
        text = resp.read(4 * CHUNK).decode("utf-8", "replace")
    return parse_checksums(text, filename, source=url)


# -- download -------------------------------------------------------------------------------
def url_filename(url: str) -> str:
    """The file name at the end of a URL's path (``download`` if it has none)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "download"


def partial_path(url: str, downloads_dir: Path) -> Path:
    """Where the bytes of ``url`` are collected until the download is complete."""
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return downloads_dir / f"{key}-{url_filename(url)}.part"


def download_lock_path(url: str, downloads_dir: Path) -> Path:
    """The lock file held while ``url`` is downloaded (beside its partial file)."""
    return partial_path(url, downloads_dir).with_suffix(".lock")


def download(
    url: str,
    downloads_dir: Path,
    *,
    checksum: Checksum | None = None,
    progress: ByteProgress | None = None,
    timeout: float = 30.0,
    cancel: threading.Event | None = None,
) -> Path:
    """Download ``url`` into ``downloads_dir``, resuming a partial file; return the file.

    With ``checksum`` the digest is computed while downloading; on mismatch the file is
    removed and :class:`ChecksumMismatch` raised. When ``cancel`` is set the transfer stops
    (:class:`DownloadCancelled`) and what this call wrote is removed (a partial file it
    resumed keeps what it had before).
    """
    from kvmlab.services.locks import file_lock

    downloads_dir.mkdir(parents=True, exist_ok=True)
    part = partial_path(url, downloads_dir)
    lock = download_lock_path(url, downloads_dir)
    with file_lock(lock, f"download of {url}", f"{url} is being downloaded already", remove=True):
        return _download(url, part, checksum, progress, timeout, cancel)


def _download(
    url: str,
    part: Path,
    checksum: Checksum | None,
    progress: ByteProgress | None,
    timeout: float,
    cancel: threading.Event | None = None,
) -> Path:
    offset = part.stat().st_size if part.exists() else 0
    hasher = hashlib.new(checksum.algorithm) if checksum else None
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = _open(url, headers, timeout)
    except DownloadFailed as e:
        if offset and e.status == 416:  # the partial file is the whole file already
            if checksum is not None:
                with part.open("rb") as f:
                    hasher = hashlib.file_digest(f, checksum.algorithm)
            return _finish(part, hasher, checksum)
        raise
    with resp:
        if offset and resp.status != 206:  # the server ignores Range: start again
            offset = 0
        total = _total_size(resp, offset)
        # Read-write (not append): splice(2) refuses O_APPEND files and the checksum is read
        # back from the file (_FileHasher).
        fd = os.open(part, os.O_RDWR | os.O_CREAT | (0 if offset else os.O_TRUNC), 0o644)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            _copy(resp, fd, hasher, offset, total, progress, url, cancel)
        except DownloadCancelled:
            os.ftruncate(fd, offset)
            if not offset:
                part.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
    return _finish(part, hasher, checksum)


def _open(url: str, headers: dict[str, str], timeout: float) -> fetch.Response:
    try:
        resp = fetch.get(url, {"User-Agent": USER_AGENT, **headers}, timeout)
    except ValueError as e:
        raise errors.InvalidInput(str(e), hint="give the image's http:// or https:// URL") from e
    except OSError as e:
        raise DownloadFailed(f"cannot download {url}: {e}") from e
    if resp.status >= 400:
        resp.close()
        raise DownloadFailed(
            f"{url}: HTTP {resp.status} {resp.reason}".rstrip(),
            hint="check the URL" if resp.status == 404 else None,
            status=resp.status,
        )
    return resp


def _total_size(resp: fetch.Response, offset: int) -> int | None:
    if resp.status == 206:
        m = re.search(r"/(\d+)\s*$", resp.headers.get("content-range", ""))
        return int(m.group(1)) if m else None
    length = resp.headers.get("content-length")
    return offset + int(length) if length and length.isdigit() else None


def _copy(
    resp: fetch.Response,
    fd: int,
    hasher: hashlib._Hash | None,
    done: int,
    total: int | None,
    progress: ByteProgress | None,
    url: str,
    cancel: threading.Event | None = None,
) -> None:
    """The body into ``fd`` (at ``done``, what the file holds already); ``hasher`` gets the
    whole file's bytes, those already there first."""
    if progress:
        progress(done, total)
    hashing = _FileHasher(fd, hasher) if hasher is not None else None
    try:
        if hashing:
            hashing.upto(done)
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"the download of {url} was cancelled")
            n = resp.write_to(fd, CHUNK)
            if not n:
                break
            done += n
            if hashing:
                hashing.upto(done)
            if progress:
                progress(done, total)
    except OSError as e:
        raise _interrupted(url, done, total, e) from e
    finally:
        if hashing:
            hashing.finish()
    if total is not None and done < total:
        raise _interrupted(url, done, total, None)


class _FileHasher:
    """Feeds a hasher a file's bytes, in order, on another thread, as they are written.

    The bytes are hashed where the kernel keeps them (a read-only mapping of the file's page
    cache), not copied: with the body spliced into the file
    (:meth:`kvmlab.services.fetch.Response.write_to`) the download never copies a byte into
    Python's memory. hashlib releases the GIL for large buffers, so on two cores the digest
    runs while the next bytes arrive. The work goes in steps of :data:`STEP` bytes (a mapping
    and a thread wake-up each), the rest at :meth:`finish`. A file that cannot be mapped is
    read instead.
    """

    STEP = 4 * CHUNK
    WINDOW = 64 * CHUNK

    def __init__(self, fd: int, hasher: hashlib._Hash) -> None:
        self._fd = fd
        self._hasher = hasher
        self._given = 0  # hashing is asked up to here
        self._last = 0  # the file holds this much
        self._ends: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kvmlab-hash", daemon=True)
        self._thread.start()

    def upto(self, end: int) -> None:
        """The file holds its bytes up to ``end``: hash them (once a step is complete)."""
        if end - self._given >= self.STEP:
            self._ends.put(end)
            self._given = end
        self._last = end

    def finish(self) -> None:
        """Hash what the file holds up to the last :meth:`upto`; wait until it is done."""
        if self._last > self._given:
            self._ends.put(self._last)
        self._ends.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        pos = 0
        try:
            while (end := self._ends.get()) is not None:
                while pos < end:  # a resumed file's bytes come as one step: map them in parts
                    stop = min(end, pos + self.WINDOW)
                    self._hash(pos, stop)
                    pos = stop
        except BaseException as e:  # raised by finish()
            self._error = e
            while self._ends.get() is not None:
                pass

    def _hash(self, start: int, stop: int) -> None:
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(self._fd, stop - base, mmap.MAP_SHARED | _MAP_POPULATE,
                               mmap.PROT_READ, offset=base)  # fmt: skip
        except OSError:  # a file system without mmap
            self._hasher.update(os.pread(self._fd, stop - start, start))
            return
        with mapped, memoryview(mapped) as view, view[start - base :] as part:
            self._hasher.update(part)


def _interrupted(
    url: str, done: int, total: int | None, cause: BaseException | None
) -> DownloadInterrupted:
    of = f" of {total}" if total is not None else ""
    why = f" ({type(cause).__name__})" if cause is not None else ""
    return DownloadInterrupted(
        f"the download of {url} stopped after {done}{of} bytes{why}; the partial file is kept",
        hint="run the same command again to resume where it stopped",
    )


def _finish(part: Path, hasher: hashlib._Hash | None, checksum: Checksum | None) -> Path:
    if checksum is not None and hasher is not None:
        got = hasher.hexdigest()
        if got != checksum.hexdigest:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{checksum.algorithm} of the download is {got}, expected "
                f"{checksum.hexdigest}; the file was removed",
                hint="check --sha256/--checksums; a proxy or mirror may have served other bytes",
            )
    final = part.with_suffix("")
    part.replace(final)
    return final


def pull_image(
    env: Env,
    source: str,
    *,
    name: str | None = None,
    sha256: str | None = None,
    checksums_url: str | None = None,
    progress: ByteProgress | None = None,
    upload_progress: ByteProgress | None = None,
) -> Volume:
    """Download a URL or catalogue image, verify it, and import it as image ``name``."""
    from kvmlab.names import validate_name
    from kvmlab.services import catalog
    from kvmlab.services.imagestore import check_free, default_name, import_image

    if "://" in source:
        url = source
    else:
        entry = catalog.lookup(source)
        url = entry.url
        name = name or entry.name
        checksums_url = checksums_url or (None if sha256 else entry.checksums_url)
    name = validate_name(name or default_name(url), "image")
    if sha256 and checksums_url:
        raise errors.InvalidInput("give --sha256 or --checksums, not both")
    checksum = Checksum.from_hex(sha256, "--sha256") if sha256 else None
    if checksums_url:
        checksum = fetch_checksum(checksums_url, url_filename(url))
    # Whether the name is free needs libvirt (its import, the connection, the pools: ~45 ms);
    # that runs beside the download, which it stops at once if the name cannot be used.
    ready = _Beside(check_free, env, name)
    env.progress(f"downloading {url}")
    try:
        path = download(url, env.cache_dir / "downloads", checksum=checksum, progress=progress,
                        cancel=ready.failed)  # fmt: skip
    except KeyboardInterrupt:
        raise
    except BaseException:
        ready.result()  # the name check's error comes first, as when it ran before (or it
        raise  # is what cancelled the download)
    try:
        ready.result()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    try:
        return import_image(env, path, name, progress=upload_progress, owned=True, checked=True)
    finally:
        path.unlink(missing_ok=True)


class _Beside:
    """``fn(*args)`` on a thread of its own; :attr:`failed` is set as soon as it raises."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self.failed = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., object], args: tuple[object, ...]) -> None:
        try:
            fn(*args)
        except BaseException as e:  # handed to the caller by result()
            self._error = e
            self.failed.set()

    def result(self) -> None:
        """Wait for ``fn``; raise what it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
