"""The OpenAI-compatible server: ``create_app(store, config) -> FastAPI``."""

from typing import Any

from slmops.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    # create_app (FastAPI and the whole server) loads on first use: `slmops serve`'s options are
    # built from ServeConfig when the CLI starts, and every other command should not pay for it
    if name == "create_app":
        from slmops.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
