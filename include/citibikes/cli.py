"""The citibikes command: run the pipeline without Airflow, manage the local stack, inspect data.

Every subcommand calls the same package code as the Airflow DAGs. Errors that users can fix
(configuration, an unreachable feed or broker) print one line naming the cause and the fix and
exit non-zero; they never end in a bare stack trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from citibikes import redact
from citibikes.aws.commands import add_aws_commands
from citibikes.catalog_commands import add_catalog_commands
from citibikes.config import ConfigError, load_settings
from citibikes.gbfs.errors import FeedError
from citibikes.stack.process import StackError

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, FeedError, StackError)


def setup_logging(level: str, log_file: str | None = None) -> None:
    """``TIMESTAMP - LOGGER - LEVEL - MESSAGE`` to stderr and, if given, to a log file."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    redactor = redact.from_environment()
    for handler in handlers:
        handler.addFilter(redactor)
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=handlers, force=True)
    for noisy in ("urllib3", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


# -- stack -------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from citibikes.stack import local

    return local.up()


def cmd_down(args: argparse.Namespace) -> int:
    from citibikes.stack import local

    return local.down()


def cmd_status(args: argparse.Namespace) -> int:
    from citibikes.stack import local

    return local.status()


def cmd_topics(args: argparse.Namespace) -> int:
    from confluent_kafka.admin import AdminClient

    from citibikes.stream.topics import ensure_topics

    settings = load_settings()
    admin = AdminClient({**settings.kafka.client_config(), "socket.timeout.ms": 10000})
    for change in ensure_topics(admin, settings.topics.values()):
        print(f"{change.topic}: {change.action}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from citibikes.replay.server import serve

    setup_logging(args.log_level or load_settings().log_level)
    serve(args.host, args.port, tick_s=args.tick)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print a topic's messages as JSON lines: the last ``-n`` per partition (all with ``--from-beginning``),
    then stop once caught up or, with ``-f``, go on printing new ones until Ctrl-C."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from citibikes.stream.topics import require_broker

    settings = load_settings()
    require_broker(settings.kafka)
    consumer = Consumer({**settings.kafka.client_config(), "group.id": "citibikes-tail",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        topic = consumer.list_topics(args.topic, timeout=10).topics.get(args.topic)
        if topic is None or topic.error is not None:
            known = ", ".join(t.name for t in settings.topics.values())
            raise StackError(f"topic {args.topic!r} does not exist; the project's topics are {known}")
        starts = []
        for pid in topic.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, pid), timeout=10)
            starts.append(TopicPartition(args.topic, pid, low if args.from_beginning else max(low, high - args.n)))
        consumer.assign(starts)
        behind = {tp.partition for tp in starts}  # partitions that have not reported their end yet
        while args.follow or behind:
            for message in consumer.consume(1000, timeout=0.5):
                error = message.error()
                if error is None:
                    print(tail_line(message), flush=True)
                elif error.code() == KafkaError._PARTITION_EOF:
                    behind.discard(message.partition())
                else:
                    print(f"warning: {error.str()}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def tail_line(message) -> str:
    """One message as a JSON line; a tombstone's value is null, a value that is not JSON is shown as text."""
    def text(raw: bytes | None) -> str | None:
        return None if raw is None else raw.decode(errors="replace")

    raw = message.value()
    try:
        value = None if raw is None else json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        value = text(raw)
    return json.dumps({
        "partition": message.partition(), "offset": message.offset(), "key": text(message.key()),
        "headers": {k: text(v) for k, v in (message.headers() or [])}, "value": value,
    })


# -- pipeline ----------------------------------------------------------------------------------

class GracefulStop:
    """First Ctrl-C (or SIGTERM): finish the current step, flush, then stop. Second: stop now."""

    def __init__(self, log: logging.Logger) -> None:
        self.event = threading.Event()
        self._log = log

    def install(self) -> GracefulStop:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self._log.info("Stopping after the current step (press Ctrl-C again to stop at once)")
        self.event.set()


def _log_settings(args: argparse.Namespace):
    settings = load_settings()
    level = args.log_level or settings.log_level
    return settings, level


def cmd_run(args: argparse.Namespace) -> int:
    """The pipeline without Airflow: the same tasks as the minute DAG, once or every interval."""
    from citibikes.lake import lake_from_settings
    from citibikes.errors import one_line
    from citibikes.tasks import run_all
    from citibikes.stream.publish import Publisher, make_producer
    from citibikes.stream.topics import require_broker

    settings, level = _log_settings(args)
    setup_logging(level, args.log_file)
    log = logging.getLogger("citibikes.run")
    interval = args.interval or settings.interval_s
    lake = lake_from_settings(settings)
    require_broker(settings.kafka)
    publisher = Publisher(make_producer(**settings.kafka.client_config()), settings.topics)
    stop = GracefulStop(log).install()
    systems = ", ".join(s.system_id for s in settings.systems if s.enabled)
    log.info("Pipeline started: mode=%s, interval=%ss, systems=%s, lake=%s, kafka=%s",
             args.mode, interval, systems, settings.lake_uri, settings.kafka.bootstrap)
    number, failures = 0, 0
    while True:
        number += 1
        started = time.monotonic()
        run_id = "cli__" + datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            summary = run_all(settings, lake, publisher, run_id)
        except Exception as exc:  # the lake or broker went away: try again next interval
            if args.mode == "single":
                raise
            failures += 1
            log.error("Run %d failed: %s", number, one_line(exc))
        else:
            for line in summary.lines:
                log.debug(line)
            for system_id, reason in summary.failed.items():
                log.warning("%s failed: %s", system_id, reason)
            failures += bool(summary.failed)
            systems = ", ".join(f"{count} {outcome.replace('_', ' ')}" for outcome, count in sorted(summary.outcomes.items()))
            log.info("Run %d done in %.2f s: %d records processed, %d sent, %d quarantined; systems: %s",
                     number, summary.duration_s, summary.processed, summary.sent, summary.quarantined, systems or "none")
        if args.mode == "single" or stop.event.is_set():
            break
        wait = max(0.0, interval - (time.monotonic() - started))
        log.info("Next execution in %d seconds", round(wait))
        if stop.event.wait(wait):
            break
    log.info("Pipeline stopped after %d runs", number)
    return 1 if (args.mode == "single" and failures) else 0


def cmd_consume(args: argparse.Namespace) -> int:
    """The long-lived consumer: the live state of every station, its episodes and alerts."""
    from citibikes.live import service
    from citibikes.stream.topics import require_broker

    settings, level = _log_settings(args)
    setup_logging(level, args.log_file)
    require_broker(settings.kafka)
    stop = GracefulStop(logging.getLogger("citibikes.consumer")).install()
    summary = service.serve(settings, should_stop=stop.event.is_set, test_mode=args.test_mode, interval_s=args.interval)
    if args.test_mode:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Fetch a system's feeds once and print the quality summary; exit 1 when a feed is unusable."""
    from citibikes.config import SystemConfig
    from citibikes.gbfs.client import GbfsClient
    from citibikes.ingest import inspect_feeds

    quality = load_settings().quality
    source = args.source
    folder = Path(source)
    try:
        if "://" not in source and folder.is_dir():
            client = GbfsClient.for_folder(folder, system_id=args.system)
            recorded = True
        elif "://" in source:
            system_id = args.system or guess_system_id(source)
            client = GbfsClient(SystemConfig(system_id, source, language=args.language))
            recorded = source.startswith("file://")
        else:
            print(f"error: {source} is neither a folder nor a URL; give a gbfs.json URL or a folder of feed files",
                  file=sys.stderr)
            return 2
        with client:
            result = inspect_feeds(client, quality, recorded=recorded)
    except FeedError as exc:
        if args.json:
            print(json.dumps({"usable": False, "reason": exc.reason, "error": str(exc)}))
        else:
            print(f"unusable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"usable": True, **result.__dict__}, indent=2, default=str))
    else:
        print(format_inspection(result))
    return 0


def guess_system_id(url: str) -> str:
    """A readable label from a discovery URL: .../citibike/gbfs.json -> citibike, gbfs.lyft.com/gbfs/2.3/bkn/... -> bkn."""
    from urllib.parse import urlsplit
    import re

    parts = urlsplit(url)
    segments = [p for p in parts.path.split("/") if p and p != "gbfs.json" and p != "gbfs"
                and not re.fullmatch(r"v?\d+(\.\d+)*|[a-z]{2}(-[A-Z]{2})?", p)]
    host = (parts.hostname or "system").removeprefix("gbfs.").split(".")[0]
    label = (segments[-1] if segments else host).lower()
    return re.sub(r"[^a-z0-9_-]", "-", label)[:63] or "system"


def format_inspection(result) -> str:
    s = result.summary
    seen, valid = s.get("seen", {}), s.get("valid", {})
    lines = [
        f"System:       {result.system_id} (GBFS {result.version}{', language ' + result.language if result.language else ''})",
        f"Source:       {result.source}",
    ]
    for feed in ("station_information", "station_status"):
        if feed in seen:
            when = datetime.fromtimestamp(result.last_updated[feed], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            lines.append(f"{feed + ':':<21} {seen[feed]:>6,} stations, {valid.get(feed, 0):>6,} valid  (last_updated {when})")
    quarantined = sum(s.get("quarantined", {}).values())
    lines.append(f"Quarantined:  {quarantined:,} records")
    for reason, count in sorted(s.get("quarantined_by_reason", {}).items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:<32} {count:>6,}")
    orphans = s.get("orphans", {})
    lines.append("Orphans:      " + ", ".join(f"{k.replace('_', ' ')} {v if v is not None else 'not checked'}" for k, v in orphans.items()))
    quirks = s.get("quirks", {})
    if quirks:
        lines.append("Quirks:       " + ", ".join(f"{k} {v:,}" for k, v in sorted(quirks.items())))
    age = s.get("feed_age_s")
    if age is not None:
        lines.append(f"Feed age:     {age:,.0f} s{' - STALE' if s.get('feed_stale') else ''}")
    lines.append(f"Result:       usable{f' ({quarantined:,} records quarantined)' if quarantined else ''}")
    return "\n".join(lines)


def cmd_backfill(args: argparse.Namespace) -> int:
    """Ingest a folder of recorded GBFS files through the live pipeline's path, idempotently."""
    from tqdm import tqdm

    from citibikes.lake import lake_from_settings
    from citibikes.replay.backfill import backfill
    from citibikes.stream.publish import Publisher, make_producer
    from citibikes.stream.topics import require_broker

    settings, level = _log_settings(args)
    setup_logging(level, args.log_file)
    log = logging.getLogger("citibikes.backfill")
    lake = lake_from_settings(settings)
    publisher = None
    if args.publish:
        require_broker(settings.kafka)
        publisher = Publisher(make_producer(**settings.kafka.client_config()), settings.topics)
    started = time.monotonic()

    def progress(items, total):
        return tqdm(items, total=total, unit="snapshot", disable=args.no_progress or None, file=sys.stderr)

    report = backfill(Path(args.folder), args.system, settings=settings, lake=lake, publisher=publisher, progress=progress)
    elapsed = time.monotonic() - started
    log.info("Backfill of %s from %s: %d snapshots, %d ingested, %d already done, %d failed; "
             "%d records, %d published, %d quarantined in %.1f s (%.0f records/s)%s",
             args.system, args.folder, report.snapshots, report.processed, report.already_done, report.failed,
             report.records, report.published, report.quarantined, elapsed, report.records / elapsed if elapsed else 0,
             "; files skipped: " + ", ".join(f"{count} {reason}" for reason, count in sorted(report.skipped_files.items()))
             if report.skipped_files else "")
    for error in report.errors[:10]:
        log.error(error)
    return 1 if report.failed else 0


# -- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citibikes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def add_log_level(p: argparse.ArgumentParser) -> None:
        """``--log-level``, any case; a bad value is an argparse error listing the choices, not a traceback."""
        p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None, metavar="LEVEL",
                       help="DEBUG, INFO, WARNING or ERROR, any case (default: LOG_LEVEL or INFO)")

    add("up", cmd_up, "start Kafka, the live consumer, the feed, Airflow (only what is not running) and unpause the DAGs")
    add("down", cmd_down, "stop everything `up` started")
    add("status", cmd_status, "health check: broker, consumer, Airflow and its DAG runs, feed, lake "
                              "(exit 0: all OK, 1: something is down, 3: nothing runs)")
    add("topics", cmd_topics, "create or align the Kafka topics from configuration")
    p = add("replay", cmd_replay, "serve the offline GBFS feed built from recorded snapshots")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tick", type=float, default=15.0, help="seconds between feed updates (default 15)")
    add_log_level(p)
    p = add("run", cmd_run, "run the pipeline (fetch -> validate -> Kafka -> lake) without Airflow")
    p.add_argument("--mode", choices=("single", "continuous"), default="single",
                   help="one step and exit, or one step every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=int, default=None, help="seconds between runs (default: PIPELINE_INTERVAL or 60)")
    add_log_level(p)
    p.add_argument("--log-file", default="citibikes_pipeline.log")
    p = add("consume", cmd_consume, "keep the live state of every station from the Kafka topics")
    p.add_argument("--test-mode", action="store_true",
                   help="read both topics from the start (a throwaway group and store), print the counts per topic, exit")
    p.add_argument("--interval", type=int, default=None, help="seconds between summaries (default: PIPELINE_INTERVAL)")
    add_log_level(p)
    p.add_argument("--log-file", default="citibikes_consumer.log")
    p = add("validate", cmd_validate, "check a GBFS system's feeds: a gbfs.json URL or a folder of feed files")
    p.add_argument("source", help="discovery URL (https://.../gbfs.json) or folder with station_status.json etc.")
    p.add_argument("--system", default=None, help="system id to label records with")
    p.add_argument("--language", default="en")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = add("backfill", cmd_backfill, "land a folder of recorded GBFS snapshots in the lake (.json, .gz or .zst files; "
                                      "any names, any order)")
    p.add_argument("folder")
    p.add_argument("--system", required=True, help="system id the snapshots belong to")
    p.add_argument("--publish", action="store_true",
                   help="also publish the history to the Kafka topics (they keep days, not years: see the README)")
    p.add_argument("--no-progress", action="store_true")
    add_log_level(p)
    p.add_argument("--log-file", default="citibikes_pipeline.log")
    p = add("tail", cmd_tail, "print the latest messages of a topic as JSON lines")
    p.add_argument("topic")
    p.add_argument("-n", type=int, default=5, help="messages per partition (default 5)")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new messages until Ctrl-C")
    add_catalog_commands(add)
    add_aws_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from citibikes.analytics.errors import AnalyticsError
    from citibikes.aws.errors import AwsError
    from citibikes.catalog.errors import CatalogError
    from citibikes.checks.definitions import ChecksError
    from citibikes.stream.publish import DeliveryError
    from citibikes.lake import LakeError
    from citibikes.live.store import StoreError
    from citibikes.stream.topics import BrokerUnavailable, TopicError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (*USER_ERRORS, TopicError, DeliveryError, BrokerUnavailable, LakeError, StoreError, AwsError,
            CatalogError, ChecksError, AnalyticsError) as exc:
        print(f"error: {redact.from_environment().redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # whoever read the output stopped (`citibikes tail ... | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or Python fails flushing it at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a command its pipe's reader left


if __name__ == "__main__":
    sys.exit(main())
