from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import build_model

REAL_HOME = Path(os.environ.get("SLMOPS_TEST_REAL_HOME", Path(__file__).resolve().parent.parent / ".test-store"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store home for one test (also seen by CLI commands and subprocesses)."""
    h = tmp_path / "slmops-home"
    monkeypatch.setenv("SLMOPS_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from slmops.engines.torch_engine import TorchEngine

    engine = TorchEngine.from_path(tiny_model_dir, threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def real_store():
    """A store shared by the `real` tests, pulled once (kept between runs in .test-store/)."""
    from slmops.models.pull import pull
    from slmops.models.store import ModelStore

    store = ModelStore(REAL_HOME)
    pull("smollm2-135m-instruct", store)
    return store


@pytest.fixture()
def store(home: Path):
    """A fresh, empty ModelStore in the test's SLMOPS_HOME."""
    from slmops.models.store import ModelStore

    return ModelStore(home)


@pytest.fixture(scope="session")
def slmops_bin() -> Path:
    """The installed `slmops` console script (the real entry point, with its exit-code mapping)."""
    import shutil
    import sys

    candidate = Path(sys.executable).parent / "slmops"
    found = candidate if candidate.exists() else shutil.which("slmops")
    if not found:
        pytest.skip("the slmops console script is not installed (pip install -e .)")
    return Path(found)


@pytest.fixture(scope="session")
def serve_store(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A store for the server tests: the tiny model as `tiny` v1 (alias `prod`) and v2."""
    import shutil

    from slmops.models.store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("serve-home"))
    for _ in range(2):
        with store.staging() as staged:
            shutil.copytree(tiny_model_dir, staged / "model")
            store.add(staged / "model", "tiny", "hf")
    store.set_alias("tiny:1", "prod")
    return store


@pytest.fixture(scope="session")
def openai_schema():
    """Validate a payload against a root of the OpenAI schemas kept in ``tests/schemas/`` (see its
    README for their source and licence): ``openai_schema(obj, "ErrorResponse")``."""
    import json

    import jsonschema

    doc = json.loads((Path(__file__).resolve().parent / "schemas" / "openai_schemas.json").read_text())

    def validate(obj, root: str) -> None:
        jsonschema.validate(obj, {**doc, "$ref": f"#/$defs/{root}"})

    return validate


from tests.fleet_services import mosquitto, mosquitto_service, registry, registry_service  # noqa: E402,F401
