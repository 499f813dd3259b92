"""The adapter manifest of an ONNX GenAI model folder, owned by the engine that reads it.

``adapters.json`` beside ``genai_config.json``: ``{"default": NAME, "adapters": {NAME:
"adapters/NAME.onnx_adapter"}}``. ``optimize --keep-adapters`` writes it
(:mod:`slmops.optimize.onnx_adapters`); the ONNX engine loads each file with ``og.Adapters``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "adapters.json"
ADAPTER_DIR = "adapters"


def adapter_file(name: str) -> str:
    """Where adapter ``name`` lives, relative to the model folder."""
    return f"{ADAPTER_DIR}/{name}.onnx_adapter"


def write_manifest(onnx_dir: Path, default: str, files: dict[str, str]) -> dict[str, Any]:
    manifest = {"default": default, "adapters": files}
    (onnx_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(onnx_dir: Path) -> dict[str, Any] | None:
    path = onnx_dir / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
