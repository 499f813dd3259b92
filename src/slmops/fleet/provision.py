"""Per-device broker credentials and ACLs for Mosquitto.

``provision(auth_dir, fleet, device)`` adds the device to ``auth_dir/passwd`` (hashed by
``mosquitto_passwd``) and rewrites ``auth_dir/acl`` from ``auth_dir/devices.json`` so that each
device may only read its own ``desired`` topic and write its own ``state``, ``telemetry``,
``availability`` and ``logs`` topics; the admin user (``fleet assign``, the roll-out controller)
may read and write the whole ``slmops/`` tree. The device's credentials go to a 0600 JSON file
that ``slmops agent run --credentials FILE`` reads, so no password is ever on a command line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from slmops.errors import SlmopsError
from slmops.fleet import protocol

ADMIN_USER = "slmops-admin"


def _write_private(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _passwd(auth_dir: Path, user: str, password: str) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise SlmopsError("mosquitto_passwd is not installed.", "Install the `mosquitto` system package.")
    path = auth_dir / "passwd"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    # -b takes the password as an argument of this short-lived child; it never comes from ours
    r = subprocess.run([tool, "-b", str(path), user, password], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise SlmopsError(f"mosquitto_passwd failed: {(r.stderr or r.stdout).strip()}")


def _acl(devices: dict[str, str]) -> str:
    lines = [f"user {ADMIN_USER}", f"topic readwrite {protocol.TOPIC_ROOT}/#", ""]
    for user, fleet in sorted(devices.items()):
        device = user.split("/", 1)[-1]
        lines.append(f"user {user}")
        lines.append(f"topic read {protocol.desired_topic(fleet, device)}")
        for leaf in ("state", "telemetry", "availability", "logs"):
            lines.append(f"topic write {protocol.device_topic(fleet, device, leaf)}")
        lines.append("")
    return "\n".join(lines)


def _registry(auth_dir: Path) -> dict[str, str]:
    path = auth_dir / "devices.json"
    return json.loads(path.read_text()) if path.exists() else {}


def ensure_admin(auth_dir: Path, broker_url: str | None = None) -> Path:
    """The admin credentials file (made once); the ACL file exists afterwards."""
    auth_dir.mkdir(parents=True, exist_ok=True)
    creds = auth_dir / "admin.json"
    if not creds.exists():
        password = secrets.token_urlsafe(24)
        _passwd(auth_dir, ADMIN_USER, password)
        _write_private(creds, {"username": ADMIN_USER, "password": password, "broker": broker_url})
    (auth_dir / "acl").write_text(_acl(_registry(auth_dir)))
    return creds


def provision(
    auth_dir: Path, fleet: str, device_id: str, *, broker_url: str | None = None, out: Path | None = None
) -> Path:
    """Make (or renew) a device's credentials and ACL entries; returns its credentials file."""
    protocol.check_name("fleet", fleet)
    protocol.check_name("device", device_id)
    ensure_admin(auth_dir, broker_url)
    user = f"{fleet}/{device_id}"  # one user per device and fleet; '/' is allowed in MQTT user names
    password = secrets.token_urlsafe(24)
    _passwd(auth_dir, user, password)
    devices = _registry(auth_dir)
    devices[user] = fleet
    (auth_dir / "devices.json").write_text(json.dumps(devices, indent=2))
    (auth_dir / "acl").write_text(_acl(devices))
    path = out or auth_dir / "devices" / fleet / f"{device_id}.json"
    _write_private(
        path, {"device_id": device_id, "fleet": fleet, "username": user, "password": password, "broker": broker_url}
    )
    return path
