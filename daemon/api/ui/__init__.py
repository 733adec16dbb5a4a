"""The dashboard at ``/ui``: a page, a server-rendered fan chart and the JSON it reads."""

from daemon.api.ui.data import DashboardData, SwapLog
from daemon.api.ui.router import dashboard_router, ui_router

__all__ = ["DashboardData", "SwapLog", "dashboard_router", "ui_router"]
