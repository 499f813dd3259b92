"""Models as OCI artifacts: ``push`` a store model to any OCI registry, ``pull`` it back by tag
or digest into another store, verified file by file.

The artifact (an OCI image manifest with an ``artifactType`` of our own)::

    config   application/vnd.slmops.model.config.v1+json   the model record: name, version, format,
                                                           parameters, recipe, metrics, lineage
                                                           summary, sha256 of every file, probe,
                                                           slmops version
    layers   application/vnd.slmops.model.file.v1          one per file, titled with its path

Transport: the ``oras`` SDK's :class:`oras.provider.Registry` (container parsing, auth, blob
existence checks and uploads). Two things are done directly on the distribution HTTP API through
that same client: manifests are PUT/GET as raw bytes (oras re-serialises a dict, so the digest we
sign could differ from the one the registry stores, and its manifest schema has no
``artifactType``) and blobs are streamed to disk while being hashed (oras writes them unverified).
oras's own retry decorator (sleeps of 3 to 83 s, 2 minutes in all) is bypassed: callers decide
the backoff (the agent retries with its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oras.auth
import oras.provider
import requests

from slmops import __version__
from slmops.errors import SlmopsError
from slmops.models.store import ModelRecord, ModelStore

ARTIFACT_TYPE = "application/vnd.slmops.model.v1"
CONFIG_MEDIA_TYPE = "application/vnd.slmops.model.config.v1+json"
FILE_MEDIA_TYPE = "application/vnd.slmops.model.file.v1"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
_REPO = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


class RegistryError(SlmopsError):
    """The registry could not be reached or refused a request (retry may help)."""


class ArtifactError(SlmopsError):
    """The artifact is not what it claims: wrong type, digest mismatch, bad signature."""


@dataclass(frozen=True)
class OciRef:
    registry: str  # host[:port]
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> OciRef:
        return OciRef(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        at = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"oci://{self.registry}/{self.repository}{at}"


def is_oci(ref: str) -> bool:
    return ref.startswith("oci://")


def parse_oci(ref: str, *, default_registry: str | None = None) -> OciRef:
    """``oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`` (``oci://REPO:TAG`` with a default registry)."""
    if not is_oci(ref):
        raise SlmopsError(f"{ref!r} is not an OCI reference.", "Use oci://HOST[:PORT]/REPO:TAG.")
    rest = ref[len("oci://") :]
    digest = tag = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise SlmopsError(f"invalid digest in {ref!r}.", "A digest is sha256: followed by 64 hex digits.")
    host, _, path = rest.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        if default_registry is None:
            raise SlmopsError(f"{ref!r} names no registry host.", "Use oci://HOST[:PORT]/REPO:TAG.")
        host, path = default_registry, rest
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise SlmopsError(f"invalid tag {tag!r} in {ref!r}.", "Tags are letters, digits, '.', '_', '-'.")
    if not _REPO.match(path):
        raise SlmopsError(
            f"invalid repository {path!r} in {ref!r}.",
            "Repositories are lowercase: letters, digits, '.', '_', '-', '/'.",
        )
    return OciRef(host, path, tag, digest)


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Registry(oras.provider.Registry):
    """oras's registry client without its built-in retry sleeps (we back off ourselves)."""

    do_request = oras.provider.Registry.do_request.__wrapped__  # type: ignore[attr-defined]


@dataclass
class Credentials:
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, username: str | None = None, password: str | None = None) -> Credentials:
        return cls(
            username or os.environ.get("SLMOPS_REGISTRY_USERNAME"),
            password or os.environ.get("SLMOPS_REGISTRY_PASSWORD"),
        )


class Client:
    """One registry host: blobs and manifests over the distribution API via oras."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        plain_http: bool = False,
        ca_file: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        insecure = plain_http or is_loopback(registry)
        self.registry = registry
        self.prefix = "http" if insecure else "https"
        self.timeout = timeout
        creds = credentials or Credentials.from_env()
        backend = "token"
        if creds.username and creds.password and self._challenge(ca_file) == "basic":
            backend = "basic"  # oras's token backend would ask the Basic realm for a token
        self._oras = _Registry(hostname=registry, insecure=insecure, tls_verify=ca_file or True, auth_backend=backend)
        if creds.username and creds.password:
            self._oras.auth.set_basic_auth(creds.username, creds.password)

    def _challenge(self, ca_file: str | None) -> str | None:
        """The auth scheme ``/v2/`` asks for (``basic``/``bearer``), None when it asks none."""
        try:
            r = requests.get(f"{self.prefix}://{self.registry}/v2/", timeout=10, verify=ca_file or True)
        except requests.exceptions.RequestException:
            return None
        header = r.headers.get("WWW-Authenticate", "") if r.status_code == 401 else ""
        return header.split(" ", 1)[0].lower() or None

    def _container(self, repository: str):
        return self._oras.get_container(f"{self.registry}/{repository}")

    def _request(self, method: str, url: str, **kw: Any) -> requests.Response:
        try:
            return self._oras.do_request(url, method, **kw)
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            # oras followed a Basic challenge as if it named a token service: credentials are missing
            raise RegistryError(
                f"the registry {self.registry} refused the request: it needs credentials.",
                "Set SLMOPS_REGISTRY_USERNAME/SLMOPS_REGISTRY_PASSWORD or pass --username and --password-stdin.",
            ) from None
        except requests.exceptions.SSLError as exc:
            raise RegistryError(
                f"TLS to the registry {self.registry} failed: {exc}.",
                "Pass --plain-http for a plain-HTTP registry, or a CA bundle.",
            ) from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise RegistryError(
                f"cannot reach the registry {self.registry}: {type(exc).__name__}.",
                "Start one with `slmops fleet up` or check --registry.",
            ) from None
        except ValueError as exc:  # oras: "Cannot respond to request for authentication."
            raise RegistryError(f"the registry {self.registry} refused the credentials ({exc}).") from None

    def _check(self, r: requests.Response, what: str) -> None:
        if r.status_code in (401, 403):
            raise RegistryError(
                f"the registry {self.registry} refused {what} (HTTP {r.status_code}).",
                "Set SLMOPS_REGISTRY_USERNAME/SLMOPS_REGISTRY_PASSWORD or pass --username and --password-stdin.",
            )
        if r.status_code >= 400:
            detail = r.text[:300].strip()
            raise RegistryError(f"the registry {self.registry} failed {what}: HTTP {r.status_code} {detail}")

    # -- blobs ---------------------------------------------------------------------------------
    def upload_file(self, repository: str, path: Path, digest: str, size: int) -> None:
        container = self._container(repository)
        r = self._request("HEAD", f"{self.prefix}://{container.get_blob_url(digest)}")
        if r.status_code == 200:
            return
        # oras's upload_blob reads the whole file into memory; stream it instead (POST a
        # session, then PUT the file with its digest), through the same oras session and auth
        r = self._request(
            "POST",
            f"{self.prefix}://{container.upload_blob_url()}",
            headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
        )
        self._check(r, f"the upload of {path.name}")
        location = self._oras._get_location(r, container)
        if not location:
            raise RegistryError(f"the registry {self.registry} gave no upload location for {path.name}.")
        url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        # a streamed body cannot be re-sent after a 401: send the credentials up front (the POST
        # above already fetched a token for this repository when the registry uses tokens)
        if isinstance(self._oras.auth, oras.auth.BasicAuth) and getattr(self._oras.auth, "_basic_auth", None):
            headers.update(self._oras.auth.get_auth_header())
        with open(path, "rb") as f:
            r = self._request("PUT", url, data=f, headers=headers)
        self._check(r, f"the upload of {path.name}")

    def upload_bytes(self, repository: str, data: bytes) -> str:
        digest = sha256_bytes(data)
        with tempfile.NamedTemporaryFile(prefix="slmops-blob-", delete=False) as f:
            f.write(data)
        try:
            self.upload_file(repository, Path(f.name), digest, len(data))
        finally:
            os.unlink(f.name)
        return digest

    def fetch_blob(self, repository: str, digest: str, dest: Path, *, rate_limit: int | None = None) -> None:
        """Stream a blob to ``dest`` while hashing it (at most ``rate_limit`` bytes/s when
        given); a mismatch removes the file and raises."""
        url = f"{self.prefix}://{self._container(repository).get_blob_url(digest)}"
        r = self._request("GET", url, stream=True)
        with contextlib.closing(r):
            self._check(r, f"the download of blob {digest[:19]}")
            h = hashlib.sha256()
            started, done = time.monotonic(), 0
            try:
                with open(dest, "wb") as f:
                    for chunk in r.iter_content(chunk_size=min(CHUNK, rate_limit or CHUNK)):
                        h.update(chunk)
                        f.write(chunk)
                        done += len(chunk)
                        if rate_limit:
                            f.flush()
                            ahead = done / rate_limit - (time.monotonic() - started)
                            if ahead > 0:
                                time.sleep(ahead)
            except requests.exceptions.RequestException as exc:
                dest.unlink(missing_ok=True)
                raise RegistryError(f"download of blob {digest[:19]} broke off: {type(exc).__name__}.") from None
        got = "sha256:" + h.hexdigest()
        if got != digest:
            dest.unlink(missing_ok=True)
            raise ArtifactError(f"blob {digest} from {self.registry}/{repository} has digest {got}: corrupted.")

    def blob_bytes(self, repository: str, digest: str, limit: int = 64 << 20) -> bytes:
        url = f"{self.prefix}://{self._container(repository).get_blob_url(digest)}"
        r = self._request("GET", url)
        self._check(r, f"the download of blob {digest[:19]}")
        data = r.content[: limit + 1]
        if sha256_bytes(data) != digest:
            raise ArtifactError(f"blob {digest} from {self.registry}/{repository} does not match its digest.")
        return data

    # -- manifests -----------------------------------------------------------------------------
    def put_manifest(self, repository: str, reference: str, body: bytes) -> str:
        url = f"{self.prefix}://{self.registry}/v2/{repository}/manifests/{reference}"
        r = self._request("PUT", url, data=body, headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        self._check(r, f"the manifest {repository}:{reference}")
        digest = sha256_bytes(body)
        returned = r.headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise RegistryError(f"the registry stored the manifest as {returned}, expected {digest}.")
        return digest

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        """Raw manifest bytes and their digest; ``None`` when the registry has no such manifest."""
        url = f"{self.prefix}://{self.registry}/v2/{repository}/manifests/{reference}"
        r = self._request("GET", url, headers={"Accept": MANIFEST_MEDIA_TYPE})
        if r.status_code == 404:
            return None
        self._check(r, f"the manifest {repository}:{reference}")
        body = r.content
        digest = sha256_bytes(body)
        if reference.startswith("sha256:") and digest != reference:
            raise ArtifactError(f"the manifest fetched as {reference} hashes to {digest}.")
        return body, digest


# -- the artifact --------------------------------------------------------------------------------
def model_files(rec: ModelRecord) -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of every file of a model, sorted."""
    if rec.path.is_file():
        return [(rec.path.name, rec.path)]
    return sorted((p.relative_to(rec.path).as_posix(), p) for p in rec.path.rglob("*") if p.is_file())


def _lineage_summary(store: ModelStore, rec: ModelRecord) -> list[dict[str, Any]]:
    from slmops.models.lineage import lineage

    try:
        return [
            {"ref": n.record.ref, "step": n.step, "depth": n.depth, "inputs": n.inputs} for n in lineage(store, rec.ref)
        ]
    except SlmopsError:
        return []


@dataclass(frozen=True)
class PushResult:
    reference: OciRef  # by digest
    digest: str
    tag: str | None
    files: int
    bytes: int
    signed: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference),
            "digest": self.digest,
            "tag": self.tag,
            "files": self.files,
            "bytes": self.bytes,
            "signed": self.signed,
            "seconds": round(self.seconds, 3),
        }


def push(
    store: ModelStore,
    ref: str,
    target: OciRef,
    *,
    client: Client | None = None,
    sign_key: Path | None = None,
    probe: list[dict[str, Any]] | None = None,
    probe_min_score: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> PushResult:
    """Push a store model as an slmops artifact to ``target`` (tag), optionally signed."""
    from slmops.fleet import signing

    started = time.perf_counter()
    rec = store.get(ref)
    if rec.format == "peft-adapter":
        raise SlmopsError(
            f"{rec.ref} is a PEFT adapter; a device needs a whole model.",
            "Merge it first: `slmops optimize REF --merge`, then push the merged model.",
        )
    if target.digest:
        raise SlmopsError(f"push to a tag, not a digest ({target}).", "Use oci://HOST/REPO:TAG.")
    client = client or Client(target.registry)
    key = signing.load_private_key(sign_key) if sign_key else None  # fail before uploading
    files = model_files(rec)
    layers = []
    total = 0
    for rel, path in files:
        digest, size = sha256_file(path), path.stat().st_size
        if progress:
            progress(f"uploading {rel} ({size} bytes)")
        client.upload_file(target.repository, path, digest, size)
        layers.append({"mediaType": FILE_MEDIA_TYPE, "digest": digest, "size": size, "annotations": {TITLE: rel}})
        total += size
    config = {
        "name": rec.name,
        "version": rec.version,
        "format": rec.format,
        "parameters": rec.parameters,
        "layout": "file" if rec.path.is_file() else "folder",
        "recipe": rec.recipe,
        "metrics": rec.metrics,
        "parents": rec.parents,
        "lineage": _lineage_summary(store, rec),
        "files": {layer["annotations"][TITLE]: layer["digest"] for layer in layers},
        "size_bytes": total,
        "probe": probe or [],
        "probe_min_score": probe_min_score,
        "slmops_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    config_bytes = json.dumps(config, sort_keys=True, default=str).encode()
    config_digest = client.upload_bytes(target.repository, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config_bytes)},
        "layers": layers,
        "annotations": {
            "org.opencontainers.image.created": config["created_at"],
            "org.opencontainers.image.title": rec.name,
            "org.opencontainers.image.version": str(rec.version),
            "dev.slmops.model.format": rec.format,
        },
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    tag = target.tag or "latest"
    digest = client.put_manifest(target.repository, tag, body)
    if key is not None:
        signing.attach_signature(client, target.repository, digest, key)
    return PushResult(
        target.with_digest(digest), digest, tag, len(files), total, key is not None, time.perf_counter() - started
    )


@dataclass(frozen=True)
class Artifact:
    """A resolved, type-checked manifest and its verified config."""

    reference: OciRef  # by digest
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def size(self) -> int:
        return sum(int(layer.get("size", 0)) for layer in self.manifest.get("layers", []))


def resolve(client: Client, ref: OciRef, *, trust: Path | None = None) -> Artifact:
    """Fetch the manifest (by tag or digest), check it is an slmops model, verify the signature
    when a trust key is given, and fetch and verify the config."""
    from slmops.fleet import signing

    got = client.get_manifest(ref.repository, ref.reference)
    if got is None:
        raise ArtifactError(f"{ref} does not exist in the registry.", "Check the repository, tag or digest.")
    body, digest = got
    try:
        manifest = json.loads(body)
    except ValueError:
        raise ArtifactError(f"the manifest of {ref} is not JSON.") from None
    kind = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType")
    if kind != ARTIFACT_TYPE or (manifest.get("config") or {}).get("mediaType") != CONFIG_MEDIA_TYPE:
        raise ArtifactError(
            f"{ref} is not an slmops model (artifact type {kind!r}, expected {ARTIFACT_TYPE}).",
            "Push models with `slmops models push`.",
        )
    if trust is not None:
        signing.verify(client, ref.repository, digest, signing.load_public_key(trust))
    config_bytes = client.blob_bytes(ref.repository, manifest["config"]["digest"])
    try:
        config = json.loads(config_bytes)
    except ValueError:
        raise ArtifactError(f"the config of {ref} is not JSON.") from None
    titles = {(layer.get("annotations") or {}).get(TITLE): layer.get("digest") for layer in manifest["layers"]}
    if titles != config.get("files"):
        raise ArtifactError(f"the layers of {ref} do not match the files its config lists.")
    return Artifact(ref.with_digest(digest), digest, manifest, config)


def find_pulled(store: ModelStore, digest: str) -> ModelRecord | None:
    for rec in reversed(store.list()):
        if (rec.recipe.get("oci") or {}).get("digest") == digest:
            return rec
    return None


def _safe_rel(rel: str) -> str:
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or rel.startswith(("/", "\\")):
        raise ArtifactError(f"the artifact names an unsafe file path {rel!r}.")
    return rel


@dataclass(frozen=True)
class PullResult:
    record: ModelRecord
    digest: str
    reference: str
    already_present: bool
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record.to_dict(),
            "oci_digest": self.digest,
            "oci_reference": self.reference,
            "already_present": self.already_present,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def pull(
    store: ModelStore,
    ref: OciRef,
    *,
    client: Client | None = None,
    trust: Path | None = None,
    name: str | None = None,
    min_free_bytes: int = 0,
    rate_limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    artifact: Artifact | None = None,
) -> PullResult:
    """Pull an slmops artifact into ``store``: every blob is verified as it streams; files go to a
    resumable staging folder named after the digest, and the model is registered only once all of
    them check out (idempotent: a digest already pulled registers nothing)."""
    from slmops.models.artifacts import disk_errors, require_free_space
    from slmops.models.refs import validate_name

    started = time.perf_counter()
    client = client or Client(ref.registry)
    art = artifact or resolve(client, ref, trust=trust)
    found = find_pulled(store, art.digest)
    if found is not None:
        return PullResult(found, art.digest, str(art.reference), True, 0, time.perf_counter() - started)
    cfg = art.config
    fmt = cfg.get("format")
    from slmops.models.store import FORMATS

    if fmt not in FORMATS:
        raise ArtifactError(f"{ref} has an unknown model format {fmt!r}.", f"Known: {', '.join(FORMATS)}.")
    model_name = validate_name(name or str(cfg.get("name") or ""))
    hexd = art.digest.split(":", 1)[1]
    with store.lock(f"oci-{hexd[:32]}"):
        found = find_pulled(store, art.digest)
        if found is not None:
            return PullResult(found, art.digest, str(art.reference), True, 0, time.perf_counter() - started)
        stage = store.tmp_dir / f"oci-{hexd[:32]}"  # stable name: a restarted pull resumes here
        files_dir = stage / "files"
        files_dir.mkdir(parents=True, exist_ok=True)
        missing = 0
        for layer in art.manifest["layers"]:
            dest = files_dir / _safe_rel(layer["annotations"][TITLE])
            if not (dest.exists() and dest.stat().st_size == layer["size"]):
                missing += int(layer["size"])
        require_free_space(store.home, missing + min_free_bytes, f"pulling {ref} (keeping {min_free_bytes} bytes free)")
        fetched = 0
        with disk_errors(f"pulling {ref}", store.home):
            for layer in art.manifest["layers"]:
                rel = _safe_rel(layer["annotations"][TITLE])
                dest = files_dir / rel
                if dest.exists() and dest.stat().st_size == layer["size"] and sha256_file(dest) == layer["digest"]:
                    continue  # finished (and renamed from .part) before an interruption, checked again
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                if progress:
                    progress(f"downloading {rel} ({layer['size']} bytes)")
                client.fetch_blob(ref.repository, layer["digest"], part, rate_limit=rate_limit)
                os.replace(part, dest)
                fetched += int(layer["size"])
        # every file was hashed as it streamed (fetch_blob) or re-hashed above when resumed
        if sorted(p.relative_to(files_dir).as_posix() for p in files_dir.rglob("*") if p.is_file()) != sorted(
            cfg["files"]
        ):
            raise ArtifactError(f"the files staged for {ref} are not the files its config lists.")
        recipe = {
            "kind": "pull",
            "source": str(art.reference),
            "oci": {
                "reference": str(art.reference),
                "digest": art.digest,
                "registry": ref.registry,
                "repository": ref.repository,
                "tag": ref.tag,
                "source_ref": f"{cfg.get('name')}:{cfg.get('version')}",
                "signed_by_trusted_key": trust is not None,
                "probe": cfg.get("probe") or [],
                "probe_min_score": cfg.get("probe_min_score", 0.5),
            },
            "source_recipe": cfg.get("recipe") or {},
            "source_parents": cfg.get("parents") or [],
        }
        rec = store.add(
            files_dir,
            model_name,
            fmt,
            recipe=recipe,
            metrics=cfg.get("metrics") or {},
            parameters=cfg.get("parameters"),
        )
        shutil.rmtree(stage, ignore_errors=True)
    return PullResult(rec, art.digest, str(art.reference), False, fetched, time.perf_counter() - started)
