"""Where the broker and the registry are: ``--broker``/``--registry``, else ``SLMOPS_BROKER`` /
``SLMOPS_REGISTRY``, else what ``slmops fleet up`` recorded under ``$SLMOPS_HOME/fleet/`` (with
the admin credentials ``fleet up --secure`` made)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from slmops.errors import SlmopsError
from slmops.fleet import mqtt, services
from slmops.models.store import default_home

ADMIN_FILE = "admin.json"


def broker(
    flag: str | None = None,
    *,
    home: Path | None = None,
    ca_file: str | Path | None = None,
    credentials: Path | None = None,
) -> mqtt.Broker:
    home = Path(home or default_home())
    username = password = None
    if credentials is not None:
        username, password, url_in_file = _read_credentials(credentials)
        flag = flag or url_in_file
    url = flag or os.environ.get("SLMOPS_BROKER")
    if not url:
        recorded = services.read_recorded(home).get("broker")
        if recorded is None:
            raise SlmopsError(
                "no MQTT broker given.",
                "Pass --broker mqtt://HOST:PORT, set SLMOPS_BROKER, or start one with `slmops fleet up`.",
            )
        url = recorded.url
        admin = services.fleet_dir(home) / "auth" / ADMIN_FILE
        if admin.exists() and username is None:
            username, password, _ = _read_credentials(admin)
    return mqtt.parse_broker(url, username=username, password=password, ca_file=ca_file)


def registry(flag: str | None = None, *, home: Path | None = None) -> str | None:
    """``host:port`` of the default registry, or None when nothing names one."""
    value = flag or os.environ.get("SLMOPS_REGISTRY")
    if not value:
        recorded = services.read_recorded(Path(home or default_home())).get("registry")
        value = recorded.url if recorded else None
    return value.removeprefix("oci://").rstrip("/") if value else None


def _read_credentials(path: Path) -> tuple[str | None, str | None, str | None]:
    try:
        data = json.loads(Path(path).read_text())
        return data.get("username"), data.get("password"), data.get("broker")
    except (OSError, ValueError, AttributeError) as exc:
        raise SlmopsError(
            f"cannot read broker credentials from {path} ({exc}).", "Make them with `slmops fleet provision DEVICE_ID`."
        ) from None
