"""The shipped units under a real systemd as PID 1 (SPEC §9), installed by the real scripts/install.

One container boot (``tests/integration/nspawn.py``) serves every check of this module,
in order: the plain unit ``kei-gateway.service`` is installed, started, reloaded (a
live change, then a refused one), firewalled, frozen and stopped; then two instances
of the template ``kei-gateway@.service`` run side by side. The unit files are the
repository's, unchanged: timeouts are the shipped ones (``WatchdogSec=30s``,
``RestartSec=5s``), so the watchdog check alone takes about 35 s.

Run it alone: ``./scripts/test tests/integration/test_real_systemd.py -v`` (as root).
It is skipped, with the reason, where ``systemd-nspawn`` cannot boot a container;
under ``CI`` that is an error.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kei_gateway.runtime import events
from kei_gateway.sim.pki import write_demo_credentials
from tests.integration.nspawn import Machine, exposure, install, machine, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

UNIT = "kei-gateway.service"
CONFIG = "/etc/kei-gateway/kei-gateway.toml"
METRICS = "127.0.0.1:9464"
WATCHDOG_SEC = 30.0
RESTART_SEC = 5.0
START_ALLOWANCE = 15.0  # the restarted daemon's own start, up to READY=1, on a loaded 2-core machine
CREDENTIALS = ("audit.key", "gateway.crt", "gateway.key", "store.key")
INSTANCES = {"131016": "127.0.0.1:9465", "131024": "127.0.0.1:9466"}  # 千代田区, 中央区 (check digits valid)
BLOCKED = "192.0.2.10"  # TEST-NET-1 on the container's own loopback: never a real host
PROBE_PORT = 8000


def config_text(lg_code: str, metrics: str, log_level: str = "info", instance: str | None = None) -> str:
    paths = "" if instance is None else (f'spool_dir = "/var/spool/kei-gateway-{instance}"\n'
                                         f'state_dir = "/var/lib/kei-gateway-{instance}"\n')
    return (f'[gateway]\nlg_code = "{lg_code}"\nlog_level = "{log_level}"\n{paths}'
            f'[listeners.metrics]\naddress = "{metrics}"\nallow = ["127.0.0.1/32"]\n')


@dataclass
class Gateway:
    box: Machine

    def write_config(self, text: str, path: str = CONFIG) -> None:
        self.box.host(path).write_text(text, encoding="utf-8")

    def healthz(self, address: str = METRICS) -> tuple[int, str]:
        """(exit status of curl, HTTP status) of one GET /healthz, no retry."""
        result = self.box.run("curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://{address}/healthz", check=False)
        return result.returncode, result.stdout.strip()

    def events_of(self, unit: str, event: str) -> list[dict[str, str]]:
        out = self.box.journal("-u", unit, f"KEI_EVENT={event}", "-o", "json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gateway(machine: Machine) -> Iterator[Gateway]:
    """The plain unit installed by scripts/install, with demo credentials and a minimal config."""
    install(machine, "--generate-keys")
    write_demo_credentials(str(machine.host("/etc/kei-gateway/credentials")))
    gw = Gateway(machine)
    gw.write_config(config_text("131041", METRICS))
    machine.systemctl("daemon-reload")
    yield gw
    machine.systemctl("stop", UNIT, check=False)


def test_when_started_then_start_returns_after_ready_and_healthz_answers_at_once(gateway: Gateway) -> None:
    """When `systemctl start` returns, then READY=1 was sent: the unit is running and /healthz answers, first try."""
    box = gateway.box
    box.systemctl("start", UNIT)
    assert gateway.healthz() == (0, "200"), box.describe()
    state = box.show(UNIT, "ActiveState", "SubState", "Type", "NotifyAccess")
    assert state == {"ActiveState": "active", "SubState": "running", "Type": "notify", "NotifyAccess": "main"}


def test_when_running_then_systemctl_status_shows_the_status_line(gateway: Gateway) -> None:
    """When the daemon runs, then its STATUS= text is in `systemctl status`."""
    text = gateway.box.show(UNIT, "StatusText")["StatusText"]
    assert text, "no STATUS= received"
    status = gateway.box.systemctl("status", UNIT).stdout
    assert f'Status: "{text}' in status


def test_when_running_then_the_credentials_are_in_credentials_directory_owned_by_the_service_user(
        gateway: Gateway) -> None:
    """When started, then LoadCredential= files are in the daemon's $CREDENTIALS_DIRECTORY, owned by kei-gateway."""
    box = gateway.box
    pid = box.main_pid(UNIT)
    environ = box.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
    directory = f"/run/credentials/{UNIT}"
    assert f"CREDENTIALS_DIRECTORY={directory}" in environ
    listing = box.run("stat", "-c", "%n %U %a", *(f"{directory}/{name}" for name in CREDENTIALS)).stdout.split("\n")
    owners = {line.split()[0].rsplit("/", 1)[1]: line.split()[1] for line in listing if line}
    assert owners == dict.fromkeys(CREDENTIALS, "kei-gateway")
    # the originals stay root's, in a directory the service cannot enter
    assert box.run("stat", "-c", "%U %a", "/etc/kei-gateway/credentials").stdout.split() == ["root", "700"]


def test_when_running_then_the_journal_has_the_fields_and_journalctl_x_the_catalog(gateway: Gateway) -> None:
    """When the daemon has logged, then entries carry MESSAGE_ID and KEI_EVENT, and `journalctl -x` explains them."""
    ready = gateway.events_of(UNIT, events.DAEMON_READY.name)
    assert ready, gateway.box.journal("-u", UNIT)
    entry = ready[-1]
    assert entry["MESSAGE_ID"] == events.DAEMON_READY.message_id.replace("-", "")
    assert entry["SYSLOG_IDENTIFIER"] == "kei-gateway" and "KEI_INSTANCE" not in entry
    explained = gateway.box.journal("-x", "-u", UNIT, f"KEI_EVENT={events.DAEMON_READY.name}")
    assert f"KEI_EVENT={events.DAEMON_READY.name}" in explained and "What to do:" in explained, explained


def test_when_reloaded_with_a_live_change_then_the_main_pid_stays_and_the_change_applies(gateway: Gateway) -> None:
    """When the log level is changed and `systemctl reload` runs, then the same process applies it."""
    box = gateway.box
    pid = box.main_pid(UNIT)
    before = len(gateway.events_of(UNIT, events.CONFIG_RELOADED.name))
    gateway.write_config(config_text("131041", METRICS, log_level="debug"))
    box.systemctl("reload", UNIT)
    reloaded = wait_for(lambda: gateway.events_of(UNIT, events.CONFIG_RELOADED.name)[before:], 15,
                        "config.reloaded in the journal")
    assert "log level debug" in reloaded[0]["MESSAGE"], reloaded[0]
    assert box.main_pid(UNIT) == pid
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"


def test_when_the_new_config_is_invalid_then_reload_fails_and_the_daemon_keeps_running(gateway: Gateway) -> None:
    """When the config is broken, then the daemon refuses it, `systemctl reload` exits non-zero with the reason in
    the unit's journal, and the same process keeps serving; once the file is fixed, reload works again."""
    box = gateway.box
    pid = box.main_pid(UNIT)
    refused_before = len(gateway.events_of(UNIT, events.CONFIG_RELOAD_FAILED.name))
    gateway.write_config(config_text("131041", METRICS) + "bogus = 1\n")
    result = box.systemctl("reload", UNIT, check=False)
    assert result.returncode != 0, result
    assert len(gateway.events_of(UNIT, events.CONFIG_RELOAD_FAILED.name)) == refused_before + 1
    assert box.main_pid(UNIT) == pid
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"
    assert gateway.healthz() == (0, "200")
    # ExecReload='s stderr: the daemon's reason, with the key to fix
    assert re.search(r"configuration refused, .*listeners\.metrics\.bogus: unknown key", box.journal("-u", UNIT))
    gateway.write_config(config_text("131041", METRICS))
    box.systemctl("reload", UNIT)
    assert box.main_pid(UNIT) == pid


PROBE = """
import json, socket, sys
result = {}
for address in sys.argv[1:]:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((address, %d))
        result[address] = "connected"
    except OSError as error:
        result[address] = type(error).__name__
    finally:
        s.close()
print(json.dumps(result))
""" % PROBE_PORT

LISTENER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", %d))
s.listen(16)
while True:
    s.accept()[0].close()
""" % PROBE_PORT


def test_when_the_unit_connects_outside_ipaddressallow_then_the_kernel_blocks_it(gateway: Gateway) -> None:
    """When a process in the unit's cgroup connects to 127.0.0.1 and to an address not allowed, then only the
    first connects; the same probe outside the unit reaches both (so the BPF firewall, not the address, blocks)."""
    box = gateway.box
    box.run("ip", "address", "replace", f"{BLOCKED}/32", "dev", "lo")
    box.run("systemd-run", "--quiet", "--unit=kei-probe-listener", box.python, "-c", LISTENER)
    try:
        def outside() -> dict[str, str] | None:
            seen: dict[str, str] = json.loads(box.run(box.python, "-c", PROBE, "127.0.0.1", BLOCKED).stdout)
            return seen if set(seen.values()) == {"connected"} else None

        wait_for(outside, 15, "the probe listener, from outside the unit")
        cgroup = box.show(UNIT, "ControlGroup")["ControlGroup"]
        inside = json.loads(box.run(
            "sh", "-c", f'echo $$ > /sys/fs/cgroup{cgroup}/cgroup.procs && exec "$@"', "probe",
            box.python, "-c", PROBE, "127.0.0.1", BLOCKED).stdout)
        assert inside["127.0.0.1"] == "connected"
        assert inside[BLOCKED] != "connected", "IPAddressDeny=any is not enforced (no BPF firewall)"
    finally:
        box.systemctl("stop", "kei-probe-listener.service", check=False)


def test_when_analysed_online_then_the_exposure_is_the_offline_one(gateway: Gateway) -> None:
    """When systemd-analyze security rates the running unit, then the score is the offline one, at most 1.5."""
    box = gateway.box
    online = exposure(box.run("systemd-analyze", "security", "--no-pager", UNIT).stdout, UNIT)
    offline = exposure(box.run("systemd-analyze", "security", "--offline=yes", "--no-pager",
                               f"/etc/systemd/system/{UNIT}").stdout, UNIT)
    assert online == offline
    assert online <= 1.5


def test_when_the_daemon_freezes_then_the_watchdog_kills_and_restarts_it_in_time(gateway: Gateway) -> None:
    """When the daemon is stopped with SIGSTOP, then systemd's watchdog kills it and Restart= starts a new one
    within WatchdogSec + RestartSec (plus the new process's own start)."""
    box = gateway.box
    before = box.show(UNIT, "MainPID", "NRestarts")
    assert before["MainPID"] != "0", f"the daemon is not running; {box.describe()}"
    frozen_at = time.monotonic()
    box.run("kill", "-STOP", before["MainPID"])

    def restarted() -> dict[str, str] | None:
        now = box.show(UNIT, "MainPID", "NRestarts", "ActiveState", "SubState", "ExecMainStartTimestampMonotonic")
        fresh = now["MainPID"] not in ("0", before["MainPID"]) and now["SubState"] == "running"
        return now if fresh else None

    bound = WATCHDOG_SEC + RESTART_SEC + START_ALLOWANCE
    after = wait_for(restarted, bound, "the watchdog restart", box.describe)
    started = int(after["ExecMainStartTimestampMonotonic"]) / 1e6  # CLOCK_MONOTONIC is the host's too
    assert started - frozen_at <= WATCHDOG_SEC + RESTART_SEC + 2.0
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in box.journal("-u", UNIT, "--since", "-2min")
    assert gateway.healthz() == (0, "200")


def test_when_stopped_then_the_result_is_success(gateway: Gateway) -> None:
    """When `systemctl stop` runs, then the daemon drains and exits cleanly: Result=success, status 0."""
    box = gateway.box
    box.systemctl("stop", UNIT)
    state = box.show(UNIT, "ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}


@pytest.fixture(scope="module")
def instances(gateway: Gateway) -> Iterator[Gateway]:
    """Two cities on one host: scripts/install --instance for each, their own config, credentials and port."""
    box = gateway.box
    for name, metrics in INSTANCES.items():
        install(box, "--instance", name, "--generate-keys")
        config = f"/etc/kei-gateway/{name}/kei-gateway.toml"
        installed = box.host(config).read_text(encoding="utf-8")
        assert f'spool_dir = "/var/spool/kei-gateway-{name}"' in installed
        assert f'state_dir = "/var/lib/kei-gateway-{name}"' in installed
        write_demo_credentials(str(box.host(f"/etc/kei-gateway/{name}/credentials")))
        gateway.write_config(config_text(name, metrics, instance=name), config)
    box.systemctl("daemon-reload")
    box.systemctl("start", *(f"kei-gateway@{name}.service" for name in INSTANCES))
    yield gateway
    box.systemctl("stop", *(f"kei-gateway@{name}.service" for name in INSTANCES), check=False)


def test_when_two_instances_run_then_each_serves_its_own_city(instances: Gateway) -> None:
    """When kei-gateway@131016 and kei-gateway@131024 run, then each answers on its own port as its own user,
    and its journal entries carry its instance."""
    box = instances.box
    users = set()
    for name, metrics in INSTANCES.items():
        unit = f"kei-gateway@{name}.service"
        assert instances.healthz(metrics) == (0, "200"), box.describe()
        state = box.show(unit, "ActiveState", "User", "StatusText")
        assert state["ActiveState"] == "active" and state["StatusText"]
        users.add(state["User"])
        ready = instances.events_of(unit, events.DAEMON_READY.name)
        assert ready and {entry.get("KEI_INSTANCE") for entry in ready} == {name}
    assert users == {f"kei-gateway-{name}" for name in INSTANCES}


def test_when_two_instances_run_then_neither_reads_the_others_files(instances: Gateway) -> None:
    """When one instance's process (its namespaces, its user) tries the other's spool, state and credentials,
    then every one is refused, while its own are readable."""
    box = instances.box
    probe = ("import json, os, sys\n"
             "def attempt(path):\n"
             "    try:\n"
             "        os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read(1)\n"
             "        return 'read'\n"
             "    except OSError as error:\n"
             "        return error.strerror\n"
             "print(json.dumps({path: attempt(path) for path in sys.argv[1:]}))\n")

    def places(name: str) -> list[str]:
        return [f"/var/spool/kei-gateway-{name}/outbox", f"/var/lib/kei-gateway-{name}",
                f"/run/credentials/kei-gateway@{name}.service",
                f"/run/credentials/kei-gateway@{name}.service/store.key"]

    first, second = INSTANCES
    for own, other in ((first, second), (second, first)):
        pid = box.main_pid(f"kei-gateway@{own}.service")
        uid = box.run("id", "-u", f"kei-gateway-{own}").stdout.strip()
        gid = box.run("getent", "group", f"kei-spool-{own}").stdout.split(":")[2]
        result = box.run_as_unit_user(pid, int(uid), int(gid), box.python, "-c", probe, *places(own), *places(other))
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert {seen[path] for path in places(own)} == {"read"}, seen
        refused = {path: seen[path] for path in places(other)}
        assert all(re.match(r"Permission denied|No such file", why) for why in refused.values()), refused
