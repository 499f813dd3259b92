from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from slmops.models.catalog import CATALOG, DEFAULT_MODEL, HubSource, PypiSource

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
]


def test_catalog_entries_are_complete():
    assert DEFAULT_MODEL in CATALOG
    assert {"smollm2-135m-instruct", "gemma-3-270m"} <= set(CATALOG)
    for entry in CATALOG.values():
        d = entry.to_dict()
        for key in ("name", "source", "license", "parameters", "architecture", "chat_template", "size_on_disk_mb"):
            assert d[key], f"{entry.name} lacks {key}"
        if isinstance(entry.source, PypiSource):
            assert entry.source.gguf_file.endswith(".gguf")
            assert entry.source.sha256 or not entry.source.assembler
        else:
            assert isinstance(entry.source, HubSource) and "/" in entry.source.repo_id


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_chat_templates_render_every_turn(name, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CATALOG[name].chat_template
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    for msg in CONVERSATION:
        assert msg["content"] in text, f"{name} template dropped the {msg['role']} turn"
    assert text.index("Be brief.") < text.index("Hi there") < text.index("Hello!") < text.index("Capital of France?")
    no_prompt = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
    assert text.startswith(no_prompt) and len(text) > len(no_prompt)
