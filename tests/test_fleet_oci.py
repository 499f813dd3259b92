from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from slmops.errors import SlmopsError
from slmops.fleet import oci, signing
from slmops.models.store import ModelStore


@pytest.fixture(scope="module")
def src_store(tmp_path_factory, tiny_model_dir: Path) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("oci-src"))
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "model")
        store.add(staged / "model", "tiny", "hf", recipe={"kind": "import"}, metrics={"acc": 0.5})
    return store


def _digests(rec) -> dict[str, str]:
    return {rel: oci.sha256_file(p) for rel, p in oci.model_files(rec)}


def test_push_pull_round_trip_gives_identical_files(src_store, registry, tmp_path):
    target = oci.parse_oci(f"oci://{registry}/models/tiny:v1")
    pushed = oci.push(src_store, "tiny:1", target, probe=[{"prompt": "hi", "expected": "x"}])
    assert oci.DIGEST_RE.match(pushed.digest) and pushed.files >= 3
    # the manifest is ours: artifact type, one layer per file, config = the model record
    r = httpx.get(f"http://{registry}/v2/models/tiny/manifests/v1", headers={"Accept": oci.MANIFEST_MEDIA_TYPE})
    assert "sha256:" + __import__("hashlib").sha256(r.content).hexdigest() == pushed.digest
    manifest = r.json()
    assert manifest["artifactType"] == oci.ARTIFACT_TYPE
    assert len(manifest["layers"]) == pushed.files

    dest = ModelStore(tmp_path / "dest")
    got = oci.pull(dest, oci.parse_oci(f"oci://{registry}/models/tiny:v1"))
    assert not got.already_present and got.record.ref == "tiny:1"
    assert _digests(got.record) == _digests(src_store.get("tiny:1"))
    assert got.record.recipe["oci"]["digest"] == pushed.digest
    assert got.record.recipe["oci"]["probe"] == [{"prompt": "hi", "expected": "x"}]
    assert got.record.metrics == {"acc": 0.5}
    # idempotent by digest, by tag or by digest
    again = oci.pull(dest, oci.parse_oci(f"oci://{registry}/models/tiny@{pushed.digest}"))
    assert again.already_present and again.record.ref == "tiny:1" and len(dest.list()) == 1
    assert not list(dest.tmp_dir.glob("oci-*/"))


def test_signature_accepted_and_refused(src_store, registry, tmp_path):
    priv, pub = signing.generate("release", tmp_path / "keys-home")
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    _, other_pub = signing.generate("other", tmp_path / "keys-home")
    signed = oci.push(src_store, "tiny:1", oci.parse_oci(f"oci://{registry}/models/signed:v1"), sign_key=priv)
    assert signed.signed
    dest = ModelStore(tmp_path / "dest")
    ok = oci.pull(dest, signed.reference, trust=pub)
    assert ok.record.recipe["oci"]["signed_by_trusted_key"]
    with pytest.raises(signing.SignatureError, match="does not verify"):
        oci.pull(ModelStore(tmp_path / "d2"), signed.reference, trust=other_pub)
    unsigned = oci.push(src_store, "tiny:1", oci.parse_oci(f"oci://{registry}/models/unsigned:v1"))
    with pytest.raises(signing.SignatureError, match="not signed"):
        oci.pull(ModelStore(tmp_path / "d3"), unsigned.reference, trust=pub)


def test_wrong_artifact_type_is_refused(registry, tmp_path):
    client = oci.Client(registry)
    cfg = client.upload_bytes("other/thing", b"{}")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
            "layers": [],
        }
    ).encode()
    client.put_manifest("other/thing", "v1", body)
    with pytest.raises(oci.ArtifactError, match="not an slmops model"):
        oci.pull(ModelStore(tmp_path / "d"), oci.parse_oci(f"oci://{registry}/other/thing:v1"))


def test_corrupted_blob_is_refused_and_nothing_registered(src_store, registry, registry_service, tmp_path):
    pushed = oci.push(src_store, "tiny:1", oci.parse_oci(f"oci://{registry}/models/corrupt:v1"))
    manifest = json.loads(oci.Client(registry).get_manifest("models/corrupt", pushed.digest)[0])
    layer = max(manifest["layers"], key=lambda x: x["size"])
    hexd = layer["digest"].split(":")[1]
    blob = Path(registry_service.folder, "data/docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
    original = blob.read_bytes()
    blob.write_bytes(b"\0" * len(original))  # same size, other bytes: what a bad disk or a tampered store gives
    try:
        dest = ModelStore(tmp_path / "d")
        with pytest.raises(oci.ArtifactError, match="corrupted"):
            oci.pull(dest, pushed.reference)
        assert dest.list() == []
    finally:
        blob.write_bytes(original)


def test_missing_tag_and_bad_refs(registry, tmp_path):
    with pytest.raises(oci.ArtifactError, match="does not exist"):
        oci.pull(ModelStore(tmp_path / "d"), oci.parse_oci(f"oci://{registry}/models/nope:v9"))
    for bad in ("oci://x", "oci://127.0.0.1:5000/UPPER:v1", "oci://h:1/r@sha256:12", "models/x"):
        with pytest.raises(SlmopsError):
            oci.parse_oci(bad)
    ref = oci.parse_oci("oci://127.0.0.1:5000/a/b:v1")
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "a/b", "v1")
    assert oci.is_loopback("127.0.0.1:5000") and oci.is_loopback("localhost:1") and not oci.is_loopback("ghcr.io")


def test_registry_down_is_a_clear_error(tmp_path):
    from slmops.fleet.services import free_port

    with pytest.raises(oci.RegistryError, match="cannot reach the registry"):
        oci.pull(ModelStore(tmp_path / "d"), oci.parse_oci(f"oci://127.0.0.1:{free_port()}/models/x:v1"))


def test_full_disk_threshold_refuses_before_downloading(src_store, registry, tmp_path):
    pushed = oci.push(src_store, "tiny:1", oci.parse_oci(f"oci://{registry}/models/big:v1"))
    dest = ModelStore(tmp_path / "d")
    with pytest.raises(SlmopsError, match="Not enough disk space"):
        oci.pull(dest, pushed.reference, min_free_bytes=1 << 60)
    assert dest.list() == []


def test_default_probe_is_the_test_set_in_the_lineage(tmp_path, tiny_model_dir):
    from slmops.fleet import probe

    test_set = tmp_path / "test.jsonl"
    test_set.write_text(
        '{"prompt": "Route: refund", "answer": "billing"}\n{"prompt": "Route: bug", "answer": "tech"}\n'
    )
    store = ModelStore(tmp_path / "h")
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "m")
        base = store.add(staged / "m", "base", "hf")
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "m")
        store.add(
            staged / "m",
            "tuned",
            "hf",
            parents=[base.ref],
            recipe={"kind": "finetune", "eval_data": {str(test_set): "x"}},
        )
    items, source = probe.default_probe(store, "tuned")
    assert source == str(test_set) and items[0] == {"prompt": "Route: refund", "expected": "billing"}
    assert probe.default_probe(store, "base") == ([], None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n')
    with pytest.raises(SlmopsError, match="needs string fields"):
        probe.load_probe(bad)


def test_registry_credentials_from_the_environment(src_store, tmp_path, monkeypatch):
    import warnings

    from slmops.fleet import services

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt for the registry's htpasswd file (test only)

        hashed = crypt.crypt("s3cret-pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))  # cost 4: fast
    (tmp_path / "htpasswd").write_text(f"pusher:{hashed}\n")
    svc, proc = services.start_registry(tmp_path / "reg", htpasswd=tmp_path / "htpasswd")
    try:
        target = oci.parse_oci(f"oci://{svc.url}/private/tiny:v1")
        monkeypatch.delenv("SLMOPS_REGISTRY_USERNAME", raising=False)
        monkeypatch.delenv("SLMOPS_REGISTRY_PASSWORD", raising=False)
        with pytest.raises(oci.RegistryError, match="refused"):
            oci.push(src_store, "tiny:1", target)
        monkeypatch.setenv("SLMOPS_REGISTRY_USERNAME", "pusher")
        monkeypatch.setenv("SLMOPS_REGISTRY_PASSWORD", "s3cret-pw")
        pushed = oci.push(src_store, "tiny:1", target)
        got = oci.pull(ModelStore(tmp_path / "d"), pushed.reference)
        assert got.record.recipe["oci"]["digest"] == pushed.digest
    finally:
        proc.terminate()
        proc.wait(10)
