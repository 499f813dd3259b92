"""``slmops generate``, ``slmops chat`` and ``slmops demo``."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import (
    JsonOpt,
    MaxTokensOpt,
    SeedOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopPOpt,
    console,
    err_console,
    make_params,
    open_store,
    print_json,
    status,
)
from slmops.data.prompts import read_prompt_file
from slmops.engines import open_engine
from slmops.engines.adapters import parse_multi_ref
from slmops.engines.base import Engine, GenerationRequest, Message
from slmops.engines.grammar import load_schema_file, with_json_schema
from slmops.errors import SlmopsError
from slmops.generate import generate_batches, generate_file

RefArg = Annotated[str, typer.Argument(help="Model: name, name:version, name@alias, a path, or an OpenAI URL#model.")]
PrecisionOpt = Annotated[
    str,
    typer.Option("--precision", help="auto: a built-in model runs as its int4 ONNX variant (built once); fp32: as is."),
]
JsonSchemaOpt = Annotated[
    Path | None,
    typer.Option("--json-schema", help="Answer only JSON valid against this JSON Schema file (constrained decoding)."),
]
AdapterOpt = Annotated[
    str | None,
    typer.Option("--adapter", "-a", help="Use this LoRA adapter on the base REF (REF = BASE+A,B: one of those)."),
]


def open_with_adapter(ref: str, adapter: str | None, threads: int | None, precision: str = "fp32") -> Engine:
    """The engine for ``ref``; with ``adapter``, the base holding that adapter (``BASE+ADAPTER``),
    or, when ``ref`` already names several (``BASE+A,B``), the same engine, checked to hold it.
    Without one, a bare built-in name runs as its fast variant unless ``precision`` is fp32."""
    if adapter is None:
        from slmops.models.variants import fast_variant

        variant = fast_variant(ref, open_store(), precision=precision, progress=status)
        if variant.note:
            err_console.print(f"[dim]{variant.note}[/dim]")
        ref = variant.ref
    if adapter is not None:
        multi = parse_multi_ref(ref)
        if multi is None:
            ref = f"{ref}+{adapter}"
        elif adapter not in multi[1]:
            raise SlmopsError(f"--adapter {adapter} is not one of the adapters opened with {ref}.",
                              f"Pick one of: {', '.join(multi[1])}, or add it after the '+'.")  # fmt: skip
    return open_engine(ref, open_store(), threads=threads, progress=status)


def generate(
    ref: RefArg,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="One prompt to answer.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Prompts file (JSONL/JSON/CSV/Parquet).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Answers file (JSONL) for --input.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the text as is, without the chat template.")] = False,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    stop: StopOpt = None,
    seed: SeedOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per batch for --input.")] = 32,
    adapter: AdapterOpt = None,
    precision: PrecisionOpt = "auto",
    json_schema: JsonSchemaOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer one prompt (streamed) or a whole prompts file (batched).

    --json-schema FILE makes every answer a JSON document valid against that schema (constrained
    decoding on local models; remote ones are sent it as response_format).

    Records in --input have a 'prompt' string or a 'messages' list; --output gets each
    record back with 'output', 'finish_reason' and token counts. --adapter NAME answers with
    one of the LoRA adapters trained on the base REF (the base is loaded once, unmerged).
    A built-in model named without a version runs as its int4 ONNX variant (built and
    registered on first use); name a version or pass --precision fp32 for the original.

    Example: slmops generate smollm2-135m-instruct --adapter my-adapter --prompt "What is the capital of France?"
    """
    if (prompt is None) == (input is None):
        raise SlmopsError("Give exactly one of --prompt or --input.", 'Example: --prompt "Hello".')
    if input is not None and output is None:
        raise SlmopsError("--input needs --output to write the answers to.", "Add --output answers.jsonl.")
    params = make_params(max_tokens, temperature, top_p, stop, seed)
    if json_schema is not None:
        params = with_json_schema(params, load_schema_file(json_schema))
    # validate the whole prompts file before loading (or pulling) a model
    pairs = read_prompt_file(input, params, raw=raw, system=system) if input is not None else []
    pairs = [(rec, replace(req, adapter=adapter)) for rec, req in pairs]
    from slmops.models.variants import check_precision

    check_precision(precision)
    engine = open_with_adapter(ref, adapter, threads, precision)
    with engine:
        if input is not None:
            assert output is not None
            summary = generate_file(
                engine, pairs, output, batch_size=batch_size, on_batch=lambda n: status(f"{n} answered/{len(pairs)}")
            )
            if as_json:
                print_json({**summary.to_dict(), "output": str(output)})
            else:
                console.print(
                    f"wrote {summary.records} answers to {output} "
                    f"({summary.completion_tokens} tokens, {summary.tokens_per_second:.1f} tok/s)"
                )
            return
        request = (
            GenerationRequest(prompt=prompt, params=params)
            if raw
            else GenerationRequest.chat(prompt or "", params, system=system)
        )
        request = replace(request, adapter=adapter)
        if as_json:
            results, summary = generate_batches(engine, [request])
            print_json({"model": ref, "adapter": adapter, **asdict(results[0]),
                        "tokens_per_second": round(summary.tokens_per_second, 2)})  # fmt: skip
            return
        for chunk in engine.stream(request):
            console.out(chunk.text, end="", highlight=False)
        console.out("")


def chat(
    ref: RefArg,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 0.95,
    seed: SeedOpt = None,
    adapter: AdapterOpt = None,
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Chat with a model in the terminal, with streamed answers and history.

    Type /reset to clear the history, /exit (or Ctrl-D) to leave. --adapter NAME chats with
    one of the LoRA adapters trained on the base REF.

    Example: slmops chat smollm2-135m-instruct --system "Answer briefly."
    """
    params = make_params(max_tokens, temperature, top_p, None, seed)
    engine = open_with_adapter(ref, adapter, threads, precision)
    history: list[Message] = [Message("system", system)] if system else []
    who = f"{ref} with adapter {adapter}" if adapter else ref
    err_console.print(f"[dim]chatting with {who}; /reset clears the history, /exit leaves[/dim]")
    with engine:
        while True:
            try:
                line = console.input("[bold green]> [/bold green]").strip()
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if line in ("/exit", "/quit"):
                return
            if line == "/reset":
                history = history[:1] if system else []
                err_console.print("[dim]history cleared[/dim]")
                continue
            if not line:
                continue
            history.append(Message("user", line))
            reply = []
            try:
                for chunk in engine.stream(GenerationRequest(messages=tuple(history), params=params, adapter=adapter)):
                    console.out(chunk.text, end="", highlight=False)
                    reply.append(chunk.text)
            except KeyboardInterrupt:
                err_console.print("\n[dim]interrupted[/dim]")
            console.out("")
            history.append(Message("assistant", "".join(reply)))
