"""The citibikes Airflow plugin: the live dashboard's app, mounted at ``/citibikes``, and its entry in Airflow's
navigation (the page shown inside the UI)."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from citibikes_airflow.dashboard import URL_PREFIX


class DashboardApp:
    """The dashboard's ASGI app (:mod:`citibikes_airflow.dashboard.app`), imported at its first request: Airflow
    loads every plugin in every task (for their macros), and the app's imports (Airflow's API security) would
    add about a second to each task."""

    app: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if DashboardApp.app is None:
            from citibikes_airflow.dashboard.app import app

            DashboardApp.app = app
        await DashboardApp.app(scope, receive, send)


class CitibikesDashboardPlugin(AirflowPlugin):
    name = "citibikes_dashboard"
    fastapi_apps = [{"app": DashboardApp(), "url_prefix": URL_PREFIX, "name": "citibikes dashboard"}]
    external_views = [{"name": "Citi Bikes live", "href": f"{URL_PREFIX}/", "destination": "nav",
                       "url_route": "citibikes", "nav_top_level": True}]
