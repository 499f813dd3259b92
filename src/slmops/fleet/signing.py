"""ed25519 signatures of model artifacts, stored in the registry the way cosign stores them.

A signature is an OCI manifest tagged ``sha256-<hex of the signed manifest digest>.sig`` in the
same repository, whose layer is a cosign "simple signing" payload naming the signed digest, with
the base64 ed25519 signature of that payload in the ``dev.cosignproject.cosign/signature``
annotation. The payload names the manifest digest, so the signature covers the digest (and
through it the config and every file). Several signatures may sit on one tag (one layer each).

Keys: ``slmops keys generate NAME`` writes ``$SLMOPS_HOME/keys/NAME.key`` (PKCS#8 PEM, mode
0600) and ``NAME.pub`` (SubjectPublicKeyInfo PEM). A key argument is a path or a key name.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from slmops.errors import SlmopsError
from slmops.models.refs import validate_name
from slmops.models.store import default_home

PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"


class SignatureError(SlmopsError):
    """An artifact is unsigned or its signature does not verify against the trusted key."""


def keys_dir(home: Path | None = None) -> Path:
    return Path(home or default_home()) / "keys"


def generate(name: str, home: Path | None = None, *, force: bool = False) -> tuple[Path, Path]:
    """A new ed25519 key pair: (private key path, public key path)."""
    validate_name(name, "key name")
    folder = keys_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    if private.exists() and not force:
        raise SlmopsError(f"key {name!r} already exists at {private}.", "Pick another name or pass --force.")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = private.with_suffix(".key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, private)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public.write_bytes(pub)
    return private, public


def _locate(key: Path | str, suffix: str) -> Path:
    path = Path(key).expanduser()
    if path.exists():
        return path
    named = keys_dir() / f"{key}{suffix}"
    if named.exists():
        return named
    raise SlmopsError(
        f"key {key} not found (neither a file nor {named}).", "Create one with `slmops keys generate NAME`."
    )


def load_private_key(key: Path | str) -> Ed25519PrivateKey:
    path = _locate(key, ".key")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SlmopsError(f"{path} is not a PEM private key ({exc}).") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SlmopsError(f"{path} is not an ed25519 key.", "Make one with `slmops keys generate NAME`.")
    return loaded


def load_public_key(key: Path | str) -> Ed25519PublicKey:
    path = _locate(key, ".pub")
    try:
        loaded = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise SlmopsError(f"{path} is not a PEM public key ({exc}).") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise SlmopsError(f"{path} is not an ed25519 public key.")
    return loaded


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def payload(repository: str, digest: str) -> bytes:
    doc = {
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def attach_signature(client, repository: str, digest: str, key: Ed25519PrivateKey) -> str:
    """Sign ``digest`` and store the signature beside it (tag ``sha256-HEX.sig``); returns the
    signature manifest's digest."""
    body = payload(repository, digest)
    sig = base64.b64encode(key.sign(body)).decode()
    payload_digest = client.upload_bytes(repository, body)
    config_digest = client.upload_bytes(repository, EMPTY_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": EMPTY_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(EMPTY_CONFIG)},
        "layers": [
            {
                "mediaType": PAYLOAD_MEDIA_TYPE,
                "digest": payload_digest,
                "size": len(body),
                "annotations": {SIGNATURE_ANNOTATION: sig},
            }
        ],
    }
    return client.put_manifest(repository, signature_tag(digest), json.dumps(manifest, separators=(",", ":")).encode())


def verify(client, repository: str, digest: str, trusted: Ed25519PublicKey) -> None:
    """Raise :class:`SignatureError` unless a signature of ``digest`` verifies with ``trusted``."""
    got = client.get_manifest(repository, signature_tag(digest))
    if got is None:
        raise SignatureError(
            f"{repository}@{digest} is not signed, and a trust key was given.",
            "Push it with `slmops models push --sign KEY`, or drop --trust.",
        )
    try:
        layers = json.loads(got[0]).get("layers") or []
    except ValueError:
        layers = []
    for layer in layers:
        sig = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if layer.get("mediaType") != PAYLOAD_MEDIA_TYPE or not sig:
            continue
        body = client.blob_bytes(repository, layer["digest"], limit=1 << 16)
        try:
            signed_digest = json.loads(body)["critical"]["image"]["docker-manifest-digest"]
            trusted.verify(base64.b64decode(sig), body)
        except (ValueError, KeyError, TypeError, InvalidSignature):
            continue
        if signed_digest == digest:
            return
    raise SignatureError(
        f"the signature of {repository}@{digest} does not verify with the trusted key.",
        "The artifact was signed by another key or tampered with; it was not used.",
    )
