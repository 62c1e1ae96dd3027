"""kvmlab's HTTP client (kvmlab.services.fetch) against scripted servers on 127.0.0.1.

Each server is a socket on loopback that reads one request per connection and answers with
the bytes a test scripted, so bodies can be chunked, cut short or garbled at will. The HTTPS
test makes a self-signed certificate with ``openssl`` and trusts it through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.services import fetch, pull

Reply = Callable[[bytes], bytes]
"""Given the request head (request line + headers), the bytes to answer with."""


class Scripted:
    """A loopback server: ``replies[path]`` answers requests for ``path``; records heads."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.replies: dict[str, Reply] = {}
        self.heads: list[bytes] = []
        self._tls = tls
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                got = conn.recv(4096)
                if not got:
                    return
                head += got
            self.heads.append(head)
            target = head.split(b" ", 2)[1].decode()
            path = "/" + target.split("://", 1)[1].split("/", 1)[1] if "://" in target else target
            reply = self.replies.get(path)
            conn.sendall(reply(head) if reply else b"HTTP/1.1 404 Not Found\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._sock.close()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


def fixed(body: bytes, status: str = "200 OK", extra: str = "") -> Reply:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
    return lambda _head: head + body


def chunked(pieces: list[bytes], trailer: str = "") -> Reply:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for p in pieces:
        out += f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n"
    out += f"0\r\n{trailer}\r\n".encode()
    return lambda _head: out


@pytest.fixture
def server() -> Iterator[Scripted]:
    s = Scripted()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def _body(resp: fetch.Response, size: int = 7) -> bytes:
    """The whole body, read into a small buffer so reads cross chunk boundaries."""
    out = b""
    buf = bytearray(size)
    while n := resp.readinto(buf):
        out += bytes(buf[:n])
    return out


def test_content_length_body_and_request_head(server: Scripted) -> None:
    server.replies["/a?x=1"] = fixed(b"hello world", extra="X-Thing: yes\r\n")
    with fetch.get(server.url("/a?x=1"), {"Range": "bytes=3-"}, timeout=5) as resp:
        assert (resp.status, resp.reason) == (200, "OK")
        assert resp.headers["x-thing"] == "yes"
        assert _body(resp) == b"hello world"
    head = server.heads[0].decode()
    assert head.startswith("GET /a?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head
    assert "Range: bytes=3-\r\n" in head and "Accept-Encoding: identity\r\n" in head


def test_chunked_body_with_extensions_and_trailers(server: Scripted) -> None:
    pieces = [b"a" * 10, b"b" * 3, b"c" * 20]
    server.replies["/c"] = chunked(pieces, trailer="X-Sum: 1\r\n")
    with fetch.get(server.url("/c"), {}, timeout=5) as resp:
        assert _body(resp) == b"".join(pieces)
        assert resp.readinto(bytearray(4)) == 0


def test_chunked_body_cut_short_is_an_error(server: Scripted) -> None:
    server.replies["/c"] = lambda _h: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"
    )
    with fetch.get(server.url("/c"), {}, timeout=5) as resp, pytest.raises(fetch.FetchError):
        _body(resp)


def test_body_until_close_without_length(server: Scripted) -> None:
    server.replies["/n"] = lambda _h: b"HTTP/1.0 200 OK\r\n\r\n" + b"z" * 5000
    with fetch.get(server.url("/n"), {}, timeout=5) as resp:
        assert _body(resp, 1024) == b"z" * 5000


def test_redirects_relative_and_absolute(server: Scripted) -> None:
    server.replies["/one"] = fixed(b"", "301 Moved", f"Location: {server.url('/two')}\r\n")
    server.replies["/two"] = fixed(b"", "302 Found", "Location: ../dir/three\r\n")
    server.replies["/dir/three"] = fixed(b"done")
    with fetch.get(server.url("/one"), {"Range": "bytes=1-"}, timeout=5) as resp:
        assert resp.status == 200 and _body(resp) == b"done"
        assert resp.url == server.url("/dir/three")
    assert all(b"Range: bytes=1-" in h for h in server.heads)


def test_redirect_loop_is_refused(server: Scripted) -> None:
    server.replies["/loop"] = fixed(b"", "307 Again", "Location: /loop\r\n")
    with pytest.raises(fetch.FetchError, match="more than 10 redirects"):
        fetch.get(server.url("/loop"), {}, timeout=5)


@pytest.mark.parametrize(
    "reply",
    [b"", b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"],
    ids=["closed", "not-http", "bad-status"],
)
def test_garbage_answers_are_fetch_errors(server: Scripted, reply: bytes) -> None:
    server.replies["/x"] = lambda _h: reply
    with pytest.raises(fetch.FetchError):
        fetch.get(server.url("/x"), {}, timeout=5)


def test_bad_urls_are_value_errors() -> None:
    for url in ("ftp://host/x", "http:///nohost", "http://host/a b", "http://host/\nx"):
        with pytest.raises(ValueError):
            fetch.get(url, {}, timeout=1)


def test_plain_http_goes_through_the_proxy_with_basic_auth(
    server: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the "proxy" is the scripted server; the origin named in the URL does not exist
    server.replies["/img"] = fixed(b"via proxy")
    monkeypatch.setenv("http_proxy", f"http://user:p%40ss@127.0.0.1:{server.port}")
    with fetch.get("http://images.invalid:8080/img", {}, timeout=5) as resp:
        assert _body(resp) == b"via proxy"
    head = server.heads[0].decode()
    assert head.startswith("GET http://images.invalid:8080/img HTTP/1.1\r\n")
    assert "Host: images.invalid:8080\r\n" in head
    assert "Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in head  # user:p@ss


def test_no_proxy_bypasses_the_proxy(server: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    server.replies["/d"] = fixed(b"direct")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "example.org, 127.0.0.1")
    with fetch.get(server.url("/d"), {}, timeout=5) as resp:
        assert _body(resp) == b"direct"
    assert fetch.proxy_for("http", "a.example.org") is None
    assert fetch.proxy_for("http", "example.com") == "http://127.0.0.1:9"
    assert fetch.proxy_for("https", "example.com") is None


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def _tls_server(key: Path, cert: Path) -> Scripted:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return Scripted(tls=ctx)


def test_https_checks_the_certificate(
    tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, cert = tls_files
    server = _tls_server(key, cert)
    try:
        server.replies["/s"] = fixed(b"secret bytes")
        with pytest.raises(fetch.FetchError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch.get(server.url("/s", "https"), {}, timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now the system trusts it
        with fetch.get(server.url("/s", "https"), {}, timeout=5) as resp:
            assert _body(resp) == b"secret bytes"
    finally:
        server.close()


def test_https_through_a_connect_tunnel(
    tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, cert = tls_files
    origin = _tls_server(key, cert)
    origin.replies["/t"] = fixed(b"tunnelled")
    proxy = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def tunnel() -> None:
        conn, _ = proxy.accept()
        seen.append(conn.recv(4096))
        up = socket.create_connection(("127.0.0.1", origin.port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(a: socket.socket, b: socket.socket) -> None:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(up, conn), daemon=True)
        t.start()
        pump(conn, up)
        t.join(5)
        conn.close()
        up.close()

    thread = threading.Thread(target=tunnel, daemon=True)
    thread.start()
    monkeypatch.setenv("https_proxy", f"127.0.0.1:{proxy.getsockname()[1]}")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        with fetch.get(origin.url("/t", "https"), {}, timeout=5) as resp:
            assert _body(resp) == b"tunnelled"
        assert seen[0].startswith(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n".encode())
    finally:
        proxy.close()
        origin.close()


def test_pull_download_of_a_chunked_redirected_image(server: Scripted, tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # ~2.2 MiB: several 1 MiB buffers, chunk edges inside
    server.replies["/latest"] = fixed(b"", "302 Found", "Location: /files/img.qcow2\r\n")
    server.replies["/files/img.qcow2"] = chunked(
        [data[i : i + 300000] for i in range(0, len(data), 300000)]
    )
    checksum = pull.Checksum.from_hex(hashlib.sha256(data).hexdigest())
    path = pull.download(server.url("/latest"), tmp_path, checksum=checksum)
    assert path.read_bytes() == data


def test_pull_reports_a_refused_tunnel_and_bad_scheme(
    server: Scripted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{server.port}")
    # the scripted server answers the CONNECT with 404: it has no reply for "host:port"
    with pytest.raises(pull.DownloadFailed, match=r"cannot download .*proxy refused a tunnel"):
        pull.download("https://images.invalid/x.qcow2", tmp_path, timeout=5)
    with pytest.raises(errors.InvalidInput, match="not an http:// or https:// URL"):
        pull.download("file:///etc/passwd", tmp_path)


# -- Response.write_to: the body into a file, spliced when it can be -------------------------
BIG = bytes(range(251)) * 12000  # ~2.9 MiB: several pipe loads, a prime period


@pytest.fixture
def splices(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts os.splice calls (fetch's only way to splice)."""
    calls: list[int] = []
    real = os.splice

    def counting(src: int, dst: int, count: int, *args: int) -> int:
        calls.append(count)
        return real(src, dst, count, *args)

    monkeypatch.setattr(os, "splice", counting)
    return calls


def _fetch_to_file(
    url: str, out: Path, flags: int = 0, before: bytes = b"", timeout: float = 5
) -> int:
    """GET ``url`` and write_to its whole body into ``out`` (opened with ``flags`` too, after
    ``before`` is written there); the bytes write_to moved."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | flags)
    try:
        os.write(fd, before)
        with fetch.get(url, {}, timeout=timeout) as resp:
            total = 0
            while n := resp.write_to(fd, 1 << 20):
                total += n
            assert resp.write_to(fd, 1 << 20) == 0  # and stays at the end
            return total
    finally:
        os.close(fd)


def test_write_to_splices_a_plain_body_into_the_file(
    server: Scripted, tmp_path: Path, splices: list[int]
) -> None:
    # head and body in one send: the body's first bytes arrive in the header reader's buffer
    server.replies["/big"] = fixed(BIG)
    out = tmp_path / "out"  # write_to writes at the descriptor's offset, after "kept"
    assert _fetch_to_file(server.url("/big"), out, before=b"kept") == len(BIG)
    assert out.read_bytes() == b"kept" + BIG
    assert len(splices) >= 2  # socket to pipe, pipe to file


def test_write_to_reads_and_writes_a_chunked_body(
    server: Scripted, tmp_path: Path, splices: list[int]
) -> None:
    server.replies["/c"] = chunked([BIG[i : i + 700000] for i in range(0, len(BIG), 700000)])
    assert _fetch_to_file(server.url("/c"), tmp_path / "out") == len(BIG)
    assert (tmp_path / "out").read_bytes() == BIG
    assert splices == []


def test_write_to_reads_and_writes_a_tls_body(
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    splices: list[int],
) -> None:
    key, cert = tls_files
    server = _tls_server(key, cert)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        server.replies["/s"] = fixed(BIG)
        assert _fetch_to_file(server.url("/s", "https"), tmp_path / "out") == len(BIG)
    finally:
        server.close()
    assert (tmp_path / "out").read_bytes() == BIG
    assert splices == []


def test_write_to_falls_back_when_the_file_takes_no_splice(
    server: Scripted, tmp_path: Path, splices: list[int]
) -> None:
    server.replies["/big"] = fixed(BIG)
    # Linux refuses to splice into a file opened for appending (EINVAL), as into a file
    # system without splice: what the pipe holds is written out, the rest read and written.
    assert _fetch_to_file(server.url("/big"), tmp_path / "out", os.O_APPEND) == len(BIG)
    assert (tmp_path / "out").read_bytes() == BIG
    assert len(splices) == 2  # socket to pipe, the refused pipe to file; no splice after


def test_write_to_stops_where_the_connection_ends(server: Scripted, tmp_path: Path) -> None:
    server.replies["/cut"] = lambda _h: b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + (
        b"x" * 300000
    )
    # the caller compares with the length
    assert _fetch_to_file(server.url("/cut"), tmp_path / "out") == 300000
    assert (tmp_path / "out").read_bytes() == b"x" * 300000


def test_write_to_times_out_when_the_server_stalls(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def stall() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 10)
        release.wait(10)
        conn.close()

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/s"
    try:
        with pytest.raises(TimeoutError):
            _fetch_to_file(url, tmp_path / "out", timeout=0.3)
    finally:
        release.set()
        listener.close()
        thread.join(5)
    assert (tmp_path / "out").read_bytes() == b"y" * 10
