"""A throwaway PostgreSQL cluster for the test session (unix socket only, no TCP).

:func:`start_cluster` runs ``initdb`` and ``pg_ctl start`` in a new temporary
directory, as the ``postgres`` system user when the tests run as root (``initdb``
refuses root), else as the current user. The cluster trusts local connections and
listens on a socket in that directory only (``listen_addresses=''``). Durability is
off (``fsync=off``): it is thrown away at the end of the session. Its time zone is
Asia/Tokyo, as a city's server may well be, so that code which relies on the
database handing back UTC fails here.

:meth:`Cluster.create_database` makes a fresh, empty database and returns its
SQLAlchemy URL (``postgresql+psycopg://postgres@/NAME?host=/SOCKETDIR``). Creating one
takes a few tens of milliseconds, so every test gets its own.

:func:`unavailable` says why PostgreSQL cannot run here (no server binaries, no
driver): the tests skip with that reason, except under CI, where it is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from itertools import count

__all__ = ["Cluster", "start_cluster", "unavailable", "find_bin_dir", "START_TIMEOUT"]

START_TIMEOUT = 30.0
"""Longest wait for ``pg_ctl start`` / ``pg_isready`` (seconds)."""

SUPERUSER = "postgres"


def find_bin_dir() -> str | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``pg_isready``: PATH first, then Debian's layout."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        real = os.path.dirname(os.path.realpath(on_path))
        if os.path.exists(os.path.join(real, "initdb")) and os.path.exists(os.path.join(real, "pg_isready")):
            return real
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(os.path.join(candidate, b), os.X_OK) for b in ("initdb", "pg_ctl", "pg_isready")):
            return candidate
    return None


def _version_key(path: str) -> int:
    version = path.split("/")[-2]
    return int(version) if version.isdigit() else 0


def unavailable() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, or None if it can be tried."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver psycopg is not installed (pip install -e .[test])"
    if find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no 'postgres' system user to run initdb as"
    return None


@dataclass
class Cluster:
    """A running throwaway cluster."""

    bin_dir: str
    base: str
    run_as: list[str]
    _names: count[int] = field(default_factory=lambda: count(1))
    options: str = ""
    """The server options it was started with (to start it again after :meth:`stop_server`)."""

    @property
    def data_dir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.base, "socket")

    @property
    def log_path(self) -> str:
        return os.path.join(self.base, "server.log")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def _connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host=self.socket_dir, user=SUPERUSER, dbname=database, autocommit=True,
                               connect_timeout=10)

    def create_database(self, prefix: str = "kg") -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self._connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of *url* (connections still open to it are ended first)."""
        name = url.split("@/", 1)[1].split("?", 1)[0]
        with self._connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def server_log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()[-4000:]
        except OSError as error:
            return f"(no server log: {error})"

    def stop_server(self) -> None:
        """Stop the server (fast: open sessions are ended) and keep its data, for :meth:`start_server`."""
        _run([*self.run_as, os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w",
              "-t", str(int(START_TIMEOUT)), "stop"], "pg_ctl stop")

    def start_server(self) -> None:
        """Start the server again after :meth:`stop_server`; wait (bounded) until it accepts connections."""
        _run([*self.run_as, os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data_dir, "-l", self.log_path, "-w",
              "-t", str(int(START_TIMEOUT)), "-o", self.options, "start"], "pg_ctl start")

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is kept) and remove its directory."""
        subprocess.run([*self.run_as, os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data_dir, "-m", "immediate",
                        "-w", "-t", str(int(START_TIMEOUT)), "stop"],
                       capture_output=True, timeout=START_TIMEOUT + 10, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT + 30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")


def start_cluster() -> Cluster:
    """initdb + start a cluster in a new temporary directory; wait (bounded) until it accepts connections.

    Raises RuntimeError (with the server's log) if it does not start.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found")
    base = tempfile.mkdtemp(prefix="kei-gateway-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SUPERUSER)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", SUPERUSER, "--"]
    os.chmod(base, 0o755)  # the test process (root, or this user) connects to the socket inside
    cluster = Cluster(bin_dir, base, run_as)
    try:
        _run([*run_as, os.path.join(bin_dir, "initdb"), "-D", cluster.data_dir, "-U", SUPERUSER, "--auth=trust",
              "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], "initdb")
        _run([*run_as, "mkdir", "-m", "0755", cluster.socket_dir], "mkdir socket dir")
        options = (f"-k {cluster.socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                   f"-c full_page_writes=off -c max_connections=100 -c timezone=Asia/Tokyo")
        cluster.options = options
        _run([*run_as, os.path.join(bin_dir, "pg_ctl"), "-D", cluster.data_dir, "-l", cluster.log_path, "-w",
              "-t", str(int(START_TIMEOUT)), "-o", options, "start"], "pg_ctl start")
        deadline = time.monotonic() + START_TIMEOUT
        interval = 0.02
        while subprocess.run([os.path.join(bin_dir, "pg_isready"), "-q", "-h", cluster.socket_dir, "-U", SUPERUSER],
                             check=False, timeout=START_TIMEOUT).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections within {START_TIMEOUT:g}s")
            time.sleep(interval)
            interval = min(interval * 2, 0.5)
    except BaseException as error:
        log = cluster.server_log()
        cluster.stop()
        if isinstance(error, Exception):
            raise RuntimeError(f"{error}\nserver log:\n{log}") from error
        raise
    return cluster
