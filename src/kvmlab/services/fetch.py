"""A small HTTP/1.1 GET client for image downloads: TLS, redirects, proxies, ``Range``.

``kvmlab image pull`` is measured against curl (bench/bench_pull.py), and importing
``urllib.request`` and ``http.client`` costs ~40 ms before the first byte (they import the
``email`` package and ``ssl``): a sixth of a 256 MiB pull from a local mirror. A download
needs very little of HTTP, so this module speaks it directly over a socket and imports ``ssl``
only for ``https://``.

What it does: one ``GET`` per connection (``Connection: close``), bodies delimited by
``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the connection; redirects
(301, 302, 303, 307, 308, relative or absolute, at most :data:`MAX_REDIRECTS`);
``http_proxy``/``https_proxy``/``no_proxy`` from the environment like curl and urllib (plain
requests through the proxy, ``CONNECT`` tunnels for TLS, ``user:password@`` as Basic auth);
certificates checked against the system's trust store (``SSL_CERT_FILE`` is honoured).
No compression is asked for, so bodies arrive as stored.

:meth:`Response.write_to` moves a body into a file. A plain-TCP body with a length goes by
``splice(2)``, socket to pipe to file, so the bytes never pass through Python's memory: a
download then costs the kernel one copy instead of two (receive into a buffer, write the
buffer), which is what lets a 256 MiB pull from a local mirror beat curl's receive-then-write
loop (bench/bench_pull.py). TLS and chunked bodies are read and written.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import urllib.parse
from typing import Any

MAX_REDIRECTS = 10
MAX_HEADER_LINE = 65536
MAX_HEADERS = 200
_REDIRECTS = (301, 302, 303, 307, 308)
PIPE_SIZE = 1 << 20
"""The splice pipe's capacity (Linux's default limit for unprivileged users, 1 MiB)."""
_F_SETPIPE_SZ = 1031


class FetchError(OSError):
    """The server could not be reached, or broke the protocol (a short or garbled reply)."""


class Response:
    """A response whose body is read with :meth:`readinto`/:meth:`read`; close it after."""

    def __init__(self, sock: socket.socket, file: Any, url: str) -> None:
        """Read the status line and headers from ``file`` (``sock``'s reader)."""
        status, reason, headers = _read_head(file)
        self._sock = sock
        self._file = file
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length", "")
        self._left: int | None = int(length) if length.isdigit() and not self._chunked else None
        self._chunk_left = 0
        self._eof = status in (204, 304)
        self._mode = "new"  # write_to's: "splice" (socket to pipe to file) or "copy"
        self._pipe: tuple[int, int] | None = None  # the splice pipe (read end, write end)
        self._buf: bytearray | None = None  # write_to's buffer when it cannot splice

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._close_pipe()
        self._file.close()
        self._sock.close()

    def write_to(self, fd: int, limit: int) -> int:
        """Move up to ``limit`` body bytes to ``fd`` at its offset; how many (0: the end).

        It may move fewer than ``limit`` before the end; a connection closed before
        ``Content-Length`` bytes ends the body early (the caller compares sizes). A
        plain-TCP body with a length is spliced (see the module's text), anything else read
        and written; so is the rest once the file turns out not to take ``splice``.
        """
        if self._left == 0:
            self._eof = True
        if self._eof or limit <= 0:
            return 0
        if self._mode == "new":
            self._mode = "splice" if self._can_splice() else "copy"
        if self._mode == "splice":
            return self._splice(fd, limit)
        if self._buf is None or len(self._buf) < limit:
            self._buf = bytearray(limit)
        n = self.readinto(memoryview(self._buf)[:limit])
        _write_all(fd, memoryview(self._buf)[:n])
        return n

    def _can_splice(self) -> bool:
        return (
            hasattr(os, "splice")
            and type(self._sock) is socket.socket  # not TLS (ssl.SSLSocket is a subclass)
            and self._left is not None
            and not self._chunked
        )

    def _splice(self, fd: int, limit: int) -> int:
        """Socket to pipe to ``fd``; the bytes moved (0: the connection ended)."""
        assert self._left is not None  # _can_splice: a body with a length
        want = min(limit, self._left, PIPE_SIZE)
        if self._pipe is None:
            self._pipe = _splice_pipe()
            # The first call. The body's first bytes may sit in the header reader's buffer:
            # those go first (read1 returns only buffered bytes when there are any; with none
            # it reads the socket once), then the socket is all there is.
            if first := self._file.read1(want):
                self._left -= len(first)
                return _write_all(fd, first)
        pipe_r, pipe_w = self._pipe
        while True:
            try:
                n = os.splice(self._sock.fileno(), pipe_w, want)
                break
            except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                timeout = self._sock.gettimeout()
                if not select.select([self._sock], [], [], timeout)[0]:
                    raise TimeoutError("timed out") from None
        if n == 0:  # the connection ended
            self._eof = True
            return 0
        moved = 0
        try:
            while moved < n:
                moved += os.splice(pipe_r, fd, n - moved)
        except OSError as e:
            if e.errno != errno.EINVAL or moved:
                raise
            # This file system has no splice: write out what the pipe holds, then read and
            # write from now on.
            while moved < n:
                moved += _write_all(fd, os.read(pipe_r, n - moved))
            self._close_pipe()
            self._mode = "copy"
        self._left -= n
        return n

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            for end in self._pipe:
                os.close(end)
            self._pipe = None

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill ``buf`` with body bytes; fewer only at the end of the body; 0 at its end.

        A connection that ends inside a chunked body raises :class:`FetchError`; one that
        ends before ``Content-Length`` bytes returns short (the caller compares sizes).
        """
        view = memoryview(buf)
        if self._eof:
            return 0
        if not self._chunked:
            if self._left is not None:
                view = view[: self._left]
            n = self._file.readinto(view) if len(view) else 0
            if self._left is not None:
                self._left -= n
            if n == 0 or self._left == 0:
                self._eof = True
            return n
        done = 0
        while done < len(view):
            if self._chunk_left == 0 and not self._next_chunk():
                break
            want = min(len(view) - done, self._chunk_left)
            n = self._file.readinto(view[done : done + want])
            if n == 0:
                raise FetchError("the connection closed inside a chunked body")
            done += n
            self._chunk_left -= n
            if self._chunk_left == 0:
                self._file.readline(MAX_HEADER_LINE)  # the CRLF after each chunk
        return done

    def _next_chunk(self) -> bool:
        line = self._file.readline(MAX_HEADER_LINE)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise FetchError(f"bad chunk size line {line[:40]!r}") from None
        if size == 0:
            while self._file.readline(MAX_HEADER_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._eof = True
            return False
        self._chunk_left = size
        return True

    def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body."""
        buf = bytearray(limit)
        n = 0
        while n < limit and (got := self.readinto(memoryview(buf)[n:])):
            n += got
        return bytes(buf[:n])


def _splice_pipe() -> tuple[int, int]:
    pipe_r, pipe_w = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the default capacity (64 KiB) works, in more steps
    return pipe_r, pipe_w


def _write_all(fd: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done


def _read_head(f: Any) -> tuple[int, str, dict[str, str]]:
    line = f.readline(MAX_HEADER_LINE)
    if not line:
        raise FetchError("the server closed the connection without answering")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise FetchError(f"not an HTTP response: {line[:60]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        raw = f.readline(MAX_HEADER_LINE)
        if raw in (b"\r\n", b"\n", b""):
            return int(parts[1]), parts[2] if len(parts) > 2 else "", headers
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    raise FetchError(f"more than {MAX_HEADERS} header lines")


def proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL for a request, from ``{scheme}_proxy`` and ``no_proxy`` (either case)."""
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in (e.strip().lstrip(".").lower() for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    proxy = os.environ.get(f"{scheme}_proxy") or os.environ.get(f"{scheme.upper()}_PROXY")
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy
    return proxy or None


def get(url: str, headers: dict[str, str], timeout: float) -> Response:
    """``GET url``, following redirects; the response of any final status (check it)."""
    for _ in range(MAX_REDIRECTS + 1):
        resp = _get_once(url, headers, timeout)
        location = resp.headers.get("location")
        if resp.status not in _REDIRECTS or not location:
            return resp
        resp.close()
        url = urllib.parse.urljoin(url, location)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects, the last to {url}")


def _split(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, request target)``; ValueError for what is not http(s)."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError(f"{url!r} contains spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


def _host_header(host: str, port: int, scheme: str) -> str:
    name = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return name if port == default else f"{name}:{port}"


def _basic_auth(proxy: urllib.parse.SplitResult) -> str | None:
    if proxy.username is None:
        return None
    import base64

    user = urllib.parse.unquote(proxy.username)
    password = urllib.parse.unquote(proxy.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _request(target: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _get_once(url: str, headers: dict[str, str], timeout: float) -> Response:
    scheme, host, port, target = _split(url)
    all_headers = {
        "Host": _host_header(host, port, scheme),
        "Accept-Encoding": "identity",
        "Connection": "close",
        **headers,
    }
    proxy_url = proxy_for(scheme, host)
    proxy = urllib.parse.urlsplit(proxy_url) if proxy_url else None
    try:
        if proxy is None:
            sock = socket.create_connection((host, port), timeout=timeout)
        else:
            sock = socket.create_connection((proxy.hostname or "", proxy.port or 80), timeout)
    except OSError as e:
        raise FetchError(str(e) or type(e).__name__) from e
    try:
        if proxy is not None and scheme == "http":
            target = url.split("#", 1)[0]  # a proxy is given the absolute URL
            if auth := _basic_auth(proxy):
                all_headers["Proxy-Authorization"] = auth
        elif proxy is not None:
            _tunnel(sock, host, port, _basic_auth(proxy))
        if scheme == "https":
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.sendall(_request(target, all_headers))
        file = sock.makefile("rb")
        try:
            return Response(sock, file, url)
        except BaseException:
            file.close()
            raise
    except BaseException as e:
        sock.close()
        if isinstance(e, OSError) and not isinstance(e, FetchError):
            raise FetchError(str(e) or type(e).__name__) from e
        raise


def _tunnel(sock: socket.socket, host: str, port: int, auth: str | None) -> None:
    """Ask an HTTP proxy for a TCP tunnel to ``host:port`` (for TLS through it)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = [f"CONNECT {address} HTTP/1.1", f"Host: {address}"]
    if auth:
        head.append(f"Proxy-Authorization: {auth}")
    sock.sendall(("\r\n".join([*head, "", ""])).encode("latin-1"))
    f = sock.makefile("rb")
    try:
        status, reason, _ = _read_head(f)
    finally:
        f.close()
    if status != 200:
        raise FetchError(f"the proxy refused a tunnel to {address}: HTTP {status} {reason}")
