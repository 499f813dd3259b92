"""Session-scoped real fleet services for the tests: a Mosquitto broker and a CNCF Distribution
registry on free loopback ports, started once and stopped at the end of the session.

    def test_x(mosquitto, registry):   # mosquitto: "mqtt://127.0.0.1:PORT", registry: "127.0.0.1:PORT"

Skips (with the reason) where the system packages are not installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from slmops.fleet import services


def _need(candidates: tuple[str, ...], package: str) -> None:
    if not any(shutil.which(c) for c in candidates):
        pytest.skip(f"{candidates[0]} is not installed (system package `{package}`, see the README set-up)")


@pytest.fixture(scope="session")
def mosquitto_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    _need(services.MOSQUITTO_CANDIDATES, "mosquitto")
    svc, proc = services.start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield svc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mosquitto(mosquitto_service: services.Service) -> str:
    """``mqtt://127.0.0.1:PORT`` of a real, anonymous Mosquitto shared by the session."""
    return mosquitto_service.url


@pytest.fixture(scope="session")
def registry_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    _need(services.REGISTRY_CANDIDATES, "docker-registry")
    svc, proc = services.start_registry(tmp_path_factory.mktemp("registry"))
    yield svc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def registry(registry_service: services.Service) -> str:
    """``127.0.0.1:PORT`` of a real plain-HTTP CNCF Distribution registry shared by the session."""
    return registry_service.url
