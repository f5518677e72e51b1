"""The command line: serve, load, demo, keys, convert-kuairand, evaluate, simulate, retention run,
audit verify. Each command parses, calls, and reports."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from foryou.config import Settings, load_settings
from foryou.datadir import exclusive, model_lock, private_dir, write_private
from foryou.errors import ForYouError
from foryou.evaluation import MODELS
from foryou.privacy.keys import SCOPES, KeyRing

ADMIN_KEY_ENV = "FORYOU_ADMIN_KEY"

DEMO_DIR = Path(__file__).parent / "demo_data"


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, overrides={
        "server.data": getattr(args, "data", None), "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None), "server.regions": getattr(args, "regions", None),
    })


def _server_args(p: argparse.ArgumentParser, serving: bool = True) -> None:
    p.add_argument("--data", help="data directory (default ./foryou-data)")
    p.add_argument("--regions", help="comma-separated region codes held here; the first is the default")
    p.add_argument("--config", help="TOML settings file (see docs/configuration.md)")
    if serving:
        p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 8000)")


def _keyring(settings: Settings) -> KeyRing:
    return KeyRing(Path(settings.server.data), os.environ.get(ADMIN_KEY_ENV) or None)


def _serve(settings: Settings, keys: KeyRing, banner: Callable[[], list[str]] = list,
           config: str | None = None) -> None:
    """Serve; `banner` gives the lines to print once the engine is open (a key made before a start-up
    that fails would never be shown, yet would stop the next start from making one)."""
    from foryou.engine import Engine
    from foryou.http import create_app, server
    from foryou.roles import TrainerProcess

    started = time.perf_counter()
    learning = settings.learning
    role = "serve" if learning.enabled and learning.trainer != "inline" else "all"
    # the model learns the log's tail beside the first requests (in a trainer process, or inline)
    engine = Engine.open(settings, catch_up=False, role=role)
    trainer = None
    if role == "serve" and learning.trainer == "process":
        trainer = TrainerProcess(["--data", settings.server.data, "--regions", ",".join(settings.server.regions),
                                  *(["--config", config] if config else [])])
        trainer.start()
        engine.trainer = trainer
    took = time.perf_counter() - started
    host, port = settings.server.host, settings.server.port
    print(f"ForYou: {len(engine.live.catalog)} items loaded from {settings.server.data} in {took:.1f}s; "
          f"regions {','.join(settings.server.regions)}", flush=True)
    for line in banner():
        print(line, flush=True)
    print(f"Serving on http://{host}:{port} - interactive API docs: http://{host}:{port}/docs", flush=True)
    try:
        server.run(create_app(engine, keys), settings)
    finally:
        if trainer is not None:
            trainer.stop()
        engine.close()
        keys.close()


def _hand_over(token: str, key_id: str, settings: Settings, path: str | None = None) -> str | None:
    """Where a new key goes: the terminal, when stdout is one; else (a service's log, a pipe) a new
    0600 file, `path` or DATA/key-<id>.txt, whose path is returned. Never into a log."""
    if path is None and sys.stdout.isatty():
        return None
    out = Path(path) if path is not None else private_dir(Path(settings.server.data)) / f"key-{key_id}.txt"
    write_private(out, (token + "\n").encode(), exclusive=path is None)
    return str(out)


def _new_key_lines(keys: KeyRing, settings: Settings, name: str) -> tuple[list[str], str]:
    """Create an admin key and say it once (or where it was written); audited like any key made with
    `foryou keys create`. Returns the lines and how a shell command gets the key."""
    from foryou.privacy import open_audit

    key, token = keys.create(name, ["admin"], time.time())
    open_audit(settings).append("key_create", None, "ok", time.time(), target=key.id)
    written = _hand_over(token, key.id, settings)
    said = (f"Admin API key (shown only now; stored as a salted hash): {token}" if written is None else
            f"Admin API key written to {written} (mode 0600; kept nowhere else): read it, then delete the file")
    lines = [said, "  send 'Authorization: Bearer <key>' with every request; manage keys with 'foryou keys'"]
    return lines, token if written is None else f"$(cat {written})"


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    keys = _keyring(settings)

    def banner() -> list[str]:
        return [] if keys.any_active(time.time()) else _new_key_lines(keys, settings, "admin")[0]

    with exclusive(settings.server.data, "serving it", model=settings.learning.trainer == "inline"):
        _serve(settings, keys, banner, args.config)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """The train role alone: one per data directory (its own lock; a server's child takes it too)."""
    from foryou.roles import Trainer
    from foryou.roles.train import run_behind

    settings = _settings(args)
    if not settings.learning.enabled:
        print("learning is off (learning.enabled = false): nothing to train")
        return 0
    with model_lock(settings.server.data, "starting another"):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        parent = args.parent
        run_behind(settings.learning.trainer_nice)

        def stopping() -> bool:  # asked to, or the server that started it is gone
            return stop.is_set() or (parent is not None and os.getppid() != parent)

        started = time.perf_counter()
        trainer = Trainer.open(settings)
        print(f"ForYou trainer: model version {trainer.learner.version}, opened in "
              f"{time.perf_counter() - started:.1f}s; publishing every {settings.learning.publish_interval_s:g}s",
              flush=True)
        trainer.run(stopping)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from foryou.bulk import load_files
    from foryou.engine import Engine

    if args.items is None and args.events is None:
        raise ForYouError("give --items and/or --events", field="args")
    started = time.perf_counter()
    settings = _settings(args)
    # With a trainer process (the default), the loader does not train: the trainer learns what was
    # loaded once it runs (`foryou_model_events_behind` says how far it has to go).
    inline = settings.learning.trainer == "inline" or not settings.learning.enabled
    role = "all" if inline else "load"
    with exclusive(settings.server.data, "loading into it"), Engine.open(settings, role=role) as engine:
        report = load_files(engine, args.items and Path(args.items), args.events and Path(args.events),
                            progress=not args.quiet)
        behind = engine.learner.gauges()["model_events_behind"] if not inline else 0
    took = time.perf_counter() - started
    print(f"loaded {report.items} items, {report.events} events ({report.duplicates} duplicates) "
          f"in {took:.1f}s" + (f"; the trainer has {behind:.0f} events to learn when it runs" if behind else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from foryou.bulk import load_files
    from foryou.engine import Engine
    from foryou.privacy import open_audit

    settings = _settings(args)
    keys = _keyring(settings)

    def banner() -> list[str]:
        now = time.time()
        for old in keys.list():  # a fresh demo key each start; the last one stops working
            if old.name == "demo" and old.active(now):
                keys.revoke(old.id, now)
                open_audit(settings).append("key_revoke", None, "ok", now, target=old.id)
        lines, token = _new_key_lines(keys, settings, "demo")
        base = f"http://{settings.server.host}:{settings.server.port}"
        return [*lines, f'Try: curl -H "Authorization: Bearer {token}" \'{base}/v1/users/{some_user}/feed?n=5\'']

    inline = settings.learning.trainer == "inline"
    with exclusive(settings.server.data, "serving it", model=inline):
        with contextlib.nullcontext() if inline else model_lock(settings.server.data, "loading the demo"), \
                Engine.open(settings) as engine:
            if len(engine.live.catalog) == 0:
                print("Loading the bundled demo catalogue (KuaiRand-Pure sample, CC BY-SA 4.0)...", flush=True)
                load_files(engine, DEMO_DIR / "items.jsonl.gz", DEMO_DIR / "events.jsonl.gz", progress=True)
            some_user = "u0" if engine.live.store.find_user_region("u0") else "demo-user"
        _serve(settings, keys, banner, args.config)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from foryou.privacy import open_audit

    settings = _settings(args)
    keys = _keyring(settings)
    now = time.time()
    try:
        if args.keys_command == "list":
            for key in keys.list():
                state = "active" if key.active(now) else "revoked"
                if key.active(now) and key.expires_at is not None:
                    state = f"expires in {key.expires_at - now:.0f}s"
                print(f"{key.id}  {key.name:<16} {','.join(key.scopes):<24} {key.region or 'all regions':<12} {state}")
            return 0
        audit = open_audit(settings)
        if args.keys_command == "revoke":
            if not keys.get(args.id).active(now):
                print(f"{args.id} was already revoked")
                return 0
            key = keys.revoke(args.id, now)
            audit.append("key_revoke", None, "ok", now, target=key.id)
            print(f"revoked {key.id} ({key.name})")
            return 0
        if args.keys_command == "create":
            region = args.region
            if region is not None and region not in settings.server.regions:
                raise ForYouError(f"region {region!r} is not held here (server.regions: "
                                  f"{', '.join(settings.server.regions)})", field="--region")
            key, token = keys.create(args.name, [s.strip() for s in args.scopes.split(",")], now, region)
        else:
            key, token = keys.rotate(args.id, now, args.grace_s)
            print(f"{args.id} stops working in {args.grace_s:g}s", file=sys.stderr)
        audit.append(f"key_{args.keys_command}", None, "ok", now, target=key.id)
        written = _hand_over(token, key.id, settings, args.key_file)
        where = "shown only now" if written is None else "written to this 0600 file, kept nowhere else"
        print(f"{key.id}: {','.join(key.scopes)} for {key.region or 'all regions'} ({where}):", file=sys.stderr)
        print(token if written is None else written)
        return 0
    finally:
        keys.close()


def cmd_convert(args: argparse.Namespace) -> int:
    from foryou.kuairand import convert

    items, events = convert(Path(args.src), Path(args.out), args.max_rows)
    print(f"wrote {items} items and {events} events to {args.out}/items.jsonl, events.jsonl")
    return 0


def _time_arg(value: str | None, flag: str) -> float | None:
    from foryou.types import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ForYouError(f"{flag}: {exc}", field=flag) from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from foryou.evaluation.baselines import require_eval_extra

    require_eval_extra()
    from foryou.evaluation import dataset, harness, report

    test_from = _time_arg(args.test_from, "--test-from")
    valid_from = _time_arg(args.valid_from, "--valid-from")
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ForYouError(f"unknown model(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(MODELS)}",
                          field="--models")
    assert test_from is not None
    started = time.perf_counter()
    data = dataset.load(Path(args.items), Path(args.events))
    took = time.perf_counter() - started
    entries = harness.default_entries(names, load_settings(args.config), args.seed)
    outcome = harness.evaluate(data, test_from, entries, valid_from, progress=not args.quiet)
    outcome.seconds["reading"] = took
    zone = report.zone_of(args.test_from)
    if args.plots is not None:
        for path in report.plots(outcome, Path(args.plots), zone):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(report.as_json(outcome, zone), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(report.text(outcome, zone))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from foryou import simulation
    from foryou.simulation import report

    settings = load_settings(args.config, overrides={"learning.enabled": args.learning})
    started = time.perf_counter()
    result = simulation.simulate(
        users=args.users, views=args.views, items=args.items, new_items=args.new_items, seed=args.seed, page=args.n,
        arms=args.arms.split(","), drift=args.drift, skew=args.skew, onboarding=args.onboarding,
        target_share=args.target_share,
        pool_impressions=args.pool_impressions, settings=settings, data=args.data and Path(args.data),
        url=args.url, api_key=args.api_key,
        progress=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True))
    if args.plots is not None:
        from foryou.simulation import plots

        for path in plots.write(result.world, result.runs, args.views, Path(args.plots), args.target_share):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(result.report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(report.text(result.report))
    if not args.quiet:
        print(f"took {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def cmd_retention_run(args: argparse.Namespace) -> int:
    from foryou.engine import Engine

    settings = _settings(args)
    if settings.privacy.retention_days <= 0:
        print("retention is off (privacy.retention_days = 0): nothing deleted")
        return 0
    with exclusive(settings.server.data, "running retention on it"), Engine.open(settings) as engine:
        deleted = engine.retention.run()
    print(f"deleted {sum(deleted.values())} events older than {settings.privacy.retention_days:g} days "
          f"({', '.join(f'{r}: {n}' for r, n in deleted.items())})")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from foryou.engine import Engine
    from foryou.privacy import open_audit

    settings = _settings(args)
    if not settings.learning.enabled:
        raise ForYouError("learning is off (learning.enabled = false): there is no model to retrain",
                          field="learning.enabled")
    started = time.perf_counter()
    with exclusive(settings.server.data, "retraining"), Engine.relearn(settings) as engine:
        gauges = engine.learner.gauges()
    open_audit(settings).append("retrain", None, "ok", time.time())
    print(f"retrained from the log: {gauges['model_examples']:.0f} examples, {gauges['model_rows']:.0f} rows, "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from foryou.privacy import verify

    data = Path(args.data or _settings(args).server.data)
    verdict = verify(data, args.anchor)
    if verdict.problem is not None:
        print(f"audit log in {data}: BROKEN: {verdict.problem}", file=sys.stderr)
        return 1
    files = f" in {verdict.files} files" if verdict.files > 1 else ""  # segments: a rotated log
    print(f"audit log in {data}: intact, {verdict.records} records{files}; head {verdict.head}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foryou", description="ForYou: a real-time For You feed engine.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the HTTP API")
    _server_args(s)
    s.set_defaults(run=cmd_serve)
    s = sub.add_parser("train", help="run the trainer alone (serve starts one itself unless learning.trainer says not)")
    _server_args(s, serving=False)
    s.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # the server that started it: stop when it is gone
    s.set_defaults(run=cmd_train)
    s = sub.add_parser("load", help="bulk-import JSON Lines files of items and events")
    _server_args(s, serving=False)
    s.add_argument("--items", help="items.jsonl (or .jsonl.gz)")
    s.add_argument("--events", help="events.jsonl (or .jsonl.gz)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_load)
    s = sub.add_parser("demo", help="load the bundled demo catalogue (once) and serve it")
    _server_args(s)
    s.set_defaults(run=cmd_demo)
    s = sub.add_parser("keys", help="create, list, revoke and rotate API keys (stored as salted hashes)")
    keys = s.add_subparsers(dest="keys_command", required=True)
    key_file = ("write the key to this new 0600 file and print its path (the default when stdout is not "
                "a terminal: DATA/key-<id>.txt)")
    s = keys.add_parser("create", help="a new key, shown once on a terminal (else written to a 0600 file)")
    s.add_argument("--name", required=True, help="what the key is for (shown by 'list')")
    s.add_argument("--scopes", required=True, help=f"comma-separated, of {','.join(SCOPES)}")
    s.add_argument("--region", help="limit the key to the users of one region (default: all held here)")
    s.add_argument("--key-file", metavar="PATH", help=key_file)
    _server_args(s, serving=False)
    s.set_defaults(run=cmd_keys)
    s = keys.add_parser("list", help="every key: id, name, scopes, region, state (never the secret)")
    _server_args(s, serving=False)
    s.set_defaults(run=cmd_keys)
    s = keys.add_parser("revoke", help="stop a key working, at once (also on a running server)")
    s.add_argument("id", help="the key's id (from 'list')")
    _server_args(s, serving=False)
    s.set_defaults(run=cmd_keys)
    s = keys.add_parser("rotate", help="a new key with the same name, scopes and region; the old one is revoked")
    s.add_argument("id", help="the key's id (from 'list')")
    s.add_argument("--grace-s", type=float, default=0.0, metavar="S",
                   help="keep the old key working S more seconds while clients move over (default 0)")
    s.add_argument("--key-file", metavar="PATH", help=key_file)
    _server_args(s, serving=False)
    s.set_defaults(run=cmd_keys)
    s = sub.add_parser("convert-kuairand", help="convert KuaiRand-Pure CSVs into items/events JSONL")
    s.add_argument("--src", required=True, help="folder holding the KuaiRand-Pure files")
    s.add_argument("--out", required=True, help="folder to write items.jsonl and events.jsonl into")
    s.add_argument("--max-rows", type=int, help="keep only the first N log rows (by time)")
    s.set_defaults(run=cmd_convert)
    s = sub.add_parser("evaluate", help="grade the engine's ranking and baselines on a dataset (needs the eval extra)")
    s.add_argument("--items", required=True, help="items.jsonl (or .jsonl.gz)")
    s.add_argument("--events", required=True, help="events.jsonl (or .jsonl.gz); every event needs ts")
    s.add_argument("--test-from", required=True, metavar="TIMESTAMP",
                   help="RFC 3339 time: events before it train, events from it on test")
    s.add_argument("--valid-from", metavar="TIMESTAMP",
                   help="start of the validation split used for tuning (default: the last 15%% of training)")
    s.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    s.add_argument("--config", help="TOML settings of the engine under test (see docs/configuration.md)")
    s.add_argument("--seed", type=int, default=0, help="seed of the engine and of ALS (default 0)")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of tables")
    s.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_evaluate)
    s = sub.add_parser("simulate", help="drive the engine with simulated users and report how its feed does")
    s.add_argument("--users", type=int, default=100, help="simulated users (default 100)")
    s.add_argument("--views", type=int, default=200, help="videos each user watches (default 200)")
    s.add_argument("--items", type=int, default=6000, help="videos in the catalogue at the start (default 6000)")
    s.add_argument("--new-items", type=int, default=20,
                   help="videos uploaded during the run, half good and half bad (default 20)")
    s.add_argument("--seed", type=int, default=0, help="seed of the world, the users and the engine (default 0)")
    s.add_argument("--n", type=int, default=10, help="videos per feed page (default 10)")
    s.add_argument("--arms", default="foryou,popularity,random",
                   help="comma-separated feeds to compare (default foryou,popularity,random)")
    s.add_argument("--drift", action="store_true", help="each user's interest moves to another topic mid-run")
    s.add_argument("--skew", type=float, default=0.0, metavar="S",
                   help="interest topics drawn with probability ~ 1/rank^S (default 0: uniform; 1: Zipf)")
    s.add_argument("--onboarding", action="store_true", help="users declare their interests when they arrive")
    s.add_argument("--target-share", type=float, default=0.6,
                   help="on-interest share of the trailing 20 views to count views until (default 0.6)")
    s.add_argument("--pool-impressions", type=int,
                   help="N of 'time to a new video's N-th impression' (default 300, scaled down for small runs)")
    s.add_argument("--learning", action=argparse.BooleanOptionalAction,
                   help="the engine's learned model on or off (default: the settings')")
    s.add_argument("--config", help="TOML settings of the engine under test (see docs/configuration.md)")
    s.add_argument("--data", help="keep each arm's data directory under DATA/<arm> (default: temporary)")
    s.add_argument("--url", help="drive the foryou arm through a running server at URL instead")
    s.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' with --url")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    s.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s.set_defaults(run=cmd_simulate)
    s = sub.add_parser("retention", help="delete raw events past privacy.retention_days")
    retention = s.add_subparsers(dest="retention_command", required=True)
    s = retention.add_parser("run", help="delete them now (derived state is checkpointed first)")
    _server_args(s, serving=False)
    s.set_defaults(run=cmd_retention_run)
    s = sub.add_parser("retrain", help="drop the learned model and learn it again from the log as it is now")
    _server_args(s, serving=False)
    s.set_defaults(run=cmd_retrain)
    s = sub.add_parser("audit", help="check the tamper-evident audit log")
    audit = s.add_subparsers(dest="audit_command", required=True)
    s = audit.add_parser("verify", help="walk the hash chain; exit 1 naming the first bad record")
    s.add_argument("--data", help="data directory (default ./foryou-data)")
    s.add_argument("--config", help="TOML settings file (see docs/configuration.md)")
    s.add_argument("--anchor", metavar="SEQ:HASH",
                   help="a head printed by an earlier verify and kept elsewhere: the log must still hold it")
    s.set_defaults(run=cmd_audit_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args: Any = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ForYouError as exc:
        for e in exc.errors:
            print(f"error: {e.field + ': ' if e.field and e.field not in e.message else ''}{e.message}",
                  file=sys.stderr)
        return 2
    except (OSError, sqlite3.DatabaseError) as exc:  # a file missing or unreadable, a damaged database
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
