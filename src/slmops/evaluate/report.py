"""Reports: JSON (stable schema), Markdown, and one self-contained HTML file.

The side-by-side table (:func:`side_by_side`) is built once and rendered by the CLI, the
Markdown and the HTML alike, so the three always show the same numbers. The HTML holds its
charts as inline SVG drawn here (see :mod:`slmops.evaluate.svg`): no scripts, no external
style sheets, nothing fetched.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from slmops.evaluate import svg
from slmops.evaluate.compare import ModelComparison, time_per_request_ms
from slmops.evaluate.results import EvalReport, ModelResult
from slmops.files import write_atomic

REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    cells: list[str]


def fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def fmt_mb(n_bytes: int | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.1f} MB"


def _metric(m: ModelResult, name: str) -> str:
    value = m.metrics.get(name)
    if value is None:
        return "-"
    digits = 2 if name == "bleu" else 3
    ci = m.intervals.get(name)
    return f"{value:.{digits}f}" + (f" [{ci.low:.{digits}f}, {ci.high:.{digits}f}]" if ci else "")


def _delta_text(r: ModelComparison) -> str:
    if r.quality_delta is None:
        return "-"
    ci = r.quality_delta_ci
    text = f"{r.quality_delta:+.3f}" + (f" [{ci.low:+.3f}, {ci.high:+.3f}]" if ci else "")
    return text + (" (significant)" if r.significant else "")


def side_by_side(report: EvalReport) -> tuple[list[str], list[Row]]:
    """Column headers (one per model, the first is the baseline) and labelled rows."""
    models = report.models
    headers = [m.ref + (" (baseline)" if report.comparison and m.ref == report.comparison.baseline else "")
               for m in models]
    rows = [Row("", "status", [m.status if m.ok else f"failed: {(m.error or '')[:80]}" for m in models])]
    for name in report.metrics:
        star = " *" if name == report.primary_metric else ""
        rows.append(Row("quality", f"{name}{star}", [_metric(m, name) if m.ok else "-" for m in models]))
    if any(m.judge for m in models):
        rows.append(Row("quality", "judge score (1-10)",
                        [fmt(m.judge.mean, 2) + f" ({m.judge.unparsed} unparsed)" if m.judge else "-" for m in models]))
    if any(m.perplexity or m.perplexity_error for m in models):
        rows.append(Row("quality", "perplexity", [fmt(m.perplexity.perplexity, 2) if m.perplexity else "-"
                                                  for m in models]))
    perf = [m.perf for m in models]
    rows += [
        Row("performance", "latency p50 / p95 (ms)",
            [f"{fmt(p.latency_p50_ms, 0)} / {fmt(p.latency_p95_ms, 0)}" if p else "-" for p in perf]),
        Row("performance", "time to first token p50 (ms)", [fmt(p.ttft_p50_ms, 0) if p else "-" for p in perf]),
        Row("performance", "tokens/s (batched)", [fmt(p.tokens_per_second, 1) if p else "-" for p in perf]),
        Row("performance", "peak RSS / delta (MB)",
            [f"{fmt(p.peak_rss_mb, 0)} / {fmt(p.memory_delta_mb, 0)}" if p else "-" for p in perf]),
        Row("performance", "load time (s)", [fmt(p.load_seconds, 1) if p else "-" for p in perf]),
        Row("model", "size on disk", [fmt_mb(m.size_bytes) for m in models]),
        Row("model", "parameters", [fmt(m.parameters) for m in models]),
    ]
    comp = {r.ref: r for r in report.comparison.rows} if report.comparison else {}
    if len(comp) > 1:
        def vs(render: Callable[[ModelComparison], str]) -> list[str]:
            return [render(comp[m.ref]) if m.ref in comp else "-" for m in models]

        rows += [
            Row("vs baseline", f"{report.primary_metric} delta [95% CI]", vs(_delta_text)),
            Row("vs baseline", "quality retention",
                vs(lambda r: "-" if r.quality_retention_pct is None else f"{r.quality_retention_pct:.1f}%")),
            Row("vs baseline", "inference time reduction", vs(lambda r: fmt_pct(r.inference_time_reduction_pct))),
            Row("vs baseline", "memory reduction", vs(lambda r: fmt_pct(r.memory_reduction_pct))),
            Row("vs baseline", "size reduction", vs(lambda r: fmt_pct(r.size_reduction_pct))),
        ]
    for flag in ("empty_output", "invalid_prediction", "no_number", "generation_error"):
        if any(m.counts.get(flag) for m in models):
            rows.append(Row("counts", flag.replace("_", " "), [str(m.counts.get(flag, 0)) if m.ok else "-"
                                                                for m in models]))
    return headers, rows


def record_summary(report: EvalReport) -> str:
    counts = report.record_counts()
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if k not in ("total", "scored") and v)
    return f"{counts['scored']} of {counts['total']} records scored" + (f" (not scored: {skipped})" if skipped else "")


# -- Markdown --------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: EvalReport) -> str:
    headers, rows = side_by_side(report)
    lines = [
        f"# Evaluation: {report.task} on {report.dataset}",
        "",
        f"- data: `{report.data}`",
        f"- {record_summary(report)}",
        f"- primary metric: **{report.primary_metric}** (marked *; 95% bootstrap interval in brackets)",
        f"- created: {report.created_at}",
    ]
    if report.labels:
        lines.append(f"- labels: {', '.join(report.labels)}")
    lines += ["", "| | " + " | ".join(_md_escape(h) for h in headers) + " |", "|---" * (len(headers) + 1) + "|"]
    lines += ["| " + _md_escape(r.name) + " | " + " | ".join(_md_escape(c) for c in r.cells) + " |" for r in rows]
    for m in report.models:
        if m.confusion:
            c = m.confusion
            lines += ["", f"## Confusion matrix: {m.ref}", "", "rows: gold label; columns: predicted", "",
                      "| gold \\ predicted | " + " | ".join(c.columns) + " |", "|---" * (len(c.columns) + 1) + "|"]
            lines += [f"| {lab} | " + " | ".join(str(v) for v in row) + " |" for lab, row in zip(c.labels, c.matrix,
                                                                                            strict=True)]
    for w in report.config.get("warnings", []):
        lines += ["", f"> warning: {w}"]
    return "\n".join(lines) + "\n"


# -- HTML ------------------------------------------------------------------------------------
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f6f8}tr.sec td{background:#fafafa;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}figure{margin:0}figcaption{font-weight:600;margin-bottom:.3em}
.muted{color:#777}"""


def _chart_data(report: EvalReport) -> tuple[list[svg.Point], list[tuple[str, float]]]:
    points, sizes = [], []
    for m in report.models:
        if not m.ok:
            continue
        t, q = time_per_request_ms(m), m.metrics.get(report.primary_metric)
        if t is not None and q is not None:
            points.append(svg.Point(m.ref, t, q))
        if m.size_bytes is not None:
            sizes.append((m.ref, m.size_bytes / 2**20))
    return points, sizes


def render_html(report: EvalReport) -> str:
    esc = html.escape
    headers, rows = side_by_side(report)
    table = ["<table><tr><th></th>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    section = ""
    for r in rows:
        if r.section != section and r.section:
            section = r.section
            table.append(f'<tr class="sec"><td colspan="{len(headers) + 1}">{esc(section)}</td></tr>')
        table.append(f"<tr><td>{esc(r.name)}</td>" + "".join(f"<td>{esc(c)}</td>" for c in r.cells) + "</tr>")
    table.append("</table>")
    points, sizes = _chart_data(report)
    charts = [f"<figure><figcaption>{esc(report.primary_metric)} vs latency</figcaption>"
              f"{svg.scatter(points, 'time per request (ms, p50)', report.primary_metric)}</figure>"]
    if sizes:
        charts.append(f"<figure><figcaption>size on disk</figcaption>{svg.bars(sizes, 'MB')}</figure>")
    for m in report.models:
        if m.confusion:
            charts.append(f"<figure><figcaption>confusion matrix: {esc(m.ref)}</figcaption>"
                          f"{svg.heatmap(m.confusion)}</figure>")
    warnings = "".join(f"<p><b>warning:</b> {esc(w)}</p>" for w in report.config.get("warnings", []))
    failed = "".join(f"<p><b>{esc(m.ref)} failed:</b> {esc(m.error or '')}</p>" for m in report.models if not m.ok)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>slmops eval: {esc(report.task)} on {esc(report.dataset)}</title><style>{CSS}</style></head><body>"
        f"<h1>Evaluation: {esc(report.task)} on {esc(report.dataset)}</h1>"
        f"<p class=\"muted\">{esc(report.data)} · {esc(record_summary(report))} · primary metric "
        f"{esc(report.primary_metric)} (*), 95% bootstrap intervals in brackets · {esc(report.created_at)}</p>"
        f"{failed}{warnings}{''.join(table)}<div class=\"charts\">{''.join(charts)}</div></body></html>\n"
    )


# -- files -----------------------------------------------------------------------------------
def write_reports(report: EvalReport, out_dir: Path) -> EvalReport:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir``; returns the
    report with ``report_files`` filled in (the JSON lists them too)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {kind: str((out_dir / name).resolve()) for kind, name in REPORT_FILES.items()}
    report = replace(report, report_files=files)
    write_atomic(Path(files["json"]), json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n")
    write_atomic(Path(files["markdown"]), render_markdown(report))
    write_atomic(Path(files["html"]), render_html(report))
    return report
