"""The health check's parts without the stack: metrics text from the consumer's own registry, the
Airflow and feed answers from a real local HTTP server, the lake from a real folder."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from http_server import Reply, ScriptedServer
from prometheus_client import generate_latest

from citibikes.lake import RunRecord, open_lake
from citibikes.live.metrics import ConsumerMetrics
from citibikes.live.store import STATUS_COLUMNS, Changes, LiveStore, shown_url
from citibikes.stack import health
from citibikes.stack.process import free_port


def metrics_text(lag: dict, newest: int, committed_at: float) -> str:
    metrics = ConsumerMetrics()
    metrics.update(Counter({("status", "applied"): 40, ("information", "applied"): 2}), lag, newest, 0, {}, committed_at)
    return generate_latest(metrics.registry).decode()


def test_metrics_are_read_from_the_consumers_own_exposition() -> None:
    reading = health.read_metrics(metrics_text({("status", 0): 3, ("status", 1): 4}, int(time.time()) - 90, time.time()))
    assert (reading.lag, reading.messages) == (7, 42)
    assert 89 <= reading.newest_age_s <= 95 and reading.last_commit
    fresh = health.read_metrics(generate_latest(ConsumerMetrics().registry).decode())
    assert (fresh.lag, fresh.newest_age_s, fresh.messages, fresh.last_commit) == (None, None, 0, None)


def test_consumer_ok_stuck_and_gone(tmp_path: Path) -> None:
    log = tmp_path / "consumer.log"
    with ScriptedServer() as server:
        server.script("/metrics", Reply(200, metrics_text({("status", 0): 0}, int(time.time()) - 30, time.time())))
        check = health.check_consumer(server.url("/metrics"), str(tmp_path / "live.db"), pid=1234, log_file=log)
        assert check.ok and check.facts["lag"] == 0 and 29 <= check.facts["newest_age_s"] <= 40
        assert "pid 1234, lag 0, newest event" in check.summary

        server.script("/metrics", Reply(200, metrics_text({("status", 0): 500}, int(time.time()), time.time() - 600)))
        stuck = health.check_consumer(server.url("/metrics"), str(tmp_path / "live.db"), pid=1234, log_file=log)
        assert not stuck.ok and stuck.summary.startswith("stuck:") and str(log) in stuck.fix

    store = LiveStore.open(str(tmp_path / "live.db"))
    row = dict.fromkeys(STATUS_COLUMNS) | {"key": "s:A", "system_id": "s", "station_id": "A", "kafka_partition": 0,
                                           "last_updated": int(time.time()) - 7200, "value": "{}"}
    store.commit(Changes(status={"s:A": tuple(row.values())}))
    store.close()
    log.write_text("first\nConsumer stopped\n")
    gone = health.check_consumer(f"http://127.0.0.1:{free_port()}/metrics", str(tmp_path / "live.db"), pid=None, log_file=log)
    assert not gone.ok and "not running" in gone.summary and "`make up`" in gone.fix
    assert "the store's newest event is 2 h old" in gone.summary and "last log line: Consumer stopped" in gone.summary


def test_scheduler_health_names_the_sick_component(tmp_path: Path) -> None:
    beat = datetime.now(timezone.utc) - timedelta(seconds=4)
    answer = {part: {"status": "healthy"} for part in health.AIRFLOW_PARTS}
    answer["scheduler"]["latest_scheduler_heartbeat"] = beat.isoformat()
    with ScriptedServer() as server:
        server.script("/api/v2/monitor/health", Reply(200, answer))
        check = health.check_scheduler(server.base_url, pid=None, log_file=tmp_path / "airflow.log")
    assert check.ok and "heartbeat 4 s ago" in check.summary
    answer["triggerer"] = {"status": "unhealthy"}
    sick = health.scheduler_health(answer, log_file=tmp_path / "airflow.log")
    assert not sick.ok and sick.summary.startswith("triggerer unhealthy") and "airflow.log" in sick.fix
    gone = health.check_scheduler(f"http://127.0.0.1:{free_port()}", pid=None, log_file=tmp_path / "airflow.log")
    assert not gone.ok and "does not answer" in gone.summary and "`make up`" in gone.fix


def test_dags_report_their_last_finished_run(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    ended = (datetime.now(timezone.utc) - timedelta(seconds=50)).isoformat()
    dags = [{"dag_id": "ours", "fileloc": str(folder / "ours.py"), "is_paused": False},
            {"dag_id": "broken", "fileloc": str(folder / "broken.py"), "is_paused": False},
            {"dag_id": "theirs", "fileloc": "/elsewhere/theirs.py", "is_paused": False}]
    with ScriptedServer() as server:
        server.script("/auth/token", Reply(201, {"access_token": "jwt"}))
        server.script("/api/v2/dags", Reply(200, {"dags": dags}))
        server.script("/api/v2/dags/ours/dagRuns", Reply(200, {"dag_runs": [
            {"dag_run_id": "scheduled__2", "state": "running", "end_date": None},
            {"dag_run_id": "scheduled__1", "state": "success", "end_date": ended}]}))
        server.script("/api/v2/dags/broken/dagRuns", Reply(200, {"dag_runs": [
            {"dag_run_id": "manual__1", "state": "failed", "end_date": ended}]}))
        broken, ours = health.check_dags(server.base_url, "secret", folder)
        assert server.seen("/api/v2/dags/ours/dagRuns")[0].header("Authorization") == "Bearer jwt"
        server.script("/auth/token", Reply(401, {"detail": "no"}))
        [refused] = health.check_dags(server.base_url, "wrong", folder)
    assert ours.ok and ours.name == "dag ours" and "scheduled__1 succeeded 50 s ago; 1 run in progress" in ours.summary
    assert not broken.ok and "manual__1 failed" in broken.summary and broken.fix.endswith("/dags/broken/runs/manual__1")
    assert not refused.ok and "refused the admin login (401)" in refused.summary
    assert not health.dag_health({"dag_id": "x", "is_paused": True}, [], "http://ui").ok
    assert health.dag_health({"dag_id": "x", "is_paused": False}, [], "http://ui").summary == "no finished run yet"


def test_feed_answers_or_says_why_not() -> None:
    with ScriptedServer() as server:
        server.script("/gbfs.json", Reply(200, {"data": {}}))
        server.script("/down.json", Reply(503))
        server.script("/html.json", Reply(200, "<html>"))
        assert health.check_feed("a", server.url("/gbfs.json"), fix="f").ok
        assert "HTTP 503" in health.check_feed("a", server.url("/down.json"), fix="f").summary
        assert "not JSON" in health.check_feed("a", server.url("/html.json"), fix="f").summary
    refused = health.check_feed("a", f"http://127.0.0.1:{free_port()}/gbfs.json", fix="start it")
    assert not refused.ok and "connection refused" in refused.summary and refused.fix == "start it"


def test_lake_reports_its_newest_run_and_goes_stale(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    assert "nothing written yet" in health.check_lake(uri, lambda: open_lake(uri), stale_after_s=300).summary
    lake = open_lake(uri)
    assert "no pipeline run recorded" in health.check_lake(uri, lambda: lake, stale_after_s=300).summary
    now = time.time()
    lake.write_runs([RunRecord(run_id="old", system_id="citibike", started_at=now - 86400 * 3, outcome="success")])
    lake.write_runs([RunRecord(run_id="first", system_id="citibike", started_at=now - 20, outcome="success")])
    time.sleep(0.02)  # a later modification time
    lake.write_runs([RunRecord(run_id="second", system_id="citibike", started_at=now - 30, outcome="failed")])
    check = health.check_lake(uri, lambda: lake, stale_after_s=300)
    assert check.ok and check.facts["run_id"] == "second" and "run second of citibike, failed" in check.summary
    stale = health.check_lake(uri, lambda: lake, stale_after_s=0)
    assert not stale.ok and "scheduler" in stale.fix


def test_run_all_bounds_every_probe_and_keeps_the_order() -> None:
    def slow() -> health.Check:
        time.sleep(5)
        return health.healthy("slow", "late")

    def broken() -> health.Check:
        raise RuntimeError("boom")

    started = time.monotonic()
    checks = health.run_all([("slow", slow), ("broken", broken), ("two", lambda: [health.healthy("a", "x"),
                                                                                   health.healthy("b", "y")])],
                            deadline_s=0.5)
    assert time.monotonic() - started < 1.5
    assert [c.name for c in checks] == ["slow", "broken", "a", "b"]
    assert "no answer within" in checks[0].summary and "RuntimeError: boom" in checks[1].summary


def test_lines_show_state_cause_fix_and_details() -> None:
    [line] = health.down("broker", "no answer", "make up").lines()
    assert line.split() == ["broker", "DOWN", "no", "answer", "->", "fix:", "make", "up"]
    head, detail = health.healthy("broker", "fine", details=("topic t: 1 partitions",)).lines()
    assert head.split()[:2] == ["broker", "OK"] and detail.strip() == "topic t: 1 partitions"


@pytest.mark.parametrize(("url", "shown"), [
    ("/state/live.db", "/state/live.db"),
    ("postgresql://live:secret@db:5432/live", "postgresql://live:***@db:5432/live"),
])
def test_store_urls_are_shown_without_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_status_checks_the_feed_the_last_up_chose(tmp_path: Path) -> None:
    from citibikes.stack import local

    env = {"CITIBIKES_STATE_DIR": str(tmp_path)}
    assert local.stack_settings(dict(env)).systems_file.name == "systems.yaml"
    chosen = {**env, "CITIBIKES_FEED": "replay", "CITIBIKES_REPLAY_URL": "http://127.0.0.1:9"}
    local.remember_feed(local.load_settings(chosen), chosen)
    settings = local.stack_settings(dict(env))
    assert settings.systems_file.name == "systems.replay.yaml"
    assert settings.systems[0].discovery_url == "http://127.0.0.1:9/citibike/gbfs.json"
    assert local.stack_settings({**env, "CITIBIKES_FEED": "live"}).systems_file.name == "systems.yaml"
