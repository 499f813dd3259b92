"""Deployment bundles: a self-contained folder for Foundry Local (ONNX GenAI model plus
``inference_model.json``), Ollama (GGUF plus ``Modelfile``) or plain Hugging Face, each with a
``manifest.json`` holding the lineage and a sha256 of every file.

Prompt templates are derived from the model's chat template for the template families we know
(ChatML, Gemma); another template is a clear error rather than a bundle that chats wrongly.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError
from slmops.files import file_sha256
from slmops.models.artifacts import copy_artifact, gguf_file
from slmops.models.resolve import resolve
from slmops.models.store import ModelStore

BUNDLE_FORMATS = {"foundry": "onnx-genai", "ollama": "gguf", "hf": "hf"}


@dataclass(frozen=True)
class TurnMarkers:
    """How one template family wraps a turn: ``start + role + sep + content + end``."""

    start: str
    sep: str
    end: str
    assistant_role: str = "assistant"

    def turn(self, role: str, content: str) -> str:
        role = self.assistant_role if role == "assistant" else role
        return f"{self.start}{role}{self.sep}{content}{self.end}"


FAMILIES = {
    "chatml": TurnMarkers("<|im_start|>", "\n", "<|im_end|>\n"),
    "gemma": TurnMarkers("<start_of_turn>", "\n", "<end_of_turn>\n", assistant_role="model"),
}


def template_family(chat_template: str | None) -> tuple[str, TurnMarkers]:
    for name, markers in FAMILIES.items():
        if chat_template and markers.start in chat_template:
            return name, markers
    raise SlmopsError(
        "Cannot derive a deployment prompt template from this model's chat template (known: ChatML, Gemma).",
        "Export with --format hf, or write the Modelfile / inference_model.json template by hand.",
    )


def foundry_config(name: str, m: TurnMarkers) -> dict[str, Any]:
    """Foundry Local's ``inference_model.json``: per-role templates with ``{Content}``."""
    user = m.turn("user", "{Content}")
    return {
        "Name": name,
        "PromptTemplate": {
            "system": m.turn("system", "{Content}"),
            "user": user,
            "assistant": m.turn("assistant", "{Content}"),
            "prompt": user + m.start + m.assistant_role + m.sep,
        },
    }


def default_system(chat_template: str, m: TurnMarkers) -> str | None:
    """The system prompt a template adds when the chat has none (SmolLM2 names itself), or None."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.ChainableUndefined)
    text = env.from_string(chat_template).render(messages=[{"role": "user", "content": "x"}], bos_token="")
    head = f"{m.start}system{m.sep}"
    return text[len(head) : text.index(m.end)] if text.startswith(head) and m.end in text else None


def ollama_modelfile(gguf_name: str, m: TurnMarkers, defaults: dict[str, Any], system: str | None = None) -> str:
    """An Ollama ``Modelfile`` whose Go TEMPLATE renders a chat like the model's own template."""
    stop = m.end.strip()
    template = (
        "{{- range .Messages }}"
        f'{m.start}{{{{ if eq .Role "assistant" }}}}{m.assistant_role}{{{{ else }}}}{{{{ .Role }}}}{{{{ end }}}}'
        f"{m.sep}{{{{ .Content }}}}{m.end}"
        "{{ end }}"
        f"{m.start}{m.assistant_role}{m.sep}"
    )
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""', f'PARAMETER stop "{stop}"']
    lines += [f'SYSTEM """{system}"""'] if system else []
    lines += [f"PARAMETER {k} {v}" for k, v in defaults.items()]
    return "\n".join(lines) + "\n"


def _chat_template(folder: Path, gguf: Path | None) -> str | None:
    if gguf is not None:
        from gguf import GGUFReader

        field = GGUFReader(str(gguf)).fields.get("tokenizer.chat_template")
        return bytes(field.parts[field.data[0]]).decode() if field else None
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    return json.loads(cfg.read_text(encoding="utf-8")).get("chat_template") if cfg.exists() else None


def export_bundle(ref: str, fmt: str, out_dir: Path, *, store: ModelStore | None = None) -> dict[str, Any]:
    """Write the bundle for ``ref`` into ``out_dir`` (which must not exist); returns the manifest."""
    if fmt not in BUNDLE_FORMATS:
        raise SlmopsError(f"Unknown bundle format {fmt!r}.", f"Use one of: {', '.join(BUNDLE_FORMATS)}.")
    if out_dir.exists():
        raise SlmopsError(f"{out_dir} already exists.", "Choose a new --output folder.")
    store = store or ModelStore()
    src = resolve(ref, store)
    need = BUNDLE_FORMATS[fmt]
    if src.format != need:
        to = {"onnx-genai": "--to onnx", "gguf": "--to gguf", "hf": "--merge"}[need]
        raise SlmopsError(
            f"A {fmt} bundle needs a {need} model; {src.label} is {src.format}.",
            f"Convert it first: `slmops optimize {ref} {to}`.",
        )
    gguf_name = gguf_file(src.path).name if fmt == "ollama" else None
    stage = out_dir.with_name(out_dir.name + ".partial")  # renamed into place once complete
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    copy_artifact(src.path, stage, what=f"exporting {src.label}", where=stage.parent)
    name = src.record.name if src.record else src.path.stem
    if fmt != "hf":
        template = _chat_template(stage, stage / gguf_name if gguf_name else None)
        _, markers = template_family(template)
        if gguf_name:
            system = default_system(str(template), markers)
            (stage / "Modelfile").write_text(ollama_modelfile(gguf_name, markers, {"temperature": 0}, system))
        else:
            (stage / "inference_model.json").write_text(json.dumps(foundry_config(name, markers), indent=2) + "\n")
    manifest = {
        "name": name,
        "ref": src.label,
        "bundle": fmt,
        "format": src.format,
        "parents": src.record.parents if src.record else [],
        "recipe": src.record.recipe if src.record else {},
        "files": {str(p.relative_to(stage)): file_sha256(p) for p in sorted(stage.rglob("*")) if p.is_file()},
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    stage.rename(out_dir)
    return manifest
