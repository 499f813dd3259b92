"""The JSON Schema of a pipeline file, generated from the same models that validate it (the
step meta keys and every kind's settings), for editor completion and CI checks.

``slmops run --schema`` prints it; ``docs/pipeline.schema.json`` is this output, kept current
by a test (``python -m slmops.pipeline.schema > docs/pipeline.schema.json`` regenerates it).
A step's settings may hold ``${vars.X}`` / ``${steps.X.y}`` references anywhere, which the
pipeline resolves before checking them: the schema accepts such a string for any value.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from slmops.pipeline.spec import STEP_NAME, StepMeta
from slmops.pipeline.steps import KINDS

SCHEMA_ID = "https://slmops.dev/schemas/pipeline.schema.json"
_REF = {"type": "string", "pattern": r"\$\{[^}]+\}", "description": "A ${vars.X} or ${steps.X.y} reference."}


def _allow_refs(node: Any) -> Any:
    """Every typed value also accepts a reference string (resolved before validation)."""
    if isinstance(node, dict):
        node = {k: _allow_refs(v) if k in ("properties", "$defs") else v for k, v in node.items()}
        if "properties" in node:
            node["properties"] = {k: _ref_or(v) for k, v in node["properties"].items()}
        if "$defs" in node:
            node["$defs"] = {k: _allow_refs(v) for k, v in node["$defs"].items()}
        return node
    return node


def _ref_or(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    prop = _allow_refs(prop)
    if prop.get("type") == "string" and "enum" not in prop:
        return prop
    meta = {k: prop[k] for k in ("description", "default", "title") if k in prop}
    body = {k: v for k, v in prop.items() if k not in meta}
    return {**meta, "anyOf": [body, _REF]}


def pipeline_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    variants = []
    meta = StepMeta.model_json_schema()["properties"]
    for kind in KINDS.values():
        schema = copy.deepcopy(kind.json_schema())
        defs.update(schema.pop("$defs", {}))
        props = {"kind": {"const": kind.name, "description": kind.summary},
                 **{k: v for k, v in meta.items() if k != "kind"}, **schema.get("properties", {})}
        step = {"type": "object", "title": f"{kind.name} step", "description": f"{kind.summary}. Outputs: "
                f"{kind.outputs}.", "properties": props, "required": ["kind", *schema.get("required", [])],
                "additionalProperties": False}
        defs[f"step_{kind.name}"] = _allow_refs(step)
        variants.append({"if": {"properties": {"kind": {"const": kind.name}}, "required": ["kind"]},
                         "then": {"$ref": f"#/$defs/step_{kind.name}"}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "slmops pipeline",
        "description": "A pipeline file for `slmops run`: named steps of the kinds below, run in order, "
                       "each cached by its inputs and settings.",
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": STEP_NAME.pattern, "description": "The pipeline's name."},
            "description": {"type": "string"},
            "vars": {"type": "object", "description": "Variables, used as ${vars.NAME}; `--set NAME=VALUE` "
                                                      "overrides one."},
            "steps": {
                "type": "object", "minProperties": 1,
                "description": "Step name -> step; `--set steps.NAME.KEY=VALUE` overrides a setting.",
                "propertyNames": {"pattern": STEP_NAME.pattern},
                "additionalProperties": {
                    "type": "object", "required": ["kind"],
                    "properties": {"kind": {"enum": list(KINDS), "description": "The step kind."}},
                    "allOf": variants,
                },
            },
        },
        "required": ["name", "steps"],
        "additionalProperties": False,
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    return json.dumps(pipeline_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
