"""Evaluation: task metrics, performance, comparison against a baseline, LLM-as-judge, reports.

Every other command that needs a quality or speed number (distill, optimize, the pipeline's
gates, validate) calls :func:`evaluate` or the pieces below instead of computing its own.

Example::

    from slmops.evaluate import EvalConfig, evaluate
    config = EvalConfig(("smollm2-135m-instruct", "my-int4:1"), "builtin:support-tickets", "classification")
    report = evaluate(config)
    report.comparison.row("my-int4:1").quality_retention_pct
"""

from __future__ import annotations

from slmops.evaluate.bootstrap import ConfidenceInterval, bootstrap_ci, paired_bootstrap_delta
from slmops.evaluate.builtin import BUILTIN_DATASETS, builtin_dataset, resolve_data
from slmops.evaluate.compare import Comparison, ModelComparison, compare_models
from slmops.evaluate.report import render_html, render_markdown, write_reports
from slmops.evaluate.results import SCHEMA_VERSION, EvalReport, ModelResult
from slmops.evaluate.run import EvalConfig, evaluate, evaluate_model
from slmops.evaluate.tasks import TASKS

__all__ = [
    "BUILTIN_DATASETS",
    "SCHEMA_VERSION",
    "TASKS",
    "Comparison",
    "ConfidenceInterval",
    "EvalConfig",
    "EvalReport",
    "ModelComparison",
    "ModelResult",
    "bootstrap_ci",
    "builtin_dataset",
    "compare_models",
    "evaluate",
    "evaluate_model",
    "paired_bootstrap_delta",
    "render_html",
    "render_markdown",
    "resolve_data",
    "write_reports",
]
