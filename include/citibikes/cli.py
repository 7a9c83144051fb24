"""The citibikes command: run the pipeline without Airflow, manage the local stack, inspect data.

Every subcommand calls the same package code as the Airflow DAGs. Errors that users can fix
(configuration, an unreachable feed or broker) print one line naming the cause and the fix and
exit non-zero; they never end in a bare stack trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from citibikes.config import ConfigError, load_settings
from citibikes.gbfs.errors import FeedError
from citibikes.stack.process import StackError

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, FeedError, StackError)


def setup_logging(level: str, log_file: str | None = None) -> None:
    """``TIMESTAMP - LOGGER - LEVEL - MESSAGE`` to stderr and, if given, to a log file."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
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
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "socket.timeout.ms": 10000})
    for change in ensure_topics(admin, settings.topics.values()):
        print(f"{change.topic}: {change.action}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from citibikes.replay.server import serve

    setup_logging(args.log_level or load_settings().log_level)
    serve(args.host, args.port, tick_s=args.tick)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print messages of a topic as JSON lines: key, headers, value."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING, OFFSET_END

    settings = load_settings()
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "citibikes-tail",
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(args.topic, timeout=10)
        topic = metadata.topics.get(args.topic)
        if topic is None or topic.error is not None:
            known = ", ".join(t.name for t in settings.topics.values())
            raise StackError(f"topic {args.topic!r} does not exist; the project's topics are {known}")
        partitions = []
        for pid in topic.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, pid), timeout=10)
            start = OFFSET_BEGINNING if args.from_beginning else max(low, high - args.n)
            partitions.append(TopicPartition(args.topic, pid, start if start >= 0 else OFFSET_END))
        consumer.assign(partitions)
        shown, idle = 0, 0
        while (args.follow or idle < 3) and (args.from_beginning or shown < args.n * len(partitions)):
            message = consumer.poll(1.0)
            if message is None:
                idle += 1
                continue
            idle = 0
            if message.error():
                continue
            print(json.dumps({
                "partition": message.partition(), "offset": message.offset(),
                "key": (message.key() or b"").decode(),
                "headers": {k: v.decode() for k, v in (message.headers() or [])},
                "value": json.loads(message.value()),
            }))
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


# -- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citibikes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("up", cmd_up, "start Kafka, the feed, Airflow (only what is not running) and unpause the DAGs")
    add("down", cmd_down, "stop everything `up` started")
    add("status", cmd_status, "show which local services run")
    add("topics", cmd_topics, "create or align the Kafka topics from configuration")
    p = add("replay", cmd_replay, "serve the offline GBFS feed built from recorded snapshots")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tick", type=float, default=15.0, help="seconds between feed updates (default 15)")
    p.add_argument("--log-level", default=None)
    p = add("tail", cmd_tail, "print the latest messages of a topic as JSON lines")
    p.add_argument("topic")
    p.add_argument("-n", type=int, default=5, help="messages per partition (default 5)")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new messages until Ctrl-C")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from citibikes.stream.publish import DeliveryError
    from citibikes.stream.topics import TopicError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (*USER_ERRORS, TopicError, DeliveryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
