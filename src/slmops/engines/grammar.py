"""Constrained decoding with llguidance: answers valid by construction.

A request carries a grammar (``GenerationParams.grammar``, an llguidance grammar string made
by :func:`json_schema_grammar`, :func:`json_object_grammar` or :func:`lark_grammar`). Each
row of a batch that has one gets its own :class:`RowConstraint`: before sampling, the
row's logits are masked to the tokens the grammar allows next; after sampling, the token is
fed to the matcher. A row whose grammar is complete ends with ``finish_reason="stop"``; one
that runs out of ``max_tokens`` first ends with ``"length"`` (its text is then a valid
prefix, not a whole answer). Rows without a grammar are untouched, so batched rows each keep
their own grammar (or none).

Limits on JSON schemas (checked before any model work; each error names the problem):

- at most :data:`MAX_SCHEMA_BYTES` bytes of JSON and :data:`MAX_SCHEMA_DEPTH` levels of
  nesting;
- it must be a valid JSON Schema (draft 2020-12 meta-schema);
- with ``strict`` (the default) every keyword must be one llguidance enforces; a keyword it
  cannot enforce (``if``/``then``, unknown ``format`` values, ...) is an error naming it.
  With ``strict=False`` such keywords are ignored (best effort, as OpenAI's non-strict mode).

JSON is generated compactly with ``", "`` and ``": "`` separators and no other whitespace,
so a model cannot loop on whitespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from slmops.errors import EngineError

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 24
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(EngineError):
    """A schema or grammar that cannot be enforced; ``keyword`` names the culprit if known."""

    def __init__(self, message: str, hint: str | None = None, *, keyword: str | None = None) -> None:
        super().__init__(message, hint)
        self.keyword = keyword


def _llg() -> Any:
    try:
        import llguidance
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise EngineError(f"Constrained decoding needs llguidance ({exc}).", "pip install llguidance") from exc
    return llguidance


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_schema(schema: Any, *, what: str = "The JSON schema") -> dict[str, Any]:
    """The schema as a dict, or :class:`GrammarError` for one too big, too deep or invalid."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise GrammarError(f"{what} is not valid JSON ({exc}).") from exc
    if not isinstance(schema, dict):
        raise GrammarError(f"{what} must be a JSON object, not {type(schema).__name__}.")
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise GrammarError(f"{what} is {size} bytes; the limit is {MAX_SCHEMA_BYTES}.", keyword="size")
    depth = _depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"{what} nests {depth} levels deep; the limit is {MAX_SCHEMA_DEPTH}.", keyword="depth")
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise GrammarError(f"{what} is not a valid JSON Schema at {where}: {exc.message}.") from exc
    return schema


def _validate(grammar: str, what: str) -> str:
    llg = _llg()
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        message = messages[0] if messages else "unknown error"
        keyword = None
        found = re.search(r'Unimplemented keys: \["?([^"\]]+)', message) or re.search(r"Unknown format: (\S+)", message)
        if found:
            keyword = found.group(1)
            if message.startswith("Unknown format"):
                keyword = f"format: {keyword}"
        raise GrammarError(
            f"{what} cannot be enforced: {message}.",
            "Remove or rewrite that keyword, or use non-strict mode (strict: false), which ignores such keywords.",
            keyword=keyword,
        )
    return grammar


def close_objects(schema: Any) -> Any:
    """A copy where every object schema with ``properties`` but no ``additionalProperties``
    takes no other properties (OpenAI's strict mode demands ``additionalProperties: false``;
    here it is the default, so a model cannot wander off adding keys until ``max_tokens``)."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("const", "enum", "default", "examples") else close_objects(v)) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def json_schema_grammar(schema: Any, *, strict: bool = True, what: str = "The JSON schema") -> str:
    """An llguidance grammar for JSON documents that validate against ``schema`` (with
    ``strict``, objects take only their listed properties unless the schema says otherwise)."""
    schema = check_schema(schema, what=what)
    if strict:
        schema = close_objects(schema)
    llg = _llg()
    options = {**JSON_OPTIONS, "lenient": not strict}
    return _validate(llg.LLMatcher.grammar_from_json_schema(schema, overrides=options), what)


def json_object_grammar() -> str:
    """Any JSON object (``response_format: {"type": "json_object"}``)."""
    return json_schema_grammar({"type": "object"})


def lark_grammar(lark: str, what: str = "The grammar") -> str:
    """An llguidance grammar from Lark text (``%json {...}`` embeds a JSON schema)."""
    return _validate(_llg().LLMatcher.grammar_from_lark(lark), what)


# -- per-engine tokenizer and per-row matchers ------------------------------------------------
def engine_tokenizer(engine: Any, vocab_size: int) -> Any:
    """The llguidance tokenizer of an engine (built once, ~0.1-1 s, cached on the engine)."""
    cached = getattr(engine, "_llg_tokenizer", None)
    if cached is not None and cached[0] == vocab_size:
        return cached[1]
    import llguidance.hf

    hf = engine.tokenizer
    eos = sorted(engine.eos_ids) or None
    try:
        tok = llguidance.hf.from_tokenizer(hf, n_vocab=max(vocab_size, len(hf)), eos_token=eos)
    except ValueError as exc:
        raise EngineError(
            f"Constrained decoding needs a fast (Rust) tokenizer ({exc}).", "Use a model with a tokenizer.json."
        ) from exc
    engine._llg_tokenizer = (vocab_size, tok)
    return tok


class RowConstraint:
    """One row's grammar matcher: masks that row's logits, then consumes its sampled token."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        llg = _llg()
        self.matcher = llg.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"The grammar cannot be enforced: {self.matcher.get_error()}.")
        self.vocab = tokenizer.vocab_size
        self.eos = tokenizer.eos_token

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """The grammar cannot take any more tokens: the answer is complete."""
        return bool(self.matcher.is_stopped())


_EXECUTOR: Any = None


def allowed_masks(constraints: list[RowConstraint], width: int) -> np.ndarray:
    """``[len(constraints), width]`` booleans: the tokens each row's grammar allows next. The
    matchers' masks are computed together (llguidance's executor, in parallel, without the GIL)."""
    global _EXECUTOR
    llg = _llg()
    if _EXECUTOR is None:
        _EXECUTOR = llg.LLExecutor()
    vocab = max(c.vocab for c in constraints)
    words = (vocab + 31) // 32
    bits = np.zeros((len(constraints), words), dtype=np.int32)
    _EXECUTOR.unsafe_compute_mask_ptr([(c.matcher, i) for i, c in enumerate(constraints)], bits.ctypes.data,
                                      words * 4, len(constraints))  # fmt: skip
    unpacked = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")
    out = np.zeros((len(constraints), width), dtype=bool)
    n = min(width, unpacked.shape[1])
    out[:, :n] = unpacked[:, :n]
    for i, c in enumerate(constraints):
        if not out[i].any():  # a stuck matcher (should not happen): let the row end
            out[i, c.eos if c.eos < width else 0] = True
    return out


def mask_numpy(logits: np.ndarray, constraints: Iterable[tuple[int, RowConstraint]]) -> None:
    """Mask rows of a 2-D float logits array in place (``(slot, constraint)`` pairs): every
    token a row's grammar forbids gets ``-inf``. Plain numpy, one pass for all rows."""
    pairs = list(constraints)
    if not pairs:
        return
    forbidden = np.logical_not(allowed_masks([c for _, c in pairs], logits.shape[-1]))
    for i, (slot, _) in enumerate(pairs):
        np.copyto(logits[slot], -np.inf, where=forbidden[i])


def mask_torch(logits: Any, constraints: Iterable[tuple[int, RowConstraint]]) -> None:
    """:func:`mask_numpy` on a CPU float32 torch tensor (shares its memory; no torch kernels,
    which stall when other processes hold every core)."""
    mask_numpy(logits.numpy(), constraints)


def row_constraint(engine: Any, grammar: str, vocab_size: int) -> RowConstraint:
    """A fresh matcher for one row of ``engine`` (its tokenizer is built once per engine)."""
    return RowConstraint(engine_tokenizer(engine, vocab_size), grammar)


# -- the Python API and the CLI's --json-schema ------------------------------------------------
def load_schema_file(path: Any) -> dict[str, Any]:
    """A JSON Schema file, checked (size, depth, validity); errors name the file."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise GrammarError(f"Cannot read the JSON schema file {p} ({exc.strerror or exc}).") from exc
    return check_schema(text, what=f"The JSON schema in {p}")


def with_json_schema(params: Any, schema: Any, *, strict: bool = True, name: str = "answer") -> Any:
    """``params`` that make every engine answer with JSON valid against ``schema``: local
    engines decode under the grammar, remote ones are sent ``response_format``.

    >>> from slmops.engines import GenerationParams
    >>> p = with_json_schema(GenerationParams(), {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}})
    """
    from dataclasses import replace

    schema = check_schema(schema)
    grammar = json_schema_grammar(schema, strict=strict)
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}
    return replace(params, grammar=grammar, response_format=json.dumps(fmt))
