"""The shipped unit under a real systemd as PID 1, its ledger on PostgreSQL, through a database outage (issue 15).

The container (``tests/integration/nspawn.py``) gets the session's throwaway PostgreSQL cluster by its socket
directory, bound in at ``/srv/kei-pg``; the daemon, installed by the real ``scripts/install`` and run by the
repository's unit unchanged (``WatchdogSec=30s``, ``Restart=on-failure``, ``StartLimitBurst=5``, every
hardening option), has ``[database] url`` there. PostgreSQL is then stopped for longer than twice
``WatchdogSec=``: systemd must not restart the daemon (a restart cannot bring the database back, and restarts
during a long outage end at ``StartLimitBurst`` with the gateway dead after the database is back). Meanwhile
``/readyz`` answers 503 and ``database.unavailable`` is in the journal; once PostgreSQL is back the same process is
ready again (``database.available``). About two minutes: the outage alone is 65 s.

Run it alone (as root): ``./scripts/test tests/integration/test_real_systemd_postgresql.py -v``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kei_gateway.sim.pki import write_demo_credentials
from tests.integration.nspawn import Machine, booted, install, wait_for
from tests.pg import Cluster as PgCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

UNIT = "kei-gateway.service"
CONFIG = "/etc/kei-gateway/kei-gateway.toml"
METRICS = "127.0.0.1:9464"
SOCKET_DIR = "/srv/kei-pg"
"""Where the PostgreSQL socket directory appears in the container (not under /tmp: the unit has PrivateTmp=yes)."""
WATCHDOG_SEC = 30.0
RESTART_SEC = 5.0


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster) -> Iterator[Machine]:
    with booted(tmp_path_factory, [f"--bind={pg_cluster.socket_dir}:{SOCKET_DIR}"]) as machine:
        yield machine


def readyz(box: Machine) -> str:
    """The HTTP status of one GET /readyz inside the container ("000": no answer)."""
    return box.run("curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                   f"http://{METRICS}/readyz", check=False).stdout.strip()


def test_when_postgresql_is_away_longer_than_the_watchdog_then_systemd_does_not_restart_the_daemon(
        box: Machine, pg_cluster: PgCluster) -> None:
    database = pg_cluster.create_database("kgsd").split("@/", 1)[1].split("?", 1)[0]
    install(box, "--generate-keys")
    write_demo_credentials(str(box.host("/etc/kei-gateway/credentials")))
    box.host(CONFIG).write_text(
        f'[gateway]\nlg_code = "131041"\n'
        f'[listeners.metrics]\naddress = "{METRICS}"\nallow = ["127.0.0.1/32"]\n'
        f'[database]\nurl = "postgresql+psycopg://postgres@/{database}?host={SOCKET_DIR}"\nlease = "5s"\n',
        encoding="utf-8")
    box.systemctl("daemon-reload")
    box.systemctl("start", UNIT)  # Type=notify: returns after READY=1 (the ledger migrated on PostgreSQL)

    def describe() -> str:
        return box.journal("-u", UNIT, "-n", "30") + box.describe()

    before = box.show(UNIT, "MainPID", "NRestarts", "ActiveState")
    assert before["ActiveState"] == "active" and before["NRestarts"] == "0", before
    wait_for(lambda: readyz(box) == "200", 30, "/readyz 200 on PostgreSQL", describe)

    stopped_at = time.monotonic()
    pg_cluster.stop_server()
    try:
        wait_for(lambda: readyz(box) == "503", 30, "/readyz 503 while PostgreSQL is away", describe)

        def outlasted_the_watchdog() -> bool:
            now = box.show(UNIT, "MainPID", "NRestarts", "ActiveState")
            assert now == before, f"systemd restarted the daemon while PostgreSQL was away: {now}\n{describe()}"
            return time.monotonic() - stopped_at > 2 * WATCHDOG_SEC + RESTART_SEC

        wait_for(outlasted_the_watchdog, 2 * WATCHDOG_SEC + RESTART_SEC + 30, "the outage to outlast the watchdog",
                 describe)
        assert readyz(box) == "503", "still unready while PostgreSQL is away"
    finally:
        pg_cluster.start_server()
    wait_for(lambda: readyz(box) == "200", 60, "/readyz 200 once PostgreSQL is back", describe)
    assert box.show(UNIT, "MainPID", "NRestarts", "ActiveState") == before, "the same process, never restarted"
    # The watchdog's own check (every WatchdogSec/2) says when it sees the database back.
    journal = wait_for(lambda: (lambda text: text if "database answers again" in text else None)(
        box.journal("-u", UNIT, "-o", "cat")), WATCHDOG_SEC, "database.available in the journal", describe)
    assert "database does not answer" in journal, journal[-3000:]
    assert "Watchdog timeout" not in journal and "the watchdog is no longer fed" not in journal, journal[-3000:]
    box.systemctl("stop", UNIT)
