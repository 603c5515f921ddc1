"""Command line: `serve` (the daemon), `demo` (a real log replayed live), `diagnose` (an offline report).

Argument parsing and the commands only; the daemon's wiring is exporter/daemon.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from exporter import __version__, config
from exporter.daemon import Reload, serve
from exporter.identity import SourceRule

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _install_signals(stop: threading.Event, reload: threading.Event) -> None:
    """TERM and INT stop (with a final checkpoint); HUP reloads the configuration, as Prometheus does."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def hup(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, hup)


def _config_from_args(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config) if args.config else config.Config()
    changes: dict[str, object] = {}
    if args.paths:
        changes["sources"] = tuple(SourceRule(p) for p in args.paths)
    if args.listen:
        config.parse_listen(args.listen, "--listen")
        changes["listen"] = args.listen
    if args.start_at:
        changes["start_at"] = args.start_at
    if args.poll:
        changes["poll"] = True
    if args.poll_interval:
        changes["poll_interval"] = args.poll_interval
    if args.checkpoint_file:
        changes["checkpoint_file"] = args.checkpoint_file
    if args.shard is not None:
        changes["shard"] = config.parse_shard(args.shard, "--shard")
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def setup_logging(level: str) -> None:
    """Every module logs under `caffe_exporter.<module>`, so --log-level sets that one logger; libraries speak
    at WARNING and above (watchfiles logs every change set at INFO)."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("caffe_exporter").setLevel(level.upper())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caffe-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"caffe-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="tail Caffe logs and serve /metrics")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="log files, globs or directories ('-' = standard input); default: the config's sources, "
                        "else the current directory")
    p.add_argument("--config", help="YAML configuration file (docs/configuration.md)")
    p.add_argument("--listen", help=f"HOST:PORT to serve on (default {config.DEFAULT_LISTEN})")
    p.add_argument("--start-at", choices=["beginning", "end"], help="read existing files from the beginning "
                   "(default) or only what is appended from now on")
    p.add_argument("--poll", action="store_true", help="poll with stat() instead of inotify (network filesystems)")
    p.add_argument("--poll-interval", type=float, help="seconds between polls (default 1)")
    p.add_argument("--checkpoint-file", help="save offsets and run state here, and continue from it after a restart")
    p.add_argument("--shard", metavar="INDEX/TOTAL", help="export only the runs shard INDEX (0-based) of TOTAL "
                   "exporters over the same files owns, e.g. 0/3 (docs/configuration.md, shard)")
    p.add_argument("--log-level", default="INFO")
    d = sub.add_parser("demo", help="serve metrics from a real Caffe log replayed live (no Caffe needed)")
    d.add_argument("--listen", default="127.0.0.1:10052")
    d.add_argument("--pace", type=float, default=1.0, help="seconds between display iterations (default 1)")
    d.add_argument("--loops", type=int, default=0, help="stop after this many replays (default: forever)")
    d.add_argument("--log-level", default="INFO")
    sub.add_parser("diagnose", help="report anomalies in finished or live logs (see: diagnose --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["diagnose"]:  # its own parser: options may come before or after the paths
        from exporter import diagnose

        return diagnose.main(args_list[1:])
    args = _parser().parse_args(args_list)
    setup_logging(args.log_level)
    stop = threading.Event()
    reload = threading.Event()
    _install_signals(stop, reload)
    if args.command == "demo":
        from exporter import demo

        return demo.run(args.listen, args.pace, args.loops, stop, serve)
    try:
        cfg = _config_from_args(args)
    except config.ConfigError as e:
        print(f"caffe-exporter: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return serve(cfg, stop, Reload(reload, lambda: _config_from_args(args)))
    except OSError as e:
        print(f"caffe-exporter: cannot listen on {cfg.listen}: {e.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
