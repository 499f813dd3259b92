"""``/openapi.json`` and an interactive ``/docs`` page that work offline.

FastAPI's default ``/docs`` loads Swagger UI from a CDN. Here the Swagger UI assets come from
the ``swagger-ui-bundle`` package (Apache-2.0, installed with slmops) and are served from
``/docs/assets``; without that package ``/docs`` is a small self-contained page that lists the
operations from ``/openapi.json``. The route handlers parse their own bodies, so the request
schemas are the same pydantic models the handlers validate with (:func:`schema_ref`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

_COMPONENTS: dict[str, Any] = {}


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to ``model`` in ``components/schemas`` (registered with its sub-schemas)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        _COMPONENTS[name] = sub
    _COMPONENTS[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _assets() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").exists() else None


SWAGGER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "/openapi.json", dom_id: "#ui"}});</script>
</body></html>"""

PLAIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} API</title></head>
<body><h1>{title} API</h1><p>The OpenAPI description is at <a href="/openapi.json">/openapi.json</a>.</p>
<ul>{items}</ul></body></html>"""


def install_docs(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=__doc__)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(openapi())

    assets = _assets()

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        title = html.escape(app.title)
        if assets is not None:
            return HTMLResponse(SWAGGER_PAGE.format(title=title))
        items = "".join(
            f"<li><code>{m.upper()} {html.escape(p)}</code> {html.escape(op.get('summary', ''))}</li>"
            for p, ops in openapi()["paths"].items()
            for m, op in ops.items()
        )
        return HTMLResponse(PLAIN_PAGE.format(title=title, items=items))

    if assets is not None:
        from fastapi.staticfiles import StaticFiles

        app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")
