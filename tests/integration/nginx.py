"""A real nginx serving WebDAV (dav + dav-ext) over mutual TLS on loopback, for transport tests.

Debian ``nginx-light`` has the dav module built in; ``libnginx-mod-http-dav-ext``
adds PROPFIND. Each server runs in the foreground (``daemon off;``) with its
configuration, pid file, logs, temp directories and document root under a
temporary prefix, on ``127.0.0.1:<free port>``; readiness is a bounded poll of
the port. Use the ``nginx_dav`` fixture (a factory; every server it started is
stopped at the end of the test)::

    from tests.integration.nginx import NginxDav, NginxTLS, nginx_dav  # noqa: F401 (fixture)

    def test_upload(nginx_dav: Callable[[NginxTLS], NginxDav], ...) -> None:
        server = nginx_dav(NginxTLS(certificate=..., private_key=..., client_ca=...))
        server.url("upload/")          # https://127.0.0.1:<port>/upload/ (the directory exists)
        server.root / "upload"         # what nginx stored
        server.requests()              # lines of the access log so far

Besides the WebDAV directories, ``/busy/`` answers 503 with ``Retry-After: 120``,
``/throttled/`` 429 with an HTTP-date ``Retry-After``, and ``/stall/`` never
answers (proxied to a socket that listens but never accepts): for timeouts.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kei_gateway.sim.harness import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DAV_EXT_MODULE = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")
START_TIMEOUT = 15.0
DIRECTORIES = ("upload", "results")

CONFIG = """\
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format dav '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                   'digest="$http_content_digest" overwrite="$http_overwrite" destination="$http_destination"';
    access_log {prefix}/access.log dav;
    client_body_temp_path {prefix}/root/.client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {certificate};
        ssl_certificate_key {private_key};
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        ssl_protocols {protocols};
        ssl_ciphers {ciphers};
        root {prefix}/root;
        location /busy/ {{
            add_header Retry-After 120 always;
            return 503;
        }}
        location /throttled/ {{
            add_header Retry-After "Wed, 21 Oct 2099 07:28:00 GMT" always;
            return 429;
        }}
        location /stall/ {{
            proxy_pass http://127.0.0.1:{stall_port};
            proxy_read_timeout 60s;
        }}
        location / {{
            dav_methods PUT DELETE MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
            dav_access user:rw;
            autoindex off;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class NginxTLS:
    """The server's certificate chain and key (PEM files) and the CA client certificates must chain to."""

    certificate: Path
    private_key: Path
    client_ca: Path
    protocols: str = "TLSv1.2 TLSv1.3"
    ciphers: str = "HIGH:!aNULL"


@dataclass
class NginxDav:
    """A running nginx: its port, document root and logs."""

    prefix: Path
    port: int
    process: subprocess.Popen[bytes]
    stall: socket.socket

    @property
    def root(self) -> Path:
        return self.prefix / "root"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def url(self, path: str = "") -> str:
        return f"https://127.0.0.1:{self.port}/{path}"

    def requests(self) -> list[str]:
        """The access log's lines (nginx writes each when its request finishes)."""
        if not self.access_log.exists():
            return []
        return [line for line in self.access_log.read_text(errors="replace").splitlines() if line.strip()]

    def files(self, directory: str) -> dict[str, bytes]:
        """The visible files of a served directory (dotfiles such as nginx temp files left out)."""
        base = self.root / directory
        return {p.name: p.read_bytes() for p in sorted(base.iterdir()) if p.is_file() and not p.name.startswith(".")}

    def stop(self) -> None:
        self.stall.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _accepting(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_nginx(prefix: Path, tls: NginxTLS) -> NginxDav:
    """Start nginx under *prefix* with *tls*; return once it accepts connections (at most START_TIMEOUT)."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (Debian package nginx-light)")
    if not DAV_EXT_MODULE.exists():
        pytest.skip(f"{DAV_EXT_MODULE} is missing (Debian package libnginx-mod-http-dav-ext)")
    for directory in ("root/.client_body", "tmp", *(f"root/{d}" for d in DIRECTORIES)):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    port = free_port()
    stall = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stall.bind(("127.0.0.1", 0))
    stall.listen(8)  # never accepted: connections complete in the backlog and then hear nothing
    config = prefix / "nginx.conf"
    config.write_text(CONFIG.format(module=DAV_EXT_MODULE, prefix=prefix, port=port, certificate=tls.certificate,
                                    stall_port=stall.getsockname()[1], protocols=tls.protocols, ciphers=tls.ciphers,
                                    private_key=tls.private_key, client_ca=tls.client_ca))
    with (prefix / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen([NGINX, "-c", str(config), "-p", str(prefix), "-e", str(prefix / "error.log")],
                                   stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = NginxDav(prefix, port, process, stall)
    deadline = time.monotonic() + START_TIMEOUT
    interval = 0.01
    while not _accepting(port):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            log = (prefix / "stderr.log").read_text(errors="replace")
            errors = server.error_log.read_text(errors="replace") if server.error_log.exists() else ""
            pytest.fail(f"nginx did not start on port {port} (exit {process.returncode}):\n{log}\n{errors}")
        time.sleep(interval)
        interval = min(interval * 2, 0.2)
    return server


@pytest.fixture
def nginx_dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[NginxTLS], NginxDav]]:
    """A factory starting nginx WebDAV servers with given TLS files; all are stopped after the test."""
    started: list[NginxDav] = []

    def start(tls: NginxTLS) -> NginxDav:
        server = start_nginx(tmp_path_factory.mktemp("nginx"), tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
