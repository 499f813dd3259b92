"""Local fleet services as real processes: Eclipse Mosquitto (MQTT) and the CNCF Distribution
registry (OCI), each on a free loopback port with its config, data and log under one folder.

Used by ``slmops fleet up/down`` (which record the addresses in ``$SLMOPS_HOME/fleet/``) and by
the test fixtures. Nothing here is a fake: the processes are the ones a fleet runs in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slmops.errors import SlmopsError

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
REGISTRY_CANDIDATES = ("docker-registry", "registry", "/usr/bin/docker-registry")
STATE_FILE = "services.json"


@dataclass(frozen=True)
class Service:
    """One running service: its kind, address, process id and folder."""

    kind: str  # "mosquitto" | "registry"
    host: str
    port: int
    pid: int
    folder: str
    tls: bool = False

    @property
    def url(self) -> str:
        if self.kind == "mosquitto":
            return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
        return f"{self.host}:{self.port}"

    def to_dict(self) -> dict:
        return {**asdict(self), "url": self.url}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_binary(candidates: tuple[str, ...], package: str) -> str:
    for c in candidates:
        found = shutil.which(c)
        if found:
            return found
    raise SlmopsError(
        f"{candidates[0]} is not installed.",
        f"Install the `{package}` system package (Debian/Ubuntu: `sudo apt-get install {package}`).",
    )


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise SlmopsError(f"{Path(str(proc.args[0])).name} exited with code {proc.returncode}: {tail.strip()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    proc.kill()
    raise SlmopsError(f"{Path(str(proc.args[0])).name} did not listen on {host}:{port} within {timeout:.0f}s.")


def _spawn(argv: list[str], log: Path, detach: bool) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=detach
        )


def start_mosquitto(
    folder: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    detach: bool = False,
    timeout: float = 10.0,
) -> tuple[Service, subprocess.Popen]:
    """Start Mosquitto on ``host:port`` (a free port by default), persistence and log in ``folder``.

    With ``password_file`` anonymous clients are refused; ``acl_file`` restricts topics per user
    (both are re-read on SIGHUP, see :func:`reload`). ``tls_cert``/``tls_key`` make it an
    ``mqtts://`` listener."""
    binary = find_binary(MOSQUITTO_CANDIDATES, "mosquitto")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    lines = [
        "per_listener_settings false",
        f"listener {port} {host}",
        f"allow_anonymous {'false' if password_file else 'true'}",
        "persistence true",
        f"persistence_location {folder}/",
        f"log_dest file {folder / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "max_queued_messages 10000",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # as root Mosquitto drops to the `mosquitto` user, who cannot read files made by this one
        lines.append("user root")
    if password_file:
        lines.append(f"password_file {Path(password_file).resolve()}")
    if acl_file:
        lines.append(f"acl_file {Path(acl_file).resolve()}")
    if tls_cert and tls_key:
        lines += [f"certfile {Path(tls_cert).resolve()}", f"keyfile {Path(tls_key).resolve()}"]
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = folder / "mosquitto.out"
    proc = _spawn([binary, "-c", str(conf)], log, detach)
    _wait_port(host, port, proc, log, timeout)
    return Service("mosquitto", host, port, proc.pid, str(folder), tls=bool(tls_cert)), proc


def start_registry(
    folder: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    htpasswd: Path | None = None,
    detach: bool = False,
    timeout: float = 15.0,
) -> tuple[Service, subprocess.Popen]:
    """Start the CNCF Distribution registry on ``host:port`` (plain HTTP, loopback), storage in
    ``folder/data``, deletes enabled (so tags and blobs can be cleaned up); with ``htpasswd``
    (bcrypt entries) every request needs basic-auth credentials."""
    binary = find_binary(REGISTRY_CANDIDATES, "docker-registry")
    folder = Path(folder).resolve()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    conf = folder / "registry.yml"
    conf.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: {host}:{port}\n"
        + (f"auth:\n  htpasswd:\n    realm: slmops\n    path: {Path(htpasswd).resolve()}\n" if htpasswd else "")
    )
    log = folder / "registry.out"
    env_argv = [binary, "serve", str(conf)]
    proc = _spawn(env_argv, log, detach)
    _wait_port(host, port, proc, log, timeout)
    return Service("registry", host, port, proc.pid, str(folder)), proc


def reload(service: Service) -> None:
    """Ask Mosquitto to re-read its password and ACL files (SIGHUP)."""
    if not is_running(service):
        raise SlmopsError(f"{service.kind} (pid {service.pid}) is not running.")
    os.kill(service.pid, signal.SIGHUP)


def is_running(service: Service) -> bool:
    """True when ``service.pid`` is still the process we started (its command line names its folder)."""
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        try:
            os.kill(service.pid, 0)
        except OSError:
            return False
        return True
    return service.folder in cmdline


def stop(service: Service, timeout: float = 5.0) -> bool:
    """Stop a service started here (SIGTERM, then SIGKILL); False when it was not running."""
    if not is_running(service):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(service.pid, os.WNOHANG)
        if not Path(f"/proc/{service.pid}").exists() or not is_running(service):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(service.pid, signal.SIGKILL)
    return True


# -- what `fleet up` records ------------------------------------------------------------------
def fleet_dir(home: Path) -> Path:
    return Path(home) / "fleet"


def read_recorded(home: Path) -> dict[str, Service]:
    """The services `fleet up` recorded under ``home/fleet/`` (empty when none)."""
    path = fleet_dir(home) / STATE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {k: Service(**{f: v[f] for f in Service.__dataclass_fields__ if f in v}) for k, v in data.items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise SlmopsError(
            f"{path} is not a valid services record ({exc}).", "Remove it and run `slmops fleet up`."
        ) from None


def _record(home: Path, services: dict[str, Service]) -> None:
    path = fleet_dir(home) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: s.to_dict() for k, s in services.items()}, indent=2))
    os.replace(tmp, path)


def up(
    home: Path,
    *,
    broker_port: int | None = None,
    registry_port: int | None = None,
    password_file: Path | None = None,
    acl_file: Path | None = None,
) -> dict[str, Service]:
    """Start (or find already running) the local broker and registry for ``home``; detached
    processes that outlive this one, recorded in ``home/fleet/services.json``."""
    base = fleet_dir(home)
    running = {k: s for k, s in read_recorded(home).items() if is_running(s)}
    if "broker" not in running:
        running["broker"], _ = start_mosquitto(
            base / "mosquitto", port=broker_port, password_file=password_file, acl_file=acl_file, detach=True
        )
    if "registry" not in running:
        running["registry"], _ = start_registry(base / "registry", port=registry_port, detach=True)
    _record(home, running)
    return running


def down(home: Path) -> dict[str, bool]:
    """Stop what `fleet up` started for ``home``; data folders are kept."""
    recorded = read_recorded(home)
    result = {k: stop(s) for k, s in recorded.items()}
    (fleet_dir(home) / STATE_FILE).unlink(missing_ok=True)
    return result
