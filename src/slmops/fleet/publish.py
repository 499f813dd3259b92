"""Resolve what ``fleet assign --model`` names to a pullable artifact: an ``oci://`` reference
(checked in the registry) or a store reference (pushed first)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmops.errors import SlmopsError
from slmops.fleet import oci
from slmops.models.store import ModelStore


@dataclass(frozen=True)
class Published:
    reference: str  # oci://HOST/REPO@sha256:...
    digest: str
    format: str
    name: str
    pushed: bool


def publish(
    store: ModelStore,
    model: str,
    *,
    registry: str | None,
    repository: str | None = None,
    sign_key: Path | None = None,
    plain_http: bool = False,
    credentials: oci.Credentials | None = None,
) -> Published:
    if oci.is_oci(model):
        ref = oci.parse_oci(model, default_registry=registry)
        client = oci.Client(ref.registry, plain_http=plain_http, credentials=credentials)
        art = oci.resolve(client, ref)
        return Published(str(art.reference), art.digest, art.config["format"], art.config["name"], False)
    if registry is None:
        raise SlmopsError(
            f"{model} is a store model and no registry is known to push it to.",
            "Pass --registry HOST:PORT, set SLMOPS_REGISTRY, or start one with `slmops fleet up`.",
        )
    rec = store.get(model)
    target = oci.OciRef(registry, repository or f"models/{rec.name.lower()}", f"v{rec.version}")
    client = oci.Client(registry, plain_http=plain_http, credentials=credentials)
    res = oci.push(store, rec.ref, target, client=client, sign_key=sign_key)
    return Published(str(res.reference), res.digest, rec.format, rec.name, True)
