"""Per-device credentials and ACLs on a real Mosquitto, and TLS to the broker with a CA made here."""

from __future__ import annotations

import datetime
import json
import time

import pytest

from slmops.fleet import mqtt, protocol, provision, services


def _creds(path):
    data = json.loads(path.read_text())
    return data["username"], data["password"]


def _broker(svc, creds, **kw):
    return mqtt.parse_broker(svc.url, username=creds[0], password=creds[1], **kw)


@pytest.fixture()
def secured(tmp_path):
    auth = tmp_path / "auth"
    dev1 = provision.provision(auth, "shop", "dev1")
    dev2 = provision.provision(auth, "shop", "dev2")
    svc, proc = services.start_mosquitto(tmp_path / "mq", password_file=auth / "passwd", acl_file=auth / "acl")
    yield svc, auth, dev1, dev2
    proc.terminate()
    proc.wait(10)


def test_device_credentials_are_private_and_bound_to_their_topics(secured):
    svc, auth, dev1, dev2 = secured
    assert oct(dev1.stat().st_mode & 0o777) == "0o600"
    admin = _broker(svc, _creds(auth / "admin.json"))
    d1 = _broker(svc, _creds(dev1))
    # the device writes its own state; it cannot write another device's state or desired topic
    c = mqtt.connect(d1)
    try:
        mqtt.publish(c, protocol.state_topic("shop", "dev1"), b'{"mine": 1}')
        mqtt.publish(c, protocol.state_topic("shop", "dev2"), b'{"forged": 1}')  # acked, dropped by the ACL
        mqtt.publish(c, protocol.desired_topic("shop", "dev1"), b'{"self-assigned": 1}')
    finally:
        mqtt.close(c)
    got = mqtt.collect_retained(
        admin, protocol.fleet_wildcard("shop", "state"), protocol.fleet_wildcard("shop", "desired")
    )
    assert got == {protocol.state_topic("shop", "dev1"): b'{"mine": 1}'}
    # the admin assigns; a device reads only its own desired state
    mqtt.publish_retained(
        admin, {protocol.desired_topic("shop", "dev1"): b"one", protocol.desired_topic("shop", "dev2"): b"two"}
    )
    got = mqtt.collect_retained(d1, protocol.fleet_wildcard("shop", "desired"))
    assert got == {protocol.desired_topic("shop", "dev1"): b"one"}  # a wildcard yields only its own topic
    assert mqtt.collect_retained(d1, protocol.desired_topic("shop", "dev1")) == {
        protocol.desired_topic("shop", "dev1"): b"one"
    }
    assert mqtt.collect_retained(d1, protocol.desired_topic("shop", "dev2")) == {}


def test_wrong_password_and_anonymous_are_refused(secured):
    svc, auth, dev1, _ = secured
    user, _ = _creds(dev1)
    with pytest.raises(mqtt.BrokerError, match="refused|not authorized|cannot connect"):
        mqtt.connect(mqtt.parse_broker(svc.url, username=user, password="wrong"), timeout=3)
    with pytest.raises(mqtt.BrokerError):
        mqtt.connect(mqtt.parse_broker(svc.url), timeout=3)


def _make_ca_and_server(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slmops test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_tls_to_the_broker_with_a_ca_file(tmp_path):
    ca, cert, key = _make_ca_and_server(tmp_path / "pki")
    svc, proc = services.start_mosquitto(tmp_path / "mq", tls_cert=cert, tls_key=key)
    try:
        assert svc.url.startswith("mqtts://")
        broker = mqtt.parse_broker(svc.url, ca_file=ca)
        mqtt.publish_retained(broker, {"slmops/t/devices/d/state": b"tls"})
        assert mqtt.collect_retained(broker, "slmops/t/devices/+/state") == {"slmops/t/devices/d/state": b"tls"}
        with pytest.raises(mqtt.BrokerError):  # without the CA the server certificate is not trusted
            mqtt.connect(mqtt.parse_broker(svc.url), timeout=3)
    finally:
        proc.terminate()
        proc.wait(10)
    time.sleep(0)
