"""The fleet end to end through the real commands: fleet up, keys, push, three `agent run`
processes with their own stores, assign by label, fleet devices, pull elsewhere, fleet down;
and a `kill -9` of an agent mid-download."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx

from slmops.fleet import oci
from slmops.models.store import ModelStore
from tests.fleet_helpers import StateWatch, add_tiny


def _run(slmops_bin, home, *args, input=None, check=True):
    env = {**os.environ, "SLMOPS_HOME": str(home)}
    r = subprocess.run([str(slmops_bin), *args], env=env, capture_output=True, text=True, timeout=120, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"slmops {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return r


def _cli(home, *args, monkeypatch):
    """The same commands in-process (each subprocess start costs seconds on a loaded machine)."""
    from typer.testing import CliRunner

    from slmops.cli import app

    monkeypatch.setenv("SLMOPS_HOME", str(home))
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if r.exit_code != 0:
        raise AssertionError(f"slmops {' '.join(args)} exited {r.exit_code}: {r.output[-2000:]} {r.exception!r}")
    return r.stdout


def _agent(slmops_bin, home, broker, device, *extra):
    env = {**os.environ, "SLMOPS_HOME": str(home)}
    return subprocess.Popen(
        [
            str(slmops_bin),
            "agent",
            "run",
            "--device-id",
            device,
            "--fleet",
            "shops",
            "--broker",
            broker,
            "--port",
            "0",
            "--report-interval",
            "0.5",
            "--threads",
            "1",
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _files(rec):
    return {rel: oci.sha256_file(p) for rel, p in oci.model_files(rec)}


def test_fleet_walk_through(tmp_path, slmops_bin, tiny_model_dir, monkeypatch):
    admin = tmp_path / "admin"
    up = json.loads(_run(slmops_bin, admin, "fleet", "up", "--json").stdout)
    agents = []
    try:
        broker, registry = up["broker"], up["registry"]
        assert broker.startswith("mqtt://127.0.0.1:")
        _cli(admin, "keys", "generate", "release", monkeypatch=monkeypatch)
        store = ModelStore(admin)
        add_tiny(store, tiny_model_dir, name="support")
        pushed = json.loads(
            _cli(
                admin,
                "models",
                "push",
                "support:1",
                f"oci://{registry}/m/support:v1",
                "--sign",
                "release",
                "--json",
                monkeypatch=monkeypatch,
            )
        )
        assert pushed["signed"] and pushed["digest"].startswith("sha256:")
        pub = admin / "keys" / "release.pub"
        watch = StateWatch(broker, "shops")
        for i, site in enumerate(("paris", "paris", "lyon")):
            agents.append(
                _agent(
                    slmops_bin, tmp_path / f"dev{i}", broker, f"dev{i}", "--labels", f"site={site}", "--trust", str(pub)
                )
            )
        for i in range(3):
            watch.wait(f"dev{i}", lambda s: s.status == "idle", timeout=90, what="agent up")
        out = json.loads(
            _cli(
                admin,
                "fleet",
                "assign",
                "--fleet",
                "shops",
                "--model",
                "support:1",
                "--select",
                "site=paris",
                "--sign",
                "release",
                "--json",
                monkeypatch=monkeypatch,
            )
        )
        assert sorted(out["devices"]) == ["dev0", "dev1"] and out["pushed"]
        for i in (0, 1):
            st = watch.wait(f"dev{i}", lambda s: s.active is not None and s.status == "ok", timeout=60)
            assert st.active.digest == out["digest"]
            r = httpx.post(
                f"http://127.0.0.1:{st.port}/v1/chat/completions",
                timeout=30,
                json={"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert r.status_code == 200, r.text
        _cli(
            admin,
            "fleet",
            "assign",
            "--fleet",
            "shops",
            "--model",
            pushed["reference"],
            "--devices",
            "dev2",
            monkeypatch=monkeypatch,
        )
        watch.wait("dev2", lambda s: s.active is not None and s.status == "ok", timeout=60)
        listing = json.loads(
            _cli(admin, "fleet", "devices", "--fleet", "shops", "--wait", "1.2", "--json", monkeypatch=monkeypatch)
        )
        assert [d["device_id"] for d in listing] == ["dev0", "dev1", "dev2"]
        for d in listing:
            assert d["status"] == "ok" and d["online"]
            assert d["active_digest"] == (pushed["digest"] if d["device_id"] == "dev2" else out["digest"])
            assert d["telemetry"] is not None and d["telemetry"]["memory_mb"] > 0
        assert listing[0]["labels"] == {"site": "paris"}
        table = _cli(admin, "fleet", "devices", "--fleet", "shops", monkeypatch=monkeypatch)
        assert "dev2" in table and "site=lyon" in table
        # another store pulls the identical model
        other = tmp_path / "other"
        got = json.loads(
            _cli(other, "models", "pull", pushed["reference"], "--trust", str(pub), "--json", monkeypatch=monkeypatch)
        )
        assert _files(ModelStore(other).get(got["ref"])) == _files(store.get("support:1"))
        again = json.loads(_cli(other, "models", "pull", pushed["reference"], "--json", monkeypatch=monkeypatch))
        assert again["already_present"]
        # a wrong trust key: exit 2 with one clear line
        _cli(other, "keys", "generate", "stranger", monkeypatch=monkeypatch)
        r = _run(
            slmops_bin,
            other,
            "models",
            "pull",
            f"oci://{registry}/m/support:v1",
            "--name",
            "x",
            "--trust",
            "stranger",
            check=False,
        )
        assert r.returncode == 2 and "does not verify" in r.stderr and "Traceback" not in r.stderr
        watch.close()
    finally:
        for a in agents:
            a.send_signal(signal.SIGTERM)
        for a in agents:
            try:
                a.wait(20)
            except subprocess.TimeoutExpired:
                a.kill()
        down = json.loads(_run(slmops_bin, admin, "fleet", "down", "--json").stdout)
    assert down["stopped"] == {"broker": True, "registry": True}


def test_kill_9_mid_download_never_activates_a_partial_model(
    tmp_path, slmops_bin, tiny_model_dir, mosquitto, registry, monkeypatch
):
    src = ModelStore(tmp_path / "src")
    add_tiny(src, tiny_model_dir, extra={"big.bin": os.urandom(3 << 20)})
    res = oci.push(src, "tiny:1", oci.parse_oci(f"oci://{registry}/kill/tiny:v1"))
    home = tmp_path / "dev"
    watch = StateWatch(mosquitto, "shops")
    agent = _agent(slmops_bin, home, mosquitto, "k1", "--download-rate-limit", str(256 << 10))
    try:
        watch.wait("k1", lambda s: s.status == "idle", timeout=90)
        _cli(
            tmp_path / "admin",
            "fleet",
            "assign",
            "--fleet",
            "shops",
            "--model",
            str(res.reference),
            "--devices",
            "k1",
            "--broker",
            mosquitto,
            monkeypatch=monkeypatch,
        )
        watch.wait("k1", lambda s: s.status == "downloading", timeout=30)
        deadline = time.monotonic() + 20
        while not list((home / "tmp").glob("oci-*/files/*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        assert ModelStore(home).list() == []  # nothing registered, nothing active
        assert list((home / "tmp").glob("oci-*/files/*.part"))
        agent = _agent(slmops_bin, home, mosquitto, "k1")
        st = watch.wait("k1", lambda s: s.active is not None and s.status == "ok", timeout=90)
        assert st.active.digest == res.digest
        assert _files(ModelStore(home).get(st.active.store_ref)) == _files(src.get("tiny:1"))
        assert not [p for p in (home / "tmp").glob("oci-*") if p.is_dir()]  # staging cleaned up
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
        watch.close()
