"""Backfill: which files it reads, in what order, with which information, and what lands - once.

The archives are written by ``bench/archive.py`` the way scrapers record (status and information
side by side every 5-20 minutes, the information content mostly unchanged). Expectations come from
the files themselves. Kafka is a fake here (what the loop does on a failed flush); the real broker
is in tests/integration/test_cli.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

from bench.archive import write_archive
from citibikes.config import load_settings
from citibikes.gbfs.model import STATION_INFORMATION, STATION_STATUS
from citibikes.ingest import check_fetched, Fetched, select, step_files
from citibikes.lake import Lake, LakeError, open_lake
from citibikes.replay.backfill import Landing, backfill, ingest, minute_files, run_id_for
from citibikes.replay.recordings import recorded
from citibikes.replay.scan import SnapshotFile, pair, scan
from citibikes.state import SystemState
from citibikes.stream.publish import Publisher
from test_publish import TOPICS, FakeProducer


def _file(feed: str, last_updated: int) -> SnapshotFile:
    return SnapshotFile(last_updated, feed, Path(f"{feed}-{last_updated}.json"))


@pytest.fixture()
def settings(tmp_path: Path):
    return load_settings({"CITIBIKES_FEED": "replay", "CITIBIKES_LAKE_URI": str(tmp_path / "lake"),
                          "CITIBIKES_STATE_DIR": str(tmp_path / "state")})


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 snapshots over about 3 hours, the station descriptions changing twice (at the 5th and the 10th)."""
    folder = tmp_path_factory.mktemp("archive") / "citibike"
    write_archive(folder, 14, seed=5, information_changes=2)
    return folder


def _documents(folder: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_bytes()) for path in sorted(folder.glob(f"*/{name}"))]


def _observations(lake: Lake) -> list[tuple[str, int]]:
    table = lake.read_table(STATION_STATUS)
    return list(zip(table["station_id"].to_pylist(), pc.cast(table["last_updated"], "int64").to_pylist()))


def test_each_status_gets_the_latest_information_at_or_before_it() -> None:
    info = {t: _file(STATION_INFORMATION, t) for t in (100, 200, 300)}
    status = {t: _file(STATION_STATUS, t) for t in (50, 100, 150, 250, 300, 400)}
    pairs = pair(sorted([*info.values(), *status.values()]))
    assert [(s.last_updated, i.last_updated if i else None) for s, i in pairs] == [
        (50, None),  # before the first information: none to pair with
        (100, 100),  # equal timestamps: the information counts as "at or before"
        (150, 100),
        (250, 200),
        (300, 300),
        (400, 300),
    ]


def test_scan_orders_by_last_updated_not_by_names_or_folders(tmp_path: Path) -> None:
    """Names and folders sort newest first here; the scan still gives the oldest first."""
    statuses = recorded(STATION_STATUS)  # oldest first
    places = ["a.json", "b/status.json.gz", "c/d/x.json", "c/e/y.json"]  # the order a walk meets them
    for recording, place in zip(reversed(statuses), places):
        path = tmp_path / place
        path.parent.mkdir(parents=True, exist_ok=True)
        body = recording.read_bytes()
        path.write_bytes(gzip.compress(body) if place.endswith(".gz") else body)
    (information,) = recorded(STATION_INFORMATION)
    (tmp_path / "c" / "e" / "z.json").write_bytes(information.read_bytes())
    (tmp_path / "README.md").write_text("# bike archive\n")
    (tmp_path / "c" / "notes.txt").write_text("scraped hourly\n")
    (tmp_path / "broken.json").write_text('{"hello": "world"}')
    (tmp_path / "vehicles.json").write_text('{"last_updated": 1710335271, "data": {"vehicle_types": []}}')
    (tmp_path / ".hidden.json").write_text("not looked at")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.json").write_text("not looked at")
    found = scan(tmp_path)
    assert [(s.feed, s.last_updated) for s in found.snapshots] == [
        (STATION_INFORMATION, information.last_updated),  # at the first status's time: information first
        *((STATION_STATUS, r.last_updated) for r in statuses),
    ]
    assert [s.path.relative_to(tmp_path).as_posix() for s in found.snapshots] == ["c/e/z.json", *reversed(places)]
    assert found.skipped == {"unsupported_suffix": 2, "not_gbfs_station_feed": 2}
    assert found.snapshots[0].digest is not None and found.snapshots[1].digest is None


def test_a_backfill_lands_every_observation_once_and_each_description_version_once(
        archive: Path, settings: Any) -> None:
    lake = open_lake(settings.lake_uri)
    report = backfill(archive, "citibike", settings=settings, lake=lake)
    statuses = _documents(archive, "station_status.json")
    informations = _documents(archive, "station_information.json")
    assert (report.snapshots, report.processed, report.failed, report.published) == (14, 14, 0, 0)
    assert report.records == sum(len(d["data"]["stations"]) for d in statuses)
    observations = _observations(lake)
    assert len(observations) == len(set(observations)) == report.records - report.quarantined
    # descriptions: every station at the first snapshot, then only those a change touched
    contents = [json.dumps(d["data"], sort_keys=True) for d in informations]
    changed_at = [i for i in range(1, len(contents)) if contents[i] != contents[i - 1]]
    assert len(changed_at) == 2
    expected = len(informations[0]["data"]["stations"])
    for i in changed_at:
        before = {s["station_id"]: s for s in informations[i - 1]["data"]["stations"]}
        expected += sum(s != before[s["station_id"]] for s in informations[i]["data"]["stations"])
    versions = lake.read_table(STATION_INFORMATION)
    assert versions.num_rows == expected
    assert sorted(set(pc.cast(versions["last_updated"], "int64").to_pylist())) == sorted(
        informations[i]["last_updated"] * 1000 for i in [0, *changed_at])
    # one station_status file per hour partition
    hours = {(s["last_updated"] // 3600) for s in statuses}
    assert len(lake.files(STATION_STATUS)) == len(hours)
    runs = lake.read_runs("citibike")
    assert sorted(run.run_id for run in runs) == sorted(run_id_for("citibike", s["last_updated"]) for s in statuses)
    assert {run.outcome for run in runs} == {"success"}

    files = {key: (lake.storage.path(key), Path(lake.storage.path(key)).stat().st_mtime_ns)
             for name in (STATION_STATUS, STATION_INFORMATION, "pipeline_runs") for key in lake.files(name)}
    again = backfill(archive, "citibike", settings=settings, lake=lake)
    assert (again.processed, again.already_done) == (0, 14)
    assert {key: (path, Path(path).stat().st_mtime_ns) for key, (path, _) in files.items()} == files, \
        "a second backfill writes nothing"


def test_a_backfill_stopped_half_way_goes_on_where_it_stopped(archive: Path, settings: Any, tmp_path: Path) -> None:
    whole = open_lake(str(tmp_path / "whole"))
    backfill(archive, "citibike", settings=settings, lake=whole)
    lake = open_lake(settings.lake_uri)

    class Stop(Exception):
        pass

    def stop_after_five(records: Any, total: int) -> Any:
        for number, record in enumerate(records, 1):
            yield record
            if number == 5:
                raise Stop

    with pytest.raises(Stop):
        backfill(archive, "citibike", settings=settings, lake=lake, progress=stop_after_five)
    report = backfill(archive, "citibike", settings=settings, lake=lake)
    assert report.failed == 0 and report.already_done >= 5 and report.processed == 14 - report.already_done
    assert sorted(_observations(lake)) == sorted(_observations(whole))
    for name in (STATION_INFORMATION, "quarantine"):  # no description version twice either
        assert lake.read_table(name).num_rows == whole.read_table(name).num_rows


class FlushFails(FakeProducer):
    """The broker does not acknowledge the ``failing`` flushes (counted from 1)."""

    def __init__(self, failing: set[int]) -> None:
        super().__init__()
        self.failing, self.flushes = failing, 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        return 7 if self.flushes in self.failing else 0


def test_a_failed_flush_fails_its_snapshots_and_the_next_go_on_from_the_last_acknowledged(
        archive: Path, settings: Any, tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, status_snapshot_every_s=10**6)  # only changes after the first
    lake = open_lake(settings.lake_uri)
    pairs = pair(scan(archive).snapshots)
    producer = FlushFails({2})
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = list(ingest(pairs, "citibike", pool=pool, settings=settings, lake=lake,
                              publisher=Publisher(producer, TOPICS), snapshots_per_flush=3))  # type: ignore[arg-type]
    outcomes = {record.run_id: record.outcome for record in records}
    run_ids = [run_id_for("citibike", status.last_updated) for status, _ in pairs]
    assert [outcomes[run_id] for run_id in run_ids] == ["success"] * 3 + ["failed"] * 3 + ["success"] * 8
    failed = {status.last_updated for status, _ in pairs[3:6]}
    assert {t // 1000 for _, t in _observations(lake)}.isdisjoint(failed)
    # the 7th goes on from the 3rd: what follows is published as if the failed ones had never been there
    reference = FakeProducer()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(ingest(pairs[:3] + pairs[6:], "citibike", pool=pool, settings=settings,
                    lake=open_lake(str(tmp_path / "reference")), publisher=Publisher(reference, TOPICS),  # type: ignore[arg-type]
                    snapshots_per_flush=3))

    def after_failure(messages: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
        return [(dict(m["headers"])["last_updated"], m["key"]) for m in messages
                if int(dict(m["headers"])["last_updated"]) >= pairs[6][0].last_updated]

    assert after_failure(producer.produced) == after_failure(reference.produced) != []
    # a backfill again ingests the failed ones, and only them
    report = backfill(archive, "citibike", settings=settings, lake=lake)
    assert (report.processed, report.already_done, report.failed) == (3, 11, 0)
    observations = _observations(lake)
    assert len(observations) == len(set(observations))


def test_a_broken_file_fails_alone(archive: Path, settings: Any, tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    commits = sorted(archive.iterdir())[:4]
    for commit in commits:
        shutil.copytree(commit, folder / commit.name)
    broken = folder / "zz-broken"
    broken.mkdir()
    document = json.loads((commits[2] / "station_status.json").read_bytes())
    document["last_updated"] += 1
    document["version"] = "9.9"
    (broken / "station_status.json").write_text(json.dumps(document))
    lake = open_lake(settings.lake_uri)
    report = backfill(folder, "citibike", settings=settings, lake=lake)
    assert (report.processed, report.failed) == (4, 1)
    assert len(report.errors) == 1 and report.errors[0].startswith(
        "station_status.json: citibike station_status: GBFS version '9.9' is not supported")


def test_a_backfill_leaves_alone_the_snapshots_the_live_pipeline_landed(tmp_path: Path, settings: Any) -> None:
    """The minute DAG landed one of the snapshots in a file of its own: a backfill over the same
    period ingests the others only, so no snapshot has rows in two files (an hour's and a minute's)."""
    lake = open_lake(settings.lake_uri)
    archive = tmp_path / "archive"
    archive.mkdir()
    statuses, (information,) = recorded(STATION_STATUS), recorded(STATION_INFORMATION)
    for recording in (*statuses, information):
        (archive / f"{recording.feed}-{recording.last_updated}.json").write_bytes(recording.read_bytes())
    live = statuses[1]  # as `fetch -> validate -> write` of a minute run land it
    fetched = Fetched(system_id="citibike", fetched_at=float(live.last_updated), outcomes={STATION_STATUS: "new"},
                      last_updated={STATION_STATUS: live.last_updated}, bodies={STATION_STATUS: live.read_bytes()})
    checked = check_fetched(fetched, SystemState(), settings.quality, reference_time=float(live.last_updated))
    lake.write_files(step_files(select(SystemState(), checked, system_id="citibike", snapshot_every_s=900), lake))
    assert minute_files(lake, "citibike") == {live.last_updated}

    producer = FakeProducer()
    report = backfill(archive, "citibike", settings=settings, lake=lake,
                      publisher=Publisher(producer, TOPICS))  # type: ignore[arg-type]
    assert (report.snapshots, report.already_done, report.processed, report.failed) == (4, 1, 3, 0)
    observations = _observations(lake)
    assert len(observations) == len(set(observations)), "a station's observation is in the lake once"
    assert {t // 1000 for _, t in observations} == {r.last_updated for r in statuses}
    sent = [dict(message["headers"])["last_updated"] for message in producer.produced]
    assert sent and str(live.last_updated).encode() not in sent, "the live snapshot is not sent again"


@pytest.mark.timeout(60)
def test_a_writer_that_falls_behind_is_waited_for(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = open_lake(settings.lake_uri)
    slow_write = lake.write_files

    def slow(files: Any) -> list[str]:
        time.sleep(0.2)
        return slow_write(files)

    monkeypatch.setattr(lake, "write_files", slow)
    with Landing(lake, "citibike", None, SystemState(), settings.quality) as landing:
        for number in range(Landing.WRITES_AHEAD + 4):
            landing.fail(f"run-{number}", time.time(), RuntimeError("broken file"))
            landing.flush()
        records = landing.written(wait=True)
    assert [record.run_id for record in records] == [f"run-{n}" for n in range(Landing.WRITES_AHEAD + 4)]


def test_after_a_failed_write_nothing_more_is_written(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = open_lake(settings.lake_uri)
    calls: list[int] = []

    def failing(files: Any) -> list[str]:
        calls.append(len(calls))
        raise LakeError("cannot write: disk full")

    monkeypatch.setattr(lake, "write_files", failing)
    with Landing(lake, "citibike", None, SystemState(), settings.quality) as landing:
        for number in range(3):
            landing.fail(f"run-{number}", time.time(), RuntimeError("broken file"))
            landing.flush()
        with pytest.raises(LakeError, match="disk full"):
            landing.written(wait=True)
    assert calls == [0], "the writes queued after the failed one wrote nothing"
    assert lake.read_runs() == []


def test_an_unreadable_station_information_is_replaced_by_the_one_before(
        archive: Path, settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its status snapshots land, checked against the description before it; it lands no version."""
    folder = tmp_path / "archive"
    commits = sorted(archive.iterdir())[:6]
    for commit in commits:
        shutil.copytree(commit, folder / commit.name)
    broken = folder / commits[3].name / "station_information.json"
    document = json.loads(broken.read_bytes())
    document["version"] = "9.9"
    document["data"]["stations"][0]["name"] = "changed, but unreadable"
    broken.write_text(json.dumps(document))
    lake = open_lake(settings.lake_uri)
    with caplog.at_level("WARNING", logger="citibikes.backfill"):
        report = backfill(folder, "citibike", settings=settings, lake=lake)
    assert (report.processed, report.failed) == (6, 0)
    assert "station_information.json ignored" in caplog.text and "GBFS version '9.9'" in caplog.text
    names = lake.read_table(STATION_INFORMATION)["name"].to_pylist()
    assert "changed, but unreadable" not in names
