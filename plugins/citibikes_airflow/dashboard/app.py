"""The live dashboard's FastAPI app, mounted by :mod:`citibikes_airflow.dashboard.plugin` at
:data:`~citibikes_airflow.dashboard.URL_PREFIX`.

Airflow does not authenticate a plugin's app (a mounted app inherits none of the core API's dependencies), so
every route here depends on Airflow's own check: a valid session cookie or bearer token whose user may view
plugins (``requires_access_view(AccessView.PLUGINS)``, through the configured auth manager). A browser without
a session is sent to Airflow's login page and back; any other request without one gets 401.

Routes (read-only): ``/`` the page and ``/static/<file>`` its script and style (built from ``frontend/``);
``/api/systems``, ``/api/state?system=``, ``/api/health``, ``/api/audit?system=`` its data (JSON, gzipped);
``/reports/<system>/<period>/<file>`` an analytics report's files from the lake. The data comes from the live
state store, the lake and Airflow's metadata database (the last DAG runs), never from Kafka.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import requires_access_view

from citibikes.config import load_settings
from citibikes.dashboard import audit, health, state
from citibikes.errors import first_line
from citibikes.lake import Lake, LakeError
from citibikes.lake.layout import check_system_id
from citibikes.live.store import LiveStore, StoreError
from citibikes_airflow.dashboard import URL_PREFIX
from citibikes_airflow.hooks.lake import LakeHook

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
LAKE_EVERY_S = 10.0
"""The lake's figures (runs, reports) are read again at most this often; the live state at every request."""
DAG_RUNS = 10


app = FastAPI(title="citibikes dashboard", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(requires_access_view(AccessView.PLUGINS))])
app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=5)  # 9 takes 5x longer for nothing


@app.exception_handler(StarletteHTTPException)
async def _login_first(request: Request, exc: StarletteHTTPException) -> Response:
    """The page asked for without a valid session (none, expired or forged): Airflow's login, then back here."""
    expired = exc.status_code == 401 or (exc.status_code == 403 and exc.detail == "Invalid JWT token")
    if expired and request.url.path in (URL_PREFIX, URL_PREFIX + "/"):
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
    return await http_exception_handler(request, exc)


@app.exception_handler(StoreError)
@app.exception_handler(LakeError)
async def _unavailable(request: Request, exc: Exception) -> Response:
    """The live store or the lake cannot be read now: one line, 503 (the page says it and retries)."""
    return JSONResponse({"detail": first_line(exc)}, status_code=503)


@app.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@app.get("/static/{name}")
def static(name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise HTTPException(404, f"no static file {name}")
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


@app.get("/api/systems")
def systems() -> dict[str, Any]:
    with _store() as store:
        found = state.systems(store)
    return {"systems": found, "default": found[0]["id"] if found else None}


@app.get("/api/state")
def station_state(system: str = state.ALL) -> Response:
    with _store() as store:
        data = state.station_state(store, system, time.time())
    return Response(msgspec.json.encode(data), media_type="application/json")  # FastAPI's encoder: 0.5 s for 70,000


@app.get("/api/health")
def pipeline_health() -> dict[str, Any]:
    """Without the live store: the panel matters most when the consumer is down."""
    settings = load_settings()
    runs = _LAKE.get("runs", lambda lake: _LAKE.history.refresh(time.time()))
    system_ids = sorted({s.system_id for s in settings.systems if s.enabled} | {r["system_id"] for r in runs})
    return {"systems": health.pipeline_health(runs, system_ids, time.time()),
            "consumer": health.consumer_health(settings.consumer_metrics_url),
            "dag_runs": _dag_runs()}


@app.get("/api/audit")
def audit_figures(system: str) -> dict[str, Any]:
    _system_id(system)
    return {"report": _LAKE.get(f"audit:{system}", lambda lake: audit.latest_report(lake, system))}


@app.get("/reports/{system}/{period}/{name}")
def report_file(system: str, period: str, name: str) -> Response:
    try:
        key = audit.report_path(_system_id(system), period, name)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None
    data = _LAKE.lake().storage.get(key)
    if data is None:
        raise HTTPException(404, f"no report {system} {period} {name}")
    # the report's own page (self-contained, no script) may not run anything on Airflow's origin
    return Response(data, media_type=audit.FILES[name],
                    headers={"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"})


def _system_id(system: str) -> str:
    try:
        return check_system_id(system)
    except LakeError as exc:
        raise HTTPException(404, first_line(exc)) from None


class _LakeCache:
    """What is read from the lake, kept :data:`LAKE_EVERY_S` seconds, and the one lake of the process (the
    reads are outside the lock: two requests at once may both read, neither waits on the other's I/O)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, tuple[float, Any]] = {}
        self._lake: Lake | None = None
        self._history: health.RunHistory | None = None

    def lake(self) -> Lake:
        with self.lock:
            if self._lake is None:
                self._lake = LakeHook().get_lake()
                self._history = health.RunHistory(self._lake)
            return self._lake

    @property
    def history(self) -> health.RunHistory:
        self.lake()
        return self._history

    def get(self, name: str, read) -> Any:  # noqa: ANN001 - read(lake) -> the value
        with self.lock:
            found = self.values.get(name)
        if found is not None and time.monotonic() - found[0] < LAKE_EVERY_S:
            return found[1]
        value = read(self.lake())
        with self.lock:
            self.values[name] = (time.monotonic(), value)
        return value


_LAKE = _LakeCache()


class _store:
    """The live state store, read-only, for one request (SQLite readers never block the consumer)."""

    def __enter__(self) -> LiveStore:
        self.store = LiveStore.open(load_settings().live_store, readonly=True)
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def _dag_runs() -> list[dict[str, Any]]:
    """The last run of each of the project's DAGs, newest first (Airflow's metadata database)."""
    from sqlalchemy import func, select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        newest = (select(DagRun.dag_id, func.max(DagRun.run_after).label("run_after"))
                  .where(DagRun.dag_id.like("citibikes_%")).group_by(DagRun.dag_id).subquery())
        runs = session.scalars(select(DagRun).join(newest, (DagRun.dag_id == newest.c.dag_id)
                                                   & (DagRun.run_after == newest.c.run_after))
                               .order_by(DagRun.run_after.desc()).limit(DAG_RUNS)).all()
        return [{"dag_id": r.dag_id, "run_id": r.run_id, "state": str(r.state) if r.state else None,
                 "run_after": r.run_after.isoformat() if r.run_after else None,
                 "duration_s": (r.end_date - r.start_date).total_seconds() if r.end_date and r.start_date else None}
                for r in runs]
