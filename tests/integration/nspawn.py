"""A real systemd as PID 1 in a throwaway container, booted with ``systemd-nspawn``.

The container's root is built here from the host's own ``/usr`` (nothing is
downloaded): an empty root with the usual ``/bin`` → ``usr/bin`` links, a real
``/etc/os-release`` (nspawn refuses a root whose os-release is the host's
symlink into a ``/usr`` it cannot see yet), the host's account files, and ``/usr``
mounted as an overlay (``--overlay=/usr:UPPER:/usr``) so that ``scripts/install``
can write ``/usr/lib/systemd/catalog`` without touching the host. The checkout
and the test venv's site-packages are bound read-only at their own paths, so the
real ``scripts/install --reuse-site-packages`` works inside unchanged.

Facts this depends on (Debian 12, systemd 252, a host without systemd as PID 1):

- ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``: otherwise the container falls back to
  cgroup v1, which has no BPF, so ``IPAddressDeny=`` would not be enforced.
- ``--system-call-filter=bpf``: nspawn's own seccomp filter makes ``bpf()`` fail
  with EPERM, and systemd then starts ``IPAddressDeny=`` units *without* a
  firewall, saying so only at debug level. The tests assert the firewall works.
- nspawn runs in a cgroup of its own under the host's cgroup2 hierarchy; it is
  removed, bottom-up, after the container has stopped.
- ``--private-network``: the container has its own network namespace with only
  a loopback device; nothing it does reaches the host's or any real address.

Commands run inside with ``nsenter`` into the namespaces of the container's
PID 1 (no machined on the host). Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 90.0
CONTAINER_SITE_PACKAGES = "/opt/kei-gateway-test-deps"
"""Where the test venv's site-packages appear in the container (reused by ``scripts/install``)."""
COMMAND_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow", "nsswitch.conf", "login.defs")

T = TypeVar("T")


def unavailable(reason: str) -> None:
    """Skip the calling test with *reason*; under ``CI`` that is an error instead (CI must run it)."""
    if os.environ.get("CI"):
        pytest.fail(f"real-systemd test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def wait_for(check: Callable[[], T | None | bool], timeout: float, what: str,
             describe: Callable[[], str] = lambda: "") -> T:
    """Poll *check* (short growing intervals) until it returns a true value; fail after *timeout* s."""
    deadline = time.monotonic() + timeout
    interval = 0.05
    while True:
        result = check()
        if result is not None and result is not False:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}. {describe()}".rstrip())
        time.sleep(interval)
        interval = min(interval * 2, 0.5)


def cgroup2_root() -> Path | None:
    """Where the host's cgroup2 hierarchy is mounted (pure v2, or the hybrid ``unified``)."""
    for line in Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def container_python() -> str | None:
    """An interpreter the container (and the hardened unit: ProtectHome=yes) can run, of this
    interpreter's version so the reused site-packages fit: this one if it lives under /usr, else
    /usr/bin/python3."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        if not candidate.startswith("/usr/") or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


@dataclass
class Machine:
    """A booted container: run commands inside, read and write its /etc and /var from the host."""

    root: Path
    leader: int
    log: Path
    python: str
    site_packages: str
    _nsenter: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._nsenter = ["nsenter", "--target", str(self.leader), "--mount", "--uts", "--ipc", "--net", "--pid",
                         "--cgroup", "--root", "--wd", "--"]

    def run(self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside the container as its root; with *check*, fail the test on a non-zero exit."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        # A session of its own: a signal sent inside (kill) can never reach pytest's process group.
        result = subprocess.run([*self._nsenter, *argv], capture_output=True, text=True, timeout=timeout,
                                check=False, input=input, env=env, start_new_session=True)
        if check and result.returncode != 0:
            recent = subprocess.run([*self._nsenter, "journalctl", "--no-pager", "-n", "40"], capture_output=True,
                                    text=True, timeout=COMMAND_TIMEOUT, check=False, env=env).stdout
            pytest.fail(f"in the container, {' '.join(argv)} exited {result.returncode}:\n"
                        f"{result.stdout}\n{result.stderr}\nthe journal's end:\n{recent}", pytrace=False)
        return result

    def run_as_unit_user(self, pid: int, uid: int, gid: int, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside the namespaces (mount, user) of the service process *pid*, as *uid*:*gid*.

        That is where the service itself stands: its read-only view of the file system and its user
        namespace (``PrivateUsers=yes``), with its own identity and no supplementary groups.
        """
        return self.run("nsenter", f"--target={pid}", "--mount", "--user", f"--setuid={uid}", f"--setgid={gid}",
                        "--", *argv, check=False)

    def systemctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *argv, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p …`` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        """The unit's MainPID as the container sees it."""
        return int(self.show(unit, "MainPID")["MainPID"])

    def host(self, path: str) -> Path:
        """The host path of the container's *path* (for /etc, /var and /opt, which live in the root)."""
        assert path.startswith("/") and not path.startswith(("/usr", "/run", "/proc", "/sys", "/tmp")), path
        return self.root / path.lstrip("/")

    def journal(self, *argv: str) -> str:
        self.run("journalctl", "--sync", check=False)
        return self.run("journalctl", "--no-pager", *argv).stdout

    def describe(self) -> str:
        """The container's failed units and the end of its console log, for a failure message."""
        failed = self.run("systemctl", "--no-pager", "--failed", "--no-legend", check=False).stdout
        console = self.log.read_text(encoding="utf-8", errors="replace")[-2000:] if self.log.exists() else ""
        return f"failed units: {failed.strip() or 'none'}; console: {console.strip()[-2000:]}"


def _build_root(base: Path) -> Path:
    root = base / "root"
    for directory in ("etc", "var", "tmp", "usr", "opt", "run", "proc", "sys", "dev", "home", "root", "mnt", "srv"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        if (Path("/usr") / link).exists():
            (root / link).symlink_to(f"usr/{link}")
    (root / "tmp").chmod(0o1777)
    # A real file: nspawn looks for it before the /usr overlay exists (the host's is a symlink into /usr).
    shutil.copyfile("/usr/lib/os-release", root / "etc" / "os-release")
    for name in ACCOUNT_FILES:
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    (root / "etc" / "machine-id").write_text("", encoding="ascii")  # systemd makes a transient one
    (root / "etc" / "hostname").write_text("kei-gateway-test\n", encoding="ascii")
    return root


def _leader_of(nspawn: subprocess.Popen[bytes]) -> int | None:
    """The host PID of the container's PID 1 (nspawn's child running systemd), once it runs systemd."""
    try:
        children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text(encoding="ascii").split()
    except OSError:
        return None
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text(encoding="ascii").strip() == "systemd":
                return int(child)
        except OSError:
            continue
    return None


def _remove_cgroup(path: Path) -> None:
    """rmdir *path* and everything below it, deepest first (cgroupfs only allows rmdir of empty groups)."""
    if not path.exists():
        return
    try:
        (path / "cgroup.kill").write_text("1", encoding="ascii")  # anything nspawn left behind
    except OSError:
        pass
    wait_for_empty = time.monotonic() + STOP_TIMEOUT
    while (path / "cgroup.events").exists() and "populated 1" in (path / "cgroup.events").read_text(encoding="ascii"):
        if time.monotonic() > wait_for_empty:
            break
        time.sleep(0.05)
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -entry[0].count("/")):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def _stop(nspawn: subprocess.Popen[bytes], leader: int | None) -> None:
    """Power the container off (SIGRTMIN+4 to its systemd, as ``machinectl poweroff`` does), then make sure."""
    if nspawn.poll() is None and leader is not None:
        try:
            os.kill(leader, signal.SIGRTMIN + 4)
        except ProcessLookupError:
            pass
        try:
            nspawn.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    if nspawn.poll() is None:
        nspawn.kill()  # nspawn takes the container down with it
        nspawn.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """A booted container with systemd as PID 1 (module scope: one boot for all the checks)."""
    with booted(tmp_path_factory) as box:
        yield box


@contextmanager
def booted(tmp_path_factory: pytest.TempPathFactory, binds: Sequence[str] = ()) -> Iterator[Machine]:
    """Boot a container (skipped, with the reason, where it cannot be); *binds* are more ``--bind=HOST:CONTAINER``
    options (e.g. a PostgreSQL socket directory)."""
    if os.geteuid() != 0:
        unavailable("systemd-nspawn needs root")
    missing = [tool for tool in ("systemd-nspawn", "nsenter") if shutil.which(tool) is None]
    if missing:
        unavailable(f"not installed: {', '.join(missing)} (./scripts/test installs systemd-container)")
    hierarchy = cgroup2_root()
    if hierarchy is None:
        unavailable("no cgroup2 hierarchy on the host: the container's BPF firewall needs one")
        return
    python = container_python()
    if python is None:
        unavailable(f"no Python {sys.version_info.major}.{sys.version_info.minor} under /usr for the container")
        return
    base = tmp_path_factory.mktemp("nspawn")
    base.chmod(0o755)
    root = _build_root(base)
    upper = base / "usr-upper"
    upper.mkdir()
    cgroup = hierarchy / f"kei-gateway-test-{os.getpid()}"
    cgroup.mkdir(exist_ok=True)
    log = base / "console.log"
    # The test venv's packages are bound at a fixed path outside /tmp: the unit runs with
    # PrivateTmp=yes, so a checkout under /tmp (a CI clone) would be hidden from the daemon.
    site_packages = CONTAINER_SITE_PACKAGES
    mounts = [f"--bind-ro={REPO}", f"--bind-ro={sysconfig.get_path('purelib')}:{CONTAINER_SITE_PACKAGES}", *binds]
    argv = ["systemd-nspawn", "--quiet", f"--directory={root}", "--machine=kei-gateway-test", "--register=no",
            "--keep-unit", "--private-network", "--system-call-filter=bpf", f"--overlay=/usr:{upper}:/usr",
            *mounts, "--console=read-only", "--boot", "--", "systemd.unit=multi-user.target"]
    environ = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    # Into its own cgroup before exec (a shell, not preexec_fn: pytest may run threads).
    in_own_cgroup = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]
    leader: int | None = None
    with open(log, "wb") as console:
        nspawn = subprocess.Popen([*in_own_cgroup, *argv], stdin=subprocess.DEVNULL, stdout=console,
                                  stderr=subprocess.STDOUT, env=environ)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while leader is None and nspawn.poll() is None and time.monotonic() < deadline:
            leader = _leader_of(nspawn)
            time.sleep(0.05)
        if leader is None:
            text = log.read_text(encoding="utf-8", errors="replace")[-1500:]
            unavailable(f"systemd-nspawn did not start systemd (exit {nspawn.poll()}): {text.strip()}")
            return
        box = Machine(root=root, leader=leader, log=log, python=python, site_packages=site_packages)
        # systemctl answers once PID 1 has its private socket; --wait then waits for the boot's end.
        wait_for(lambda: box.run("test", "-S", "/run/systemd/private", check=False).returncode == 0,
                 max(1.0, deadline - time.monotonic()), "systemd in the container to answer", box.describe)
        booted = box.run("systemctl", "is-system-running", "--wait", check=False,
                         timeout=max(5.0, deadline - time.monotonic()))
        state = booted.stdout.strip()
        assert state in ("running", "degraded"), f"container state {state!r} {booted.stderr}; {box.describe()}"
        yield box
    finally:
        _stop(nspawn, leader)
        _remove_cgroup(cgroup)
        shutil.rmtree(base, ignore_errors=True)


def install(box: Machine, *options: str) -> subprocess.CompletedProcess[str]:
    """The real scripts/install, run inside the container (dependencies reused from the test venv)."""
    return box.run(str(REPO / "scripts" / "install"), "--python", box.python,
                   "--reuse-site-packages", box.site_packages, *options)


def exposure(text: str, unit: str) -> float:
    """The overall exposure figure of ``systemd-analyze security`` output for *unit*."""
    marker = f"Overall exposure level for {unit}: "
    line = next((line for line in text.splitlines() if marker in line), None)
    assert line is not None, f"no overall exposure for {unit} in:\n{text}"
    return float(line.split(marker, 1)[1].split()[0])


__all__: Sequence[str] = ["Machine", "machine", "booted", "install", "exposure", "wait_for", "unavailable", "REPO"]
