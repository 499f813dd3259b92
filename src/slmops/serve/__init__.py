"""The OpenAI-compatible server: ``create_app(store, config) -> FastAPI``."""

from slmops.serve.app import create_app
from slmops.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
