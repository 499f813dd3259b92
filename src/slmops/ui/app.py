"""``create_ui_app(store, config) -> FastAPI``: server-rendered pages (Jinja2) over the store,
the run folders and the watched ``slmops serve`` endpoints, with htmx for partial updates and
a small script for the live charts. Every asset is in the package; nothing comes from a CDN."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from slmops import __version__
from slmops.errors import ModelNotFoundError, SlmopsError
from slmops.models.lineage import lineage
from slmops.models.store import ModelStore
from slmops.pipeline.runs import list_runs, load_run
from slmops.ui import fleet as fleet_views
from slmops.ui import graph as lineage_graph
from slmops.ui import views
from slmops.ui.config import UIConfig
from slmops.ui.live import EndpointMonitor
from slmops.ui.security import SESSION_COOKIE, Guard, Refused

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'")
PUBLIC = ("/static/", "/login", "/favicon.ico")


def _env() -> Environment:
    env = Environment(loader=PackageLoader("slmops.ui", "templates"), autoescape=select_autoescape(["html"]))
    env.globals.update(fmt=views.fmt, model_href=lineage_graph.model_href, version=__version__, quote=quote)
    env.filters["pretty"] = views.pretty
    return env


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def create_ui_app(store: ModelStore, config: UIConfig | None = None) -> FastAPI:
    config = config or UIConfig()
    guard = Guard(config.api_key, config.host)
    monitors = [EndpointMonitor(url, config.endpoint_key, window_s=config.window_s) for url in config.serve]
    fleet = fleet_views.FleetWatch(store.home, config.broker, config.fleets)
    env = _env()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        fleet.close()

    app = FastAPI(title="slmops ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store, app.state.config, app.state.guard, app.state.monitors = store, config, guard, monitors
    app.state.fleet = fleet
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = guard.session(request)
        html = env.get_template(template).render(
            request=request, path=request.url.path, signed_in=session is not None or guard.bearer(request),
            csrf=guard.csrf_token(session), actions=bool(config.api_key), endpoints=monitors,
            refresh_ms=int(config.refresh_s * 1000), **context)
        return HTMLResponse(html, status_code=status)

    def refusal(request: Request, exc: Refused) -> Response:
        if request.headers.get("hx-request") or request.url.path.endswith("/sample"):
            return HTMLResponse(f'<p class="error" role="alert">{exc.message}</p>', status_code=exc.status)
        return page(request, "error.html", status=exc.status, message=exc.message)

    @app.middleware("http")
    async def gatekeeper(request: Request, call_next: Any) -> Response:
        try:
            guard.check_host(request)
            if not request.url.path.startswith(PUBLIC) and not guard.can_read(request):
                return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
            response = await call_next(request)
        except Refused as exc:
            response = refusal(request, exc)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return refusal(request, exc)

    @app.exception_handler(SlmopsError)
    async def not_found(request: Request, exc: SlmopsError) -> Response:
        missing = exc.message.lower().startswith(("no pipeline run", "no roll-out"))
        status = 404 if isinstance(exc, ModelNotFoundError) or missing else 400
        return refusal(request, Refused(status, str(exc)))

    # -- sign in ------------------------------------------------------------------------------
    @app.get("/login")
    async def login_page(request: Request, next: str = "/models") -> HTMLResponse:
        return page(request, "login.html", next=next if next.startswith("/") else "/models")

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        if request.headers.get("origin") and not guard.same_origin(request):
            raise Refused(403, "Cross-site sign-in refused.")
        token = guard.login(form.get("key"))
        target = form.get("next") or "/models"
        response = RedirectResponse(target if target.startswith("/") and not target.startswith("//") else "/models",
                                    status_code=303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        guard.logout(request)
        response = RedirectResponse("/models", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/")
    async def root() -> Response:
        return RedirectResponse("/models", status_code=307)

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    # -- models -------------------------------------------------------------------------------
    def model_rows(q: str, fmt: str) -> list[Any]:
        return views.filter_models(store.list(), q, fmt)

    @app.get("/models")
    async def models(request: Request, q: str = "", format: str = "") -> HTMLResponse:
        return page(request, "models.html", records=model_rows(q, format), q=q, format=format,
                    formats=sorted({r.format for r in store.list()}), headline=views.headline_metrics)

    @app.get("/models/table")
    async def models_table(request: Request, q: str = "", format: str = "") -> HTMLResponse:
        return page(request, "models_rows.html", records=model_rows(q, format), headline=views.headline_metrics)

    async def deployments() -> dict[str, list[lineage_graph.Node]]:
        """Where store versions run: watched servers that have them loaded, and fleet roll-outs."""
        out: dict[str, list[lineage_graph.Node]] = {}
        for mon in monitors:
            for key in await mon.loaded():
                out.setdefault(key, []).append(lineage_graph.Node(
                    f"serve:{mon.url}", "deployment", mon.url.split("://", 1)[-1], "served", "/serving"))
        try:
            records = fleet.rollouts()
        except (SlmopsError, OSError):
            records = []
        for r in records:
            if r.target.source:
                out.setdefault(r.target.source, []).append(lineage_graph.Node(
                    f"rollout:{r.id}", "deployment", f"fleet {r.fleet}", f"roll-out {r.status}",
                    f"/fleet/rollouts/{quote(r.id)}"))
        return out

    @app.get("/models/{name}/{version}")
    async def model_page(request: Request, name: str, version: str) -> HTMLResponse:
        rec = store.get(name if version == "latest" else f"{name}:{version}")
        graph = lineage_graph.build_graph(store, rec.ref, await deployments())
        return page(request, "model.html", rec=rec, graph_svg=lineage_graph.render_svg(graph), graph=graph,
                    nodes=lineage(store, rec.ref),
                    children=views.children(store, rec), versions=store.versions(rec.name),
                    evals=views.eval_summaries(rec))

    @app.post("/models/{name}/{version}/alias")
    async def set_alias(request: Request, name: str, version: str) -> Response:
        form = await _form(request)
        guard.check_action(request, form.get("csrf"))
        rec = store.get(f"{name}:{version}")
        alias = form.get("alias", "").strip()
        if form.get("action") == "delete":
            store.remove_alias(rec.name, alias)
        else:
            store.set_alias(rec.ref, alias)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(store.get(rec.ref).to_dict())
        return RedirectResponse(lineage_graph.model_href(rec.ref), status_code=303)

    # -- runs ---------------------------------------------------------------------------------
    @app.get("/runs")
    async def runs(request: Request) -> HTMLResponse:
        return page(request, "runs.html", runs=list_runs(store), counts=views.run_counts, gate=views.gate_summary)

    @app.get("/runs/compare")
    async def compare(request: Request, a: str = "", b: str = "", all: bool = False) -> HTMLResponse:
        everything = list_runs(store)
        if not a or not b:
            return page(request, "compare.html", runs=everything, a=a, b=b, diff=None, all=all)
        ra, rb = load_run(store, a), load_run(store, b)
        return page(request, "compare.html", runs=everything, a=ra.id, b=rb.id, ra=ra, rb=rb,
                    diff=views.compare(ra, rb), all=all)

    @app.get("/runs/{run_id}")
    async def run_page(request: Request, run_id: str) -> HTMLResponse:
        run = load_run(store, run_id)
        spec = run.dir / "pipeline.yaml"
        return page(request, "run.html", run=run, counts=views.run_counts(run), gates=views.gates(run),
                    has_report=(run.dir / "report.html").exists(),
                    spec_text=spec.read_text(encoding="utf-8") if spec.exists() else "",
                    models_in=lambda outputs: views.models_in(outputs, store))

    @app.get("/runs/{run_id}/report")
    async def run_report(run_id: str) -> Response:
        run = load_run(store, run_id)
        path = run.dir / "report.html"
        if not path.exists():
            raise Refused(404, f"Run {run.id} has no report.html (it writes one when it finishes).")
        # shown in a sandboxed frame: no scripts, its own inline styles
        return HTMLResponse(path.read_text(encoding="utf-8"), headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                       "frame-ancestors 'self'; sandbox"})

    # -- evaluations --------------------------------------------------------------------------
    @app.get("/evaluations")
    async def evaluations(request: Request, key: str = "") -> HTMLResponse:
        groups = views.evaluations(store)
        shown = {k: v for k, v in groups.items() if not key or k == key}
        charts = {k: {"ci": views.interval_chart(rows, rows[0].summary.get("primary_metric", "score")),
                      "latency": views.eval_bars(rows, "latency_p50_ms", "ms"),
                      "memory": views.eval_bars(rows, "memory_delta_mb", "MB")}
                  for k, rows in shown.items()}
        return page(request, "evaluations.html", groups=shown, keys=list(groups), key=key, charts=charts)

    # -- serving ------------------------------------------------------------------------------
    def monitor(i: int) -> EndpointMonitor:
        if not 0 <= i < len(monitors):
            raise Refused(404, f"No serve endpoint #{i}; start the console with --serve URL.")
        return monitors[i]

    @app.get("/serving")
    async def serving(request: Request) -> HTMLResponse:
        return page(request, "serving.html")

    @app.get("/serving/{i}/sample")
    async def sample(i: int) -> JSONResponse:
        return JSONResponse(await monitor(i).sample())

    @app.get("/serving/{i}/routes")
    async def routes(request: Request, i: int) -> HTMLResponse:
        found, why = await monitor(i).routes()
        return page(request, "routes.html", i=i, routes=found, why=why, message=None)

    @app.post("/serving/{i}/routes/{name}")
    async def set_route(request: Request, i: int, name: str) -> HTMLResponse:
        form = await _form(request)
        guard.check_action(request, form.get("csrf"))
        mon = monitor(i)
        weights: dict[str, float] = {}
        for field, value in form.items():
            if field.startswith("w:"):
                try:
                    weights[field[2:]] = float(value)
                except ValueError as exc:
                    raise Refused(400, f"Weight for {field[2:]} is not a number: {value!r}.") from exc
        try:
            new = await mon.set_route(name, weights)
        except SlmopsError as exc:
            raise Refused(400, str(exc)) from exc
        found, why = await mon.routes()
        message = f"{name}: " + ", ".join(f"{k} {v:g}" for k, v in new.items())
        return page(request, "routes.html", i=i, routes=found, why=why, message=message)

    # -- fleet --------------------------------------------------------------------------------
    @app.get("/fleet")
    async def fleet_page(request: Request) -> HTMLResponse:
        return page(request, "fleet.html", fleets=fleet.names(), broker=fleet.broker())

    @app.get("/fleet/{name}/panel")
    async def fleet_panel(request: Request, name: str) -> HTMLResponse:
        devices, why = await run_in_threadpool(fleet.devices, name)
        return page(request, "fleet_panel.html", name=name, devices=devices, why=why,
                    versions=fleet_views.version_counts(devices), rollouts=fleet.rollouts(name),
                    short=fleet_views.short, ago=fleet_views.ago)

    def rollout_context(rollout_id: str) -> dict[str, Any]:
        rec = fleet.rollout(rollout_id)
        return {"rec": rec, "waves": fleet_views.waves(rec), "allowed": fleet_views.allowed(rec),
                "short": fleet_views.short, "ago": fleet_views.ago, "gate_keys": fleet_views.GATE_KEYS}

    @app.get("/fleet/rollouts/{rollout_id}")
    async def rollout_page(request: Request, rollout_id: str) -> HTMLResponse:
        return page(request, "rollout.html", message=None, **rollout_context(rollout_id))

    @app.get("/fleet/rollouts/{rollout_id}/progress")
    async def rollout_progress(request: Request, rollout_id: str) -> HTMLResponse:
        return page(request, "rollout_progress.html", message=None, **rollout_context(rollout_id))

    @app.post("/fleet/rollouts/{rollout_id}/{action}")
    async def rollout_action(request: Request, rollout_id: str, action: str) -> Response:
        form = await _form(request)
        guard.check_action(request, form.get("csrf"))
        try:
            await run_in_threadpool(fleet.act, rollout_id, action)
        except SlmopsError as exc:
            raise Refused(409, str(exc)) from exc
        if not request.headers.get("hx-request"):
            return RedirectResponse(f"/fleet/rollouts/{quote(rollout_id)}", status_code=303)
        return page(request, "rollout_progress.html", message=f"{action}: done", **rollout_context(rollout_id))

    return app
