"""`esc`: the command line. Every command takes --store URL and, where it prints data,
--json. Bad input or an unreachable store gives one line on stderr and a non-zero exit.
Long replays (`esc verify`, `esc verify --rebuild`) draw a progress bar with rate and ETA
on stderr when it is a terminal, and print nothing extra otherwise."""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, NoReturn, Sequence, TextIO

from domain import BUILT_IN, InvalidResource
from infrastructure import DEFAULT_STORE_URL, BadStoreURL, EventRecord, Found
from infrastructure.queries import StoreSummary
from infrastructure.records import SubscriptionRow
from infrastructure.store_url import redact_url

from .bootstrap import open_compositor
from .command_error import (EXIT_DIFFERENT, EXIT_NOT_FOUND, EXIT_STORE, EXIT_USAGE,
                            CommandError)
from .serve_cli import add_serve_commands


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus a message; operators asked for one clear line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=os.environ.get("ESC_STORE", DEFAULT_STORE_URL),
                        help="store URL (default: $ESC_STORE or %(default)s)")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="esc", description="SIP Event State Compositor (RFC 3903)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = commands.add_parser("find", help="show the live publication an entity-tag names")
    p.add_argument("aor"), p.add_argument("etag"), p.add_argument("--event")
    add_store(p), add_json(p)

    p = commands.add_parser("list", help="list live publications")
    p.add_argument("aor", nargs="?"), p.add_argument("--event")
    add_store(p), add_json(p)

    p = commands.add_parser("history", help="the audit trail of a resource, one line per event")
    p.add_argument("aor"), p.add_argument("--event")
    add_store(p), add_json(p)

    p = commands.add_parser("watchers", help="subscriptions to a resource (or to all), "
                                             "one line each")
    p.add_argument("aor", nargs="?"), p.add_argument("--event")
    p.add_argument("--all", action="store_true",
                   help="ended and expired subscriptions too")
    add_store(p), add_json(p)

    p = commands.add_parser("state", help="the composed state of a resource, now or at a "
                                          "past moment (replayed from its events)")
    p.add_argument("aor"), p.add_argument("--event", required=True)
    p.add_argument("--at", metavar="TIME",
                   help="epoch seconds or ISO 8601 (UTC when no offset is given)")
    add_store(p), add_json(p)

    p = commands.add_parser("follow", help="the change feed as JSON lines")
    p.add_argument("--after", type=int, default=0, help="start after this position")
    p.add_argument("--forever", action="store_true", help="keep waiting for new events")
    p.add_argument("--consumer", help="track and resume this consumer's position")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between polls (--forever)")
    # Its output is always JSON lines; --json is accepted like every other command's.
    add_store(p), add_json(p)

    p = commands.add_parser("verify", help="replay the events and compare with the live view")
    p.add_argument("--rebuild", action="store_true",
                   help="instead, forget the live view and rebuild it from the events")
    add_store(p), add_json(p)

    p = commands.add_parser("stats", help="the store in numbers: live publications and "
                                          "subscriptions, events, positions, size")
    add_store(p), add_json(p)

    p = commands.add_parser("clear", help="delete every publication, event and view row")
    add_store(p)

    p = commands.add_parser("migrate", help="create the store's schema (safe to repeat and "
                                            "to run from several nodes at once)")
    p.add_argument("--create-database", action="store_true",
                   help="postgresql: create the database first if it does not exist")
    add_store(p)

    add_serve_commands(commands)  # the SIP side registers its own commands
    return parser


def found_json(found: Found) -> dict[str, Any]:
    data = {"aor": found.aor, "event": found.event, "etag": found.etag,
            "content_type": found.content_type, "expires_at": found.expires_at,
            "id": found.id, "version": found.version}
    try:
        data["body"] = found.body.decode("utf-8")
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(found.body).decode()
    return data


def found_line(found: Found) -> str:
    return (f"{found.aor}  {found.event}  {found.etag}  {found.content_type}  "
            f"expires {iso(found.expires_at)}  ({len(found.body)} bytes)")


def history_line(r: EventRecord) -> str:
    parts = [iso(r.at), f"{r.type:<9}", r.event or "-"]
    if r.type in ("Published", "Refreshed", "Modified"):
        parts.append(f"etag {r.etag_before or '-'} -> {r.etag}")
        parts.append(f"expires {iso(r.expires_at)}")
    else:
        parts.append(f"etag {r.etag_before}")
    if r.body is not None:
        parts.append(f"{r.content_type} {len(r.body)} bytes")
    elif r.body_sha256:
        parts.append(f"body sha256 {r.body_sha256[:16]}")
    if r.user_agent_source:  # sent by a trusted proxy for the user agent behind it
        parts.append(f"via proxy {r.source or '?'} for {r.user_agent_source} "
                     f"({r.transport or '?'})")
    elif r.source or r.transport:
        parts.append(f"from {r.transport or '?'}:{r.source or '?'}")
    if r.identity:
        parts.append(f"user {r.identity}")
    if r.call_id:
        parts.append(f"call-id {r.call_id} cseq {r.cseq}")
    return "  ".join(parts)


def watcher_line(row: SubscriptionRow, now: float) -> str:
    host = f"[{row.host}]" if ":" in row.host else row.host  # an IPv6 literal
    if row.state != "active":
        status = f"ended {iso(row.terminated_at)} ({row.reason or '-'})"
    elif row.expires_at > now:
        status = f"expires in {math.ceil(row.expires_at - now)} s"
    else:
        status = f"lapsed {math.floor(now - row.expires_at)} s ago"
    return "  ".join([row.aor, row.event, row.watcher_uri, f"{row.transport} {host}:{row.port}",
                      row.state, status, f"user {row.identity or '-'}"])


def cmd_find(args, out) -> int:
    with opened(args) as compositor:
        found = compositor.find(args.aor, args.etag, args.event)
    if found is None:
        print("not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    out(json.dumps(found_json(found)) if args.json else found_line(found))
    return 0


def cmd_list(args, out) -> int:
    with opened(args) as compositor:
        rows = compositor.list(args.aor, args.event)
    if args.json:
        out(json.dumps([found_json(r) for r in rows]))
    else:
        for row in rows:
            out(found_line(row))
    return 0


def cmd_history(args, out) -> int:
    with opened(args) as compositor:
        records = compositor.history(args.aor, args.event)
    for record in records:
        out(json.dumps(record.as_json()) if args.json else history_line(record))
    if not records and not args.json:
        print(f"no history for {args.aor}", file=sys.stderr)
    return 0


def cmd_watchers(args, out) -> int:
    if args.event is not None and not args.event.split(";", 1)[0].strip():
        raise CommandError("--event needs an event package name")
    with opened(args) as compositor:
        now = compositor.now()
        rows = compositor.watchers(args.aor, args.event, include_ended=args.all, now=now)
    if args.json:
        out(json.dumps([row.as_json() for row in rows]))
    else:
        for row in rows:
            out(watcher_line(row, now))
    return 0


def parse_time(text: str) -> float:
    """Epoch seconds (`1764480000.5`) or ISO 8601 (`2026-11-30T14:03:00+01:00`; without an
    offset, UTC) -> epoch seconds. Raises CommandError (exit 2) for anything else."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise CommandError(f"--at {text!r} is neither epoch seconds nor an ISO 8601 "
                               f"time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise CommandError(f"--at {text!r} is not a time after 1970")
    return seconds


def cmd_state(args, out) -> int:
    at = None if args.at is None else parse_time(args.at)
    name = args.event.split(";", 1)[0].strip().lower()
    if not name:
        raise CommandError("--event needs an event package name")
    # Read whatever the store holds: a package the server was configured with but this
    # command does not know is composed as any other (the newest body).
    with opened(args, events=[*BUILT_IN, name]) as compositor:
        state = compositor.state(args.aor, name, at)
    if args.json:
        data: dict[str, Any] = {"aor": state.aor, "event": state.event, "at": state.at,
                                "content_type": state.content_type}
        try:
            data["body"] = state.body.decode("utf-8")
        except UnicodeDecodeError:
            data["body_base64"] = base64.b64encode(state.body).decode()
        data["publications"] = list(state.publications)
        out(json.dumps(data))
    elif not state.body:
        print(f"nothing published for {state.aor} ({state.event}) at {iso(state.at)}",
              file=sys.stderr)
    else:
        try:
            out(state.body.decode("utf-8"))
        except UnicodeDecodeError:
            sys.stdout.flush()
            sys.stdout.buffer.write(state.body)
    return 0


def cmd_follow(args, out) -> int:
    if args.after < 0:
        raise CommandError("--after must be 0 or more")
    with opened(args) as compositor:
        consumer = compositor.consumer(args.consumer) if args.consumer else None
        position = consumer.position if consumer and args.after == 0 else args.after
        while True:
            for record in compositor.feed(after=position):
                out(json.dumps(record.as_json()))
                position = record.position or position
                if consumer is not None:
                    consumer.commit(position)
            if not args.forever:
                return 0
            sys.stdout.flush()
            time.sleep(args.poll)


@contextmanager
def progress_bar(label: str, total: int, stream: TextIO | None = None
                 ) -> Iterator[Callable[[int], None] | None]:
    """A progress callback for a replay up to position `total` (the feed's head): a tqdm
    bar with rate and ETA on `stream` (standard error) when it is a terminal; None, and
    nothing printed, otherwise or when there is nothing to replay."""
    stream = sys.stderr if stream is None else stream
    if total <= 0 or not is_terminal(stream):
        yield None
        return
    from tqdm import tqdm  # only here: no other command pays for the import

    bar = tqdm(total=total, desc=label, unit=" events", file=stream,
               dynamic_ncols=True, mininterval=0.25, smoothing=0.1)

    def advance(position: int) -> None:
        if position > bar.total:  # another node wrote meanwhile
            bar.total = position
        bar.update(position - bar.n)

    try:
        yield advance
    finally:
        bar.close()


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def cmd_verify(args, out) -> int:
    if args.rebuild:
        return rebuild_view(args, out)
    with opened(args) as compositor:
        with progress_bar("verify", compositor.head()) as progress:
            live, replayed, differences = compositor.projection.verify(progress)
    if args.json:
        out(json.dumps({"live": live, "replayed": replayed, "differences": differences}))
    else:
        out(f"live view: {live} publications; replayed from events: {replayed}; "
            f"differences: {len(differences)}")
        for difference in differences:
            out(f"  {difference}")
    return EXIT_DIFFERENT if differences else 0


def rebuild_view(args, out) -> int:
    with opened(args) as compositor:
        with progress_bar("rebuild view", compositor.head()) as progress:
            replayed = compositor.projection.rebuild(progress)
        live = compositor.view.count()
    if args.json:
        out(json.dumps({"rebuilt": replayed, "live": live}))
    else:
        out(f"view rebuilt from {replayed} events: {live} publications")
    return 0


def cmd_stats(args, out) -> int:
    with opened(args) as compositor:
        stats = compositor.stats()
    if args.json:
        out(json.dumps(stats.as_json()))
    else:
        for line in stats_lines(stats, redact_url(args.store)):
            out(line)
    return 0


def megabytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 1_000_000:.2f} MB"


def behind(head: int, position: int) -> str:
    return "caught up" if position >= head else f"{head - position} behind"


def stats_lines(stats: StoreSummary, store: str) -> list[str]:
    """`esc stats` as text: one fact per line."""
    lines = [f"store: {store}",
             f"events: {stats.events}",
             f"feed head: {stats.head}",
             f"view position: {stats.view_position} "
             f"({behind(stats.head, stats.view_position)})"]
    lines += [f"consumer {name}: {position} ({behind(stats.head, position)})"
              for name, position in stats.consumers.items()]
    lines.append(f"live publications: {stats.live}")
    lines += [f"  {event}: {count}" for event, count in stats.publications.items()]
    lines.append(f"lapsed publications (expiry not yet recorded): {stats.lapsed}")
    lines.append(f"active subscriptions: {stats.active_subscriptions}")
    lines += [f"  {event}: {count}" for event, count in stats.subscriptions.items()]
    if stats.next_expiry is None:
        lines.append("next expiry: - (nothing live)")
    else:
        lines.append(f"next expiry: {iso(stats.next_expiry)} "
                     f"(in {math.ceil(stats.next_expiry - stats.at)} s)")
    if stats.size_bytes is None:
        lines.append("size on disk: - (in memory)")
    else:
        lines.append(f"size on disk: {megabytes(stats.size_bytes)} (event store "
                     f"{megabytes(stats.store_bytes)}, view {megabytes(stats.view_bytes)})")
    return lines


def cmd_clear(args, out) -> int:
    with opened(args) as compositor:
        count = len(compositor.list())
        compositor.clear()
    out(f"cleared ({count} live publications removed, history deleted)")
    return 0


def cmd_migrate(args, out) -> int:
    from infrastructure import parse_store_url

    try:
        kind = parse_store_url(args.store).kind
    except BadStoreURL as error:
        raise CommandError(str(error)) from None
    if kind != "postgresql":
        if args.create_database:
            raise CommandError("--create-database is for postgresql stores")
        with opened(args):  # embedded stores create their schema on open
            pass
        out(f"schema ready: {redact_url(args.store)}")
        return 0
    from infrastructure.postgres import migrate

    try:
        tables = migrate(args.store, create_database=args.create_database)
    except Exception as error:
        raise CommandError(f"cannot migrate {redact_url(args.store)}: {one_line(error)}",
                           EXIT_STORE) from None
    out(f"schema ready: {', '.join(tables)}")
    return 0


class opened:
    """Open the store for one command; any failure becomes one line and exit 3."""

    def __init__(self, args, **options: Any) -> None:
        self.args = args
        self.options = options
        self.compositor = None

    def __enter__(self):
        try:
            self.compositor = open_compositor(self.args.store, create_schema=True,
                                              **self.options)
        except BadStoreURL as error:
            raise CommandError(str(error)) from None
        except Exception as error:
            raise CommandError(f"cannot open store {redact_url(self.args.store)}: "
                               f"{one_line(error)}",
                               EXIT_STORE) from None
        return self.compositor

    def __exit__(self, *exc) -> None:
        if self.compositor is not None:
            self.compositor.close()


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


COMMANDS: dict[str, Callable[..., int]] = {
    "find": cmd_find, "list": cmd_list, "history": cmd_history, "state": cmd_state,
    "watchers": cmd_watchers, "follow": cmd_follow,
    "verify": cmd_verify, "stats": cmd_stats, "clear": cmd_clear, "migrate": cmd_migrate,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = lambda line: print(line, flush=False)  # noqa: E731
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    try:
        return handler(args, out)
    except CommandError as error:
        print(f"esc {args.command}: {error}", file=sys.stderr)
        return error.code
    except InvalidResource as error:  # a bad AOR argument is a usage error, not the store's
        print(f"esc {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # last resort: still one line, never a traceback
        print(f"esc {args.command}: {type(error).__name__}: {one_line(error)}", file=sys.stderr)
        return EXIT_STORE


if __name__ == "__main__":
    sys.exit(main())
