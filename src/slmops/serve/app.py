"""``create_app(store, config) -> FastAPI``: thin route handlers over :mod:`slmops.serve.serving`.

Every error leaves as ``{"error": {"message", "type", "param", "code"}}``; client mistakes
are 4xx with a message that names the field, never a 5xx.
"""

from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException

from slmops.errors import EngineError, ModelNotFoundError, SlmopsError
from slmops.models.store import ModelStore
from slmops.serve.config import ServeConfig
from slmops.serve.docs import install_docs, schema_ref
from slmops.serve.metrics import ServeMetrics
from slmops.serve.pool import ModelPool
from slmops.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
)
from slmops.serve.reqlog import RequestLog
from slmops.serve.serving import Serving

log = logging.getLogger("slmops.serve")
M = TypeVar("M", bound=BaseModel)


async def read_json(http: Request, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes before reading them all."""
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"The request body is {declared} bytes; the limit is {limit}.", code="body_too_large")
    chunks, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"The request body is over the limit of {limit} bytes.", code="body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"The request body is not valid JSON ({exc}).", code="invalid_json") from exc


def parse(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from exc


def validation_error(errors: Any) -> APIError:
    """All problems in one message; ``param`` names the first field."""
    parts, params = [], []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        msg = "unrecognized field (check the spelling)" if e.get("type") == "extra_forbidden" else e.get("msg", "")
        parts.append(f"{loc}: {msg.removeprefix('Value error, ')}" if loc else msg.removeprefix("Value error, "))
        params.append(loc or None)
    return APIError(400, "Invalid request: " + "; ".join(parts) + ".", param=params[0] if params else None)


class RouteUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: dict[str, float]


def create_app(store: ModelStore, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    metrics = ServeMetrics()
    pool = ModelPool(store, config, metrics)
    request_log = (
        RequestLog(config.request_log, max_bytes=config.request_log_max_bytes, backups=config.request_log_backups)
        if config.request_log
        else None
    )
    serving = Serving(pool, metrics, request_log)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        for ref in config.models:
            pool.preload(ref)
        yield
        pool.close()

    from slmops import __version__

    app = FastAPI(
        title="slmops", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.pool, app.state.metrics, app.state.config = pool, metrics, config
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"], allow_headers=["*"]
        )

    async def require_key(http: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = http.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(
                401,
                "Missing or invalid API key; send 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    api = APIRouter(dependencies=[Depends(require_key)])

    @api.post("/v1/chat/completions", **_doc(ChatCompletionRequest, ChatCompletionResponse, stream=True))
    async def chat_completions(http: Request) -> Any:
        """Chat completion: streaming, `response_format` (JSON mode, JSON schema), tools, logprobs."""
        body = parse(ChatCompletionRequest, await read_json(http, config.max_body_bytes))
        return await serving.chat(body, http)

    @api.post("/v1/completions", **_doc(CompletionRequest, CompletionResponse, stream=True))
    async def completions(http: Request) -> Any:
        """Text completion (no chat template): streaming, logprobs, echo, token-id prompts."""
        body = parse(CompletionRequest, await read_json(http, config.max_body_bytes))
        return await serving.completion(body, http)

    @api.post("/v1/embeddings", **_doc(EmbeddingRequest, EmbeddingResponse))
    async def embeddings(http: Request) -> Any:
        """Embeddings: the mean of the last hidden layer over the input's tokens, unit length."""
        body = parse(EmbeddingRequest, await read_json(http, config.max_body_bytes))
        return await serving.embeddings(body, http)

    @api.get("/v1/models")
    async def list_models() -> Any:
        return ModelList(data=[ModelCard(id=i, created=c) for i, c in pool.listing()]).model_dump()

    @api.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        for i, c in pool.listing():
            if i == model_id:
                return ModelCard(id=i, created=c).model_dump()
        raise APIError(404, f"The model {model_id!r} does not exist.", param="model", code="model_not_found")

    @api.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render([m.worker for m in pool.loaded()]), media_type=metrics.content_type)

    @api.get("/admin/routes")
    async def routes() -> Any:
        require_admin()
        return pool.router.snapshot()

    @api.put("/admin/routes/{name}")
    async def set_route(name: str, http: Request) -> Any:
        """Create or re-weight a canary route: ``{"weights": {"support@prod": 90, "support@new": 10}}``."""
        require_admin()
        body = parse(RouteUpdate, await read_json(http, config.max_body_bytes))
        for ref in body.weights:
            pool.resolve(ref)  # every target must exist: 404 otherwise
        try:
            pool.router.set(name, body.weights)
        except SlmopsError as exc:
            raise APIError(400, str(exc), param="weights") from exc
        return {name: pool.router.snapshot()[name]}

    def require_admin() -> None:
        if config.api_key is None:
            raise APIError(403, "Admin endpoints are disabled; start the server with --api-key to enable them.")

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "loaded": [m.key for m in pool.loaded()]}

    app.include_router(api)
    if config.docs:
        install_docs(app)
    _install_error_handlers(app, metrics)
    return app


def _doc(request: type[BaseModel], response: type[BaseModel], *, stream: bool = False) -> dict[str, Any]:
    """OpenAPI for a route that parses its own body: the request schema (the same pydantic model
    the handler validates with), the response, and the error shape."""
    content: dict[str, Any] = {"application/json": {"schema": schema_ref(response)}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string", "description": "Server-sent events."}}
    error = {"description": "Error", "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    return {
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema_ref(request)}}}
        },
        "responses": {
            200: {"description": "Success", "content": content},
            400: error,
            401: error,
            404: error,
            429: error,
        },
    }


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}


def _install_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    def respond(http: Request, exc: APIError) -> JSONResponse:
        model, version = getattr(http.state, "route", ("", ""))
        if http.url.path.startswith("/v1/") and http.method == "POST":
            metrics.observe_request(model, version, exc.status)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(APIError)
    async def api_error(http: Request, exc: APIError) -> JSONResponse:
        return respond(http, exc)

    @app.exception_handler(SlmopsError)
    async def slmops_error(http: Request, exc: SlmopsError) -> JSONResponse:
        if isinstance(exc, ModelNotFoundError):
            return respond(http, APIError(404, str(exc), param="model", code="model_not_found"))
        if isinstance(exc, EngineError):
            return respond(http, APIError(400, str(exc)))
        return respond(http, APIError(503, str(exc), type="server_error", code="model_unavailable"))

    @app.exception_handler(RequestValidationError)
    async def invalid(http: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(http, validation_error(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(http: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else None
        return respond(http, APIError(exc.status_code, f"{http.method} {http.url.path}: {exc.detail}", code=kind))

    @app.exception_handler(Exception)
    async def bug(http: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", http.method, http.url.path)
        return respond(http, APIError(500, f"Internal error: {type(exc).__name__}.", type="server_error"))
