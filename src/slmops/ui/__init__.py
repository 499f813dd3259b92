"""``slmops ui``: the web console over the store, the run folders and live ``slmops serve``
endpoints (see :func:`create_ui_app`)."""

from slmops.ui.app import create_ui_app
from slmops.ui.config import UIConfig

__all__ = ["UIConfig", "create_ui_app"]
