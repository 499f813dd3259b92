"""The run report: ``report.md`` and one self-contained ``report.html`` (inline CSS and SVG).

Built only from the run's state, so a run served entirely from the cache reports the same
figures as the run that computed them. Sections: the case-study table of every evaluate step
(parameters, size, memory, latency p50/p95, tokens/s, the task metric, and the reductions and
retention against the first model), the training curve, latency and size charts, the gates,
the registered model, the deployment check, and the steps with their timings.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from slmops.evaluate import svg
from slmops.evaluate.report import CSS
from slmops.files import write_atomic
from slmops.pipeline.spec import PipelineSpec
from slmops.pipeline.state import PipelineRun

_ROWS: list[tuple[str, str, str]] = [  # (label, output key, format)
    ("parameters", "parameters", "count"),
    ("size on disk", "size_mb", "mb"),
    ("memory (RSS added)", "memory_mb", "mb"),
    ("latency p50 per request", "latency_p50_ms", "ms"),
    ("latency p95 per request", "latency_p95_ms", "ms"),
    ("tokens/s (batched)", "tokens_per_second", "num"),
    ("{metric}", "{metric}", "metric"),
    ("inference time reduction", "time_reduction_pct", "pct"),
    ("memory reduction", "memory_reduction_pct", "pct"),
    ("size reduction", "size_reduction_pct", "pct"),
    ("{metric} retention", "retention_pct", "pct"),
]


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "count":
        return f"{value / 1e6:.1f} M" if value >= 1e5 else f"{value:,}"
    if kind == "mb":
        return f"{value:,.1f} MB"
    if kind == "ms":
        return f"{value:,.0f} ms"
    if kind == "pct":
        return f"{value:.1f}%"
    if kind == "metric":
        return f"{value:.3f}"
    return f"{value:,.1f}"


def case_study(outputs: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(column labels, rows) of one evaluate step's outputs; the first column is the baseline."""
    labels = [lab for lab in outputs.get("labels", []) if isinstance(outputs.get(lab), dict)]
    metric = outputs.get("primary_metric", "accuracy")
    rows = []
    for name, key, kind in _ROWS:
        key = key.format(metric=metric)
        cells = []
        for i, lab in enumerate(labels):
            value = outputs[lab].get(key)
            cells.append("-" if i == 0 and kind == "pct" else _cell(value, kind))
        rows.append((name.format(metric=metric), cells))
    return labels, rows


def _evaluations(run: PipelineRun) -> list[tuple[str, dict[str, Any]]]:
    return [(n, s.outputs) for n, s in run.steps.items() if s.kind == "evaluate" and s.outputs.get("labels")]


def _curves(run: PipelineRun) -> list[tuple[str, dict[str, list[tuple[float, float]]]]]:
    out = []
    for name, s in run.steps.items():
        curve = s.outputs.get("curve") if s.kind in ("distill", "finetune") else None
        if curve:
            series = {"train loss": [(p["step"], p["loss"]) for p in curve if "loss" in p],
                      "eval loss": [(p["step"], p["eval_loss"]) for p in curve if "eval_loss" in p]}
            out.append((name, {k: v for k, v in series.items() if v}))
    return out


def _summary_lines(run: PipelineRun) -> list[str]:
    lines = []
    for name, s in run.steps.items():
        o = s.outputs
        if s.kind == "gate":
            for c in o.get("checks", []):
                lines.append(f"gate {name}: {'pass' if c['passed'] else 'FAIL'}: {c['evaluated']}")
        elif s.kind == "register" and o.get("model"):
            aliases = ", ".join(f"@{a}" for a in o.get("aliases", []))
            lines.append(f"registered: {o['model']} {aliases} (from {o.get('source')})")
        elif s.kind == "deploy":
            if o.get("bundle"):
                lines.append(f"bundle ({o.get('bundle_format')}): {o['bundle']}")
            if o.get("answer") is not None:
                lines.append(f"served {o.get('model')} at {o.get('url')}: asked {o.get('prompt')!r}, "
                             f"answered {o.get('answer')!r} in {o.get('response_ms')} ms")
        elif s.kind == "distill" and o:
            lines.append(f"distill {name}: teacher answers accepted {o.get('accepted')}, rejected {o.get('rejected')}; "
                         f"student trained {o.get('steps')} steps, final loss {_num(o.get('train_loss'))}")
    return lines


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _steps_rows(run: PipelineRun) -> list[list[str]]:
    return [[n, s.kind, s.status, f"{s.seconds:.1f} s", str(s.outputs.get("model", "")) if s.outputs else ""]
            for n, s in run.steps.items()]


def render_markdown(run: PipelineRun, spec: PipelineSpec) -> str:
    md = [f"# Pipeline {run.pipeline}: {run.status}", "",
          f"Run `{run.id}` · started {run.started_at} · {run.seconds:.0f} s of step time"
          + (f" · {spec.description}" if spec.description else ""), ""]
    for name, outputs in _evaluations(run):
        labels, rows = case_study(outputs)
        models = ", ".join(f"{lab} = `{outputs[lab].get('ref')}`" for lab in labels)
        md += [f"## {name}: {models}", "",
               "| | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        md += [f"| {r} | " + " | ".join(cells) + " |" for r, cells in rows]
        md += ["", f"Reductions and retention are against `{labels[0]}`. "
               f"Full evaluation report: {outputs.get('report')}", ""]
    for name, series in _curves(run):
        md += [f"## Training curve ({name})", "", "| step | " + " | ".join(series) + " |",
               "|---:|" + "---:|" * len(series)]
        steps = sorted({x for pts in series.values() for x, _ in pts})
        pick = steps if len(steps) <= 12 else steps[:: max(1, len(steps) // 10)] + [steps[-1]]
        for x in sorted(set(pick)):
            md.append(f"| {x:g} | " + " | ".join(_num(dict(pts).get(x, "")) for pts in series.values()) + " |")
        md.append("")
    summary = _summary_lines(run)
    if summary:
        md += ["## Outcome", ""] + [f"- {line}" for line in summary] + [""]
    md += ["## Steps", "", "| step | kind | status | time | model |", "|---|---|---|---:|---|"]
    md += ["| " + " | ".join(r) + " |" for r in _steps_rows(run)]
    failed = [(n, s.error) for n, s in run.steps.items() if s.error]
    md += [""] + [f"**{n} failed:** {e}" for n, e in failed] + ([""] if failed else [])
    md.append("Charts (training curve, latency, size) are in report.html.")
    return "\n".join(md) + "\n"


def render_html(run: PipelineRun, spec: PipelineSpec) -> str:
    esc = html.escape
    body = [f"<h1>Pipeline {esc(run.pipeline)}: {esc(run.status)}</h1>",
            f'<p class="muted">run {esc(run.id)} · started {esc(run.started_at)} · {run.seconds:.0f} s of step time'
            + (f" · {esc(spec.description)}" if spec.description else "") + "</p>"]
    charts = []
    for name, outputs in _evaluations(run):
        labels, rows = case_study(outputs)
        heads = "".join(f'<th>{esc(lab)}<br><span class="muted">{esc(str(outputs[lab].get("ref")))}</span></th>'
                        for lab in labels)
        body.append(f"<h2>{esc(name)}</h2><table><tr><th></th>{heads}</tr>")
        body += ["<tr><td>" + esc(r) + "</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
                 for r, cells in rows]
        body.append(f'</table><p class="muted">Reductions and retention against {esc(labels[0])}.</p>')
        lat = [(lab, float(outputs[lab]["latency_p50_ms"])) for lab in labels if outputs[lab].get("latency_p50_ms")]
        size = [(lab, float(outputs[lab]["size_mb"])) for lab in labels if outputs[lab].get("size_mb")]
        if lat:
            charts.append(f"<figure><figcaption>latency p50 per request ({esc(name)})</figcaption>"
                          f"{svg.bars(lat, 'ms')}</figure>")
        if size:
            charts.append(f"<figure><figcaption>size on disk ({esc(name)})</figcaption>{svg.bars(size, 'MB')}</figure>")
    for name, series in _curves(run):
        charts.insert(0, f"<figure><figcaption>training curve ({esc(name)})</figcaption>"
                         f"{svg.lines(series, 'step', 'loss')}</figure>")
    if charts:
        body.append(f'<div class="charts">{"".join(charts)}</div>')
    summary = _summary_lines(run)
    if summary:
        body.append("<h2>Outcome</h2><ul>" + "".join(f"<li>{esc(s)}</li>" for s in summary) + "</ul>")
    body.append("<h2>Steps</h2><table><tr><th>step</th><th>kind</th><th>status</th><th>time</th><th>model</th></tr>"
                + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in _steps_rows(run))
                + "</table>")
    body += [f"<p><b>{esc(n)} failed:</b> {esc(s.error)}</p>" for n, s in run.steps.items() if s.error]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>slmops pipeline {esc(run.pipeline)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def write_report(run: PipelineRun, spec: PipelineSpec, copy_to: Path | None = None) -> dict[str, str]:
    """Write ``report.md`` and ``report.html`` into the run folder (and copy them to ``copy_to``)."""
    files = {"markdown": run.dir / "report.md", "html": run.dir / "report.html"}
    write_atomic(files["markdown"], render_markdown(run, spec))
    write_atomic(files["html"], render_html(run, spec))
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for key, path in list(files.items()):
            shutil.copyfile(path, copy_to / path.name)
            files[key] = copy_to / path.name
    return {k: str(v.resolve()) for k, v in files.items()}
