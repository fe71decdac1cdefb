"""End to end: the options of ``asgictl serve`` (TLS, binding, proxies, headers, limits,
timeouts, environment files, logging, interfaces, app loading, lifespan), each checked on
the real server in a subprocess with real clients."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import support
import trustme
from cryptography.hazmat.primitives import serialization
from support import ServerProcess, raw_request, read_all, run_asgictl

import asgictl

TIMEOUT = 10.0


def scope_of(server: ServerProcess, path: str = "/scope", **kw: object) -> dict:
    r = httpx.get(server.url + path, timeout=TIMEOUT, **kw)  # type: ignore[arg-type]
    assert r.status_code == 200
    return r.json()


def poll(predicate, timeout: float = TIMEOUT, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Call ``predicate`` until it returns a true value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_file_line(path: Path, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    regex = re.compile(pattern)

    def found() -> re.Match[str] | None:
        return regex.search(path.read_text()) if path.exists() else None

    return poll(found, timeout, f"{pattern!r} in {path}")


def closed_within(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes ``sock`` (EOF or reset); fails past ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return time.monotonic() - start
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout}s") from None
        if not data:
            return time.monotonic() - start


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, a client certificate, as files."""
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@example.org")
    files = {
        "ca": d / "ca.pem",
        "cert": d / "server.pem",
        "key": d / "server.key",
        "enc_key": d / "server-encrypted.key",
        "client": d / "client.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    with files["cert"].open("wb") as fh:
        for blob in server_cert.cert_chain_pems:
            fh.write(blob.bytes())
    key = serialization.load_pem_private_key(server_cert.private_key_pem.bytes(), password=None)
    files["enc_key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return files


def client_context(tls: dict[str, Path], with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(tls["client"]))
    return ctx


def test_tls_serves_https_verified_by_the_ca(tls: dict[str, Path]) -> None:
    args = [
        "serve",
        "basic:app",
        "--port",
        "0",
        "--ssl-certfile",
        str(tls["cert"]),
        "--ssl-keyfile",
        str(tls["key"]),
    ]
    with run_asgictl(args) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=client_context(tls), timeout=TIMEOUT) as client:
            body = client.get(server.url + "/scope").json()
            assert body["scheme"] == "https"
            assert client.get(server.url + "/").text == "Hello, world!"
        # A client that does not trust the CA refuses the server.
        with pytest.raises(httpx.ConnectError), httpx.Client(timeout=TIMEOUT) as client:
            client.get(server.url + "/")
        # Plain HTTP to the TLS port does not take the worker down.
        raw_request("127.0.0.1", server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        with httpx.Client(verify=client_context(tls), timeout=TIMEOUT) as client:
            assert client.get(server.url + "/").status_code == 200


def test_tls_encrypted_key_with_password(tls: dict[str, Path]) -> None:
    base = [
        "serve",
        "basic:app",
        "--port",
        "0",
        "--ssl-certfile",
        str(tls["cert"]),
        "--ssl-keyfile",
        str(tls["enc_key"]),
    ]
    with run_asgictl([*base, "--ssl-keyfile-password", "s3cret"]) as server:
        with httpx.Client(verify=client_context(tls), timeout=TIMEOUT) as client:
            assert client.get(server.url + "/scope").json()["scheme"] == "https"
    with run_asgictl([*base, "--ssl-keyfile-password", "wrong"], ready=False) as server:
        assert server.wait_exit(30) != 0
        assert "Traceback" not in server.output
        errors = [line for line in server.output.splitlines() if line.startswith("asgictl: error:")]
        assert len(errors) == 1 and "--ssl-certfile/--ssl-keyfile" in errors[0]


def test_tls_client_certificate_required(tls: dict[str, Path]) -> None:
    args = [
        "serve", "basic:app", "--port", "0",
        "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
        "--ssl-cert-reqs", "2", "--ssl-ca-certs", str(tls["ca"]),
    ]  # fmt: skip
    with run_asgictl(args) as server:
        with (
            pytest.raises(httpx.TransportError),
            httpx.Client(verify=client_context(tls), timeout=TIMEOUT) as c,
        ):
            c.get(server.url + "/")
        with httpx.Client(verify=client_context(tls, with_cert=True), timeout=TIMEOUT) as client:
            r = client.get(server.url + "/scope")
            assert r.status_code == 200 and r.json()["scheme"] == "https"


# -------------------------------------------------------------------------------- binding


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_host() -> None:
    with run_asgictl(["serve", "basic:app", "--host", "::1", "--port", "0"]) as server:
        assert server.url.startswith("http://[::1]:")
        body = scope_of(server)
        assert body["client"][0] == "::1" and body["server"][0] == "::1"


def test_fd_serves_on_an_inherited_socket() -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    try:
        with run_asgictl(
            ["serve", "basic:app", "--fd", str(sock.fileno())], pass_fds=(sock.fileno(),)
        ) as server:
            assert server.url == f"http://127.0.0.1:{port}"
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).text == "Hello, world!"
    finally:
        sock.close()


def test_fd_that_is_not_a_socket_is_one_line(tmp_path: Path) -> None:
    with (
        (tmp_path / "f").open("w") as fh,
        run_asgictl(
            ["serve", "basic:app", "--fd", str(fh.fileno())], pass_fds=(fh.fileno(),), ready=False
        ) as server,
    ):
        assert server.wait_exit(30) != 0
        assert "Traceback" not in server.output
        assert re.search(r"^asgictl: error: --fd: ", server.output, re.M), server.output


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the listen backlog")
def test_backlog_reaches_listen() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--backlog", "123"]) as server:
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        # For a listening socket, ss shows the backlog in the Send-Q column.
        assert out.split()[2] == "123", out
        assert httpx.get(server.url, timeout=TIMEOUT).status_code == 200


def test_port_in_use_is_one_line_and_nonzero() -> None:
    taken = listening_socket()
    port = taken.getsockname()[1]
    try:
        with run_asgictl(["serve", "basic:app", "--port", str(port)], ready=False) as server:
            assert server.wait_exit(30) != 0
            out = server.output
            assert "Traceback" not in out
            errors = [line for line in out.splitlines() if "error" in line.lower()]
            assert errors == [
                f"asgictl: error: --host/--port: cannot bind 127.0.0.1:{port}: Address already in use"
            ]
    finally:
        taken.close()


# ------------------------------------------------------------------------ proxy headers

FORWARDED = {"X-Forwarded-For": "5.6.7.8, 1.2.3.4", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, ("1.2.3.4", "https")),  # default: 127.0.0.1 trusted, proxy headers on
        (["--proxy-headers", "--forwarded-allow-ips", "10.0.0.1"], {}, ("127.0.0.1", "http")),
        (["--forwarded-allow-ips", "10.0.0.0/8, 127.0.0.0/8"], {}, ("1.2.3.4", "https")),
        (["--forwarded-allow-ips", "*"], {}, ("5.6.7.8", "https")),  # all trusted: the leftmost
        (["--no-proxy-headers"], {}, ("127.0.0.1", "http")),
        ([], {"FORWARDED_ALLOW_IPS": "10.0.0.1"}, ("127.0.0.1", "http")),
    ],
    ids=["default", "untrusted-peer", "cidr", "star", "no-proxy-headers", "env-alias"],
)
def test_proxy_headers(args: list[str], env: dict[str, str], expected: tuple[str, str]) -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", *args], env=support.test_env(**env)) as server:
        body = scope_of(server, headers=FORWARDED)
        assert (body["client"][0], body["scheme"]) == expected
        plain = scope_of(server)
        assert (plain["client"][0], plain["scheme"]) == ("127.0.0.1", "http")


# ------------------------------------------------------------------------------ headers


def test_server_and_date_headers_off_and_extra_headers() -> None:
    args = ["--no-server-header", "--no-date-header", "--header", "X-A:1", "--header", "X-B: two words"]
    with run_asgictl(["serve", "basic:app", "--port", "0", *args]) as server:
        for path, status in (("/", 200), ("/stream", 200), ("/error", 500)):
            r = httpx.get(server.url + path, timeout=TIMEOUT)
            assert r.status_code == status
            assert "server" not in r.headers and "date" not in r.headers
            assert r.headers["x-a"] == "1" and r.headers["x-b"] == "two words"
        # Malformed requests are answered by the server itself, with the same defaults.
        data = raw_request("127.0.0.1", server.port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 400") and b"x-a: 1\r\n" in data.lower()
        assert b"server:" not in data.lower()


def test_default_date_header_is_current() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        r = httpx.get(server.url, timeout=TIMEOUT)
        from email.utils import parsedate_to_datetime

        assert abs(parsedate_to_datetime(r.headers["date"]).timestamp() - time.time()) < 5
        assert r.headers["server"] == "asgictl"


# ------------------------------------------------------------------------------- limits


def test_limit_concurrency_answers_503_while_busy() -> None:
    with run_asgictl(["serve", "extra:app", "--port", "0", "--limit-concurrency", "1"]) as server:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            slow.sendall(b"GET /sleep?4&busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            server.wait_for_line(r"sleep busy started")
            r = httpx.get(server.url + "/", timeout=TIMEOUT)
            assert r.status_code == 503
            assert r.headers["connection"] == "close"
            data = read_all(slow, 30)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slept")
        finally:
            slow.close()
        # Capacity is back once the slow one is done (its connection may take a tick to go).
        poll(lambda: httpx.get(server.url + "/", timeout=TIMEOUT).status_code == 200, what="a 200")


def test_limit_max_requests_exits_by_itself() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--limit-max-requests", "3"]) as server:
        for _ in range(3):
            assert httpx.get(server.url, timeout=TIMEOUT).status_code == 200
        assert server.wait_exit(20) == 0
        assert "Maximum request limit of 3 exceeded" in server.output
        assert "lifespan shutdown ran" in server.output


# ----------------------------------------------------------------------------- timeouts


def test_timeout_keep_alive_closes_idle_connection() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--timeout-keep-alive", "1"]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"Hello, world!"):
                data += sock.recv(65536)
            assert b"connection: close" not in data
            elapsed = closed_within(sock, 10)
        # Closed after about a second of idleness (the check runs once a second), not at once.
        assert 0.8 <= elapsed <= 4, elapsed


def test_timeout_graceful_shutdown_bounds_the_stop() -> None:
    args = ["serve", "extra:app", "--port", "0", "--timeout-graceful-shutdown", "1"]
    with run_asgictl(args) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        try:
            sock.sendall(b"GET /sleep?30&inflight HTTP/1.1\r\nHost: x\r\n\r\n")
            server.wait_for_line(r"sleep inflight started")
            start = time.monotonic()
            server.signal(signal.SIGTERM)
            assert server.wait_exit(15) == 0
            assert time.monotonic() - start < 8
            closed_within(sock, 5)
        finally:
            sock.close()
        # The request's task was found (state.tasks) and cancelled.
        assert "Graceful shutdown timed out: cancelling 1 request," in server.output
        assert "lifespan shutdown ran" in server.output


# ----------------------------------------------------------------------------- env file


#: Every form of a dotenv file a uvicorn user may write (python-dotenv's grammar).
ENV_FILE = """\
# settings for the test
MY_TEST_VAR=from the env file
SPACED = spaced value   # trailing comment
export QUOTED="two\\nlines"
GREETING="héllo wörld"
UNQUOTED_UTF8=grüße
DOUBLE="a \\"quoted\\" value\\twith escapes # not a comment"
SINGLE='kept $as is ${MY_TEST_VAR}'
EMPTY=
NO_VALUE
WITH_EQUALS=a=b=c
EXPANDED=${MY_TEST_VAR}/sub
FROM_ENVIRONMENT=${ALREADY_SET}!
DEFAULTED=${NOT_SET_ANYWHERE:-fallback}
ALREADY_SET=from the file
MULTI_LINE="line one
line two"
THIS LINE IS NOT AN ASSIGNMENT
AFTER_A_BAD_LINE=still read
ASGICTL_ROOT_PATH=/via-env-file
"""
ENV_NAMES = [*re.findall(r"(?m)^(?:export )?([A-Z_]+)(?:=| =)", ENV_FILE), "NO_VALUE"]


def test_env_file_gives_what_dotenv_gives_uvicorn(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text(ENV_FILE, encoding="utf-8")
    env = support.test_env(ALREADY_SET="from the real environment")
    # The oracle: python-dotenv's load_dotenv(), as uvicorn calls it, in the same environment.
    oracle = subprocess.run(
        [
            sys.executable,
            "-c",
            "import dotenv, json, os, sys; dotenv.load_dotenv(dotenv_path=sys.argv[1]);"
            " print(json.dumps({n: os.environ.get(n, '<unset>') for n in sys.argv[2:]}))",
            str(env_file),
            *ENV_NAMES,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    expected = json.loads(oracle.stdout)
    # The oracle itself reads the file as a user expects (so the comparison means something).
    assert expected["GREETING"] == "héllo wörld" and expected["EXPANDED"] == "from the env file/sub"
    assert expected["FROM_ENVIRONMENT"] == "from the real environment!"
    assert expected["MULTI_LINE"] == "line one\nline two" and expected["NO_VALUE"] == "<unset>"
    with run_asgictl(["serve", "extra:app", "--port", "0", "--env-file", str(env_file)], env=env) as server:

        def var(name: str) -> str:
            return httpx.get(f"{server.url}/env?{name}", timeout=TIMEOUT).text

        assert {name: var(name) for name in ENV_NAMES} == expected
        # An ASGICTL_ variable set by the file configures the server too.
        assert scope_of(server)["root_path"] == "/via-env-file"
    assert "python-dotenv could not parse statement starting at line 18" in server.output


def test_missing_env_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    with run_asgictl(["serve", "basic:app", "--env-file", str(missing)], ready=False) as server:
        assert server.wait_exit(30) == 2
        assert server.output.strip() == f"asgictl: error: --env-file: '{missing}' is not a readable file"


# ------------------------------------------------------------------------------ logging


def _dict_log_config(log_file: Path) -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "plain"}
        },
        "loggers": {
            "asgictl": {"handlers": ["file"], "level": "INFO", "propagate": False},
            "asgictl.access": {"handlers": ["file"], "level": "INFO", "propagate": False},
        },
    }


def _write_log_config(kind: str, directory: Path, log_file: Path) -> Path:
    if kind == "json":
        path = directory / "log.json"
        path.write_text(json.dumps(_dict_log_config(log_file)))
    elif kind == "yaml":
        import yaml

        path = directory / "log.yaml"
        path.write_text(yaml.safe_dump(_dict_log_config(log_file)))
    else:
        path = directory / "log.ini"
        path.write_text(
            textwrap.dedent(
                f"""\
                [loggers]
                keys=root,asgictl,access

                [handlers]
                keys=file

                [formatters]
                keys=plain

                [logger_root]
                level=WARNING
                handlers=

                [logger_asgictl]
                level=INFO
                handlers=file
                qualname=asgictl
                propagate=0

                [logger_access]
                level=INFO
                handlers=file
                qualname=asgictl.access
                propagate=0

                [handler_file]
                class=FileHandler
                args=({str(log_file)!r}, 'a')
                formatter=plain

                [formatter_plain]
                format=%(levelname)s %(name)s %(message)s
                """
            )
        )
    return path


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config_routes_logs_to_a_file(kind: str, tmp_path: Path) -> None:
    log_file = tmp_path / "asgictl.log"
    config = _write_log_config(kind, tmp_path, log_file)
    with run_asgictl(
        ["serve", "basic:app", "--port", "0", "--log-config", str(config)], ready=False
    ) as server:
        url = wait_file_line(log_file, r"INFO asgictl.error Asgictl running on (\S+)").group(1)
        assert httpx.get(url + "/?from=test", timeout=TIMEOUT).status_code == 200
        wait_file_line(log_file, r'INFO asgictl.access 127\.0\.0\.1:\d+ - "GET /\?from=test HTTP/1\.1" 200')
        server.signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0
        # Nothing of asgictl's on the console: it all went to the file.
        assert "running on" not in server.output and "GET /" not in server.output
        assert "Application shutdown complete" in log_file.read_text()


def test_bad_log_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "log.json"
    bad.write_text("{not json")
    with run_asgictl(["serve", "basic:app", "--log-config", str(bad)], ready=False) as server:
        assert server.wait_exit(30) == 2
        out = server.output.strip()
        assert "\n" not in out and out.startswith(f"asgictl: error: --log-config: cannot load '{bad}'")


def test_log_level_trace_shows_connection_events() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--log-level", "trace"]) as server:
        assert httpx.get(server.url, timeout=TIMEOUT).status_code == 200
        server.wait_for_line(r"^TRACE: +127\.0\.0\.1:\d+ - HTTP connection made")
        server.wait_for_line(r"^TRACE: +127\.0\.0\.1:\d+ - HTTP connection lost")


def test_log_level_debug_shows_debug_but_not_trace() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--log-level", "debug"]) as server:
        raw_request("127.0.0.1", server.port, b"NOT HTTP\r\n\r\n")
        server.wait_for_line(r"^DEBUG: +Invalid HTTP request")
        assert httpx.get(server.url + "/?sync", timeout=TIMEOUT).status_code == 200
        server.wait_for_line(r'"GET /\?sync HTTP/1.1" 200')
        assert "TRACE" not in server.output


def test_log_level_info_hides_debug() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        raw_request("127.0.0.1", server.port, b"NOT HTTP\r\n\r\n")
        assert httpx.get(server.url + "/?sync", timeout=TIMEOUT).status_code == 200
        server.wait_for_line(r'"GET /\?sync HTTP/1.1" 200')  # logged after the bad request's
        assert "DEBUG" not in server.output and "Invalid HTTP request" not in server.output


def test_log_level_warning_hides_info_but_shows_errors() -> None:
    # No "running on" line at this level: serve on a socket the test already listens on.
    sock = listening_socket()
    port = sock.getsockname()[1]
    try:
        args = ["serve", "basic:app", "--fd", str(sock.fileno()), "--log-level", "warning"]
        with run_asgictl(args, pass_fds=(sock.fileno(),), ready=False) as server:
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/error", timeout=TIMEOUT).status_code == 500
            server.wait_for_line(r"^ERROR: +Exception in ASGI application")
            server.signal(signal.SIGTERM)
            assert server.wait_exit(20) == 0
            out = server.output
            assert "INFO" not in out and "running on" not in out and '"GET /' not in out
    finally:
        sock.close()


def test_access_log_on_by_default() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        assert httpx.post(server.url + "/echo?x=1", content=b"hi", timeout=TIMEOUT).status_code == 200
        server.wait_for_line(r'^INFO: +127\.0\.0\.1:\d+ - "POST /echo\?x=1 HTTP/1\.1" 200 [\d.]+ms')
        assert httpx.get(server.url + "/nope", timeout=TIMEOUT).status_code == 200
        server.wait_for_line(r'"GET /nope HTTP/1\.1" 200')


def test_no_access_log() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--no-access-log"]) as server:
        assert httpx.get(server.url + "/?quiet", timeout=TIMEOUT).status_code == 200
        server.signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0
        assert "GET /" not in server.output and "Shutting down" in server.output


@pytest.mark.parametrize("flag", ["--use-colors", "--no-use-colors"])
def test_use_colors(flag: str) -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", flag]) as server:
        assert httpx.get(server.url + "/?colors", timeout=TIMEOUT).status_code == 200
        line = server.wait_for_line(r".*GET /\?colors.*").group(0)
        startup = server.wait_for_line(r".*Application startup complete.*").group(0)
        if flag == "--use-colors":
            assert "\x1b[" in line and "\x1b[" in startup
        else:
            assert "\x1b" not in server.output


# -------------------------------------------------------------------------------- h11


def test_h11_max_incomplete_event_size() -> None:
    args = ["serve", "basic:app", "--port", "0", "--http", "h11", "--h11-max-incomplete-event-size", "1024"]
    with run_asgictl(args) as server:
        assert httpx.get(server.url, headers={"X-Small": "a" * 500}, timeout=TIMEOUT).status_code == 200
        # A request head still incomplete past the limit is refused without waiting for its end.
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000)
            data = read_all(sock, TIMEOUT)
        assert re.match(rb"HTTP/1.1 4\d\d ", data), data[:60]
        assert httpx.get(server.url, timeout=TIMEOUT).status_code == 200
    # The default limit (16 KiB) lets the same head through.
    with run_asgictl(["serve", "basic:app", "--port", "0", "--http", "h11"]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000)
            sock.sendall(b"\r\nConnection: close\r\n\r\n")
            assert read_all(sock, TIMEOUT).startswith(b"HTTP/1.1 200 ")


# ------------------------------------------------------------------------------ version


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "asgictl", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        env=support.test_env(),
    )
    assert out.returncode == 0
    assert re.fullmatch(rf"asgictl {re.escape(asgictl.__version__)} with CPython 3\.\d+\.\d+\n", out.stdout)


# ------------------------------------------------------------------ interfaces and loading


@pytest.mark.parametrize("interface", ["asgi2", "auto"])
def test_asgi2_app(interface: str) -> None:
    with run_asgictl(["serve", "extra:ASGI2App", "--port", "0", "--interface", interface]) as server:
        assert httpx.get(server.url + "/hi", timeout=TIMEOUT).text == "asgi2 /hi"


def test_app_dir(tmp_path: Path) -> None:
    app_dir = tmp_path / "code"
    app_dir.mkdir()
    (app_dir / "dirapp_for_test.py").write_text(
        textwrap.dedent(
            """\
            async def app(scope, receive, send):
                assert scope["type"] == "http"
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"from app-dir"})
            """
        )
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    args = ["serve", "dirapp_for_test:app", "--port", "0", "--app-dir", str(app_dir)]
    with run_asgictl(args, cwd=elsewhere) as server:
        assert httpx.get(server.url, timeout=TIMEOUT).text == "from app-dir"
    with run_asgictl(["serve", "dirapp_for_test:app", "--port", "0"], cwd=elsewhere, ready=False) as server:
        assert server.wait_exit(30) == 1
        assert 'Could not import module "dirapp_for_test"' in server.output


def test_dotted_attribute() -> None:
    with run_asgictl(["serve", "extra:outer.inner.app", "--port", "0"]) as server:
        assert httpx.get(server.url, timeout=TIMEOUT).text == "nested attribute"
    with run_asgictl(["serve", "extra:outer.missing.app", "--port", "0"], ready=False) as server:
        assert server.wait_exit(30) == 1
        assert 'Attribute "outer.missing.app" not found in module "extra"' in server.output
        assert "Traceback" not in server.output


# ------------------------------------------------------------------------------ lifespan


def test_lifespan_off() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--lifespan", "off"]) as server:
        assert scope_of(server)["state"] == {}
        server.signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0
        assert "Waiting for application startup" not in server.output
        assert "lifespan shutdown ran" not in server.output


def test_lifespan_on_with_an_app_without_lifespan_fails() -> None:
    with run_asgictl(
        ["serve", "extra:no_lifespan", "--port", "0", "--lifespan", "on"], ready=False
    ) as server:
        assert server.wait_exit(30) == 3
        assert "Application startup failed" in server.output
        assert "unsupported scope lifespan" in server.output
        assert "running on" not in server.output


def test_lifespan_auto_with_an_app_without_lifespan_serves() -> None:
    with run_asgictl(["serve", "extra:no_lifespan", "--port", "0"]) as server:
        assert httpx.get(server.url, timeout=TIMEOUT).text == "http only"
        assert "ASGI 'lifespan' protocol appears unsupported." in server.output
        assert "Traceback" not in server.output
        server.signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0
