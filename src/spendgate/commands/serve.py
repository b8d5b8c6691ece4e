"""`spendgate serve`: run the gateway under uvicorn (uvloop + httptools)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

import uvicorn

from spendgate.config import load_config

log = logging.getLogger("spendgate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="config file (YAML); without it, the embedded default")
    parser.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default from config: 4000)")
    parser.add_argument("--log-level", help="debug | info | warning | error")


def run(args: argparse.Namespace) -> int:
    from spendgate.app import Gateway

    try:
        config, is_default = load_config(args.config)
    except (OSError, ValueError) as exc:
        print(f"spendgate: cannot load config: {exc}", file=sys.stderr)
        return 2
    level = (args.log_level or config.server.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if is_default:
        log.warning(
            "no --config given: using the embedded default (built-in simulator as the only upstream, "
            "ledger %s). Pass --config FILE for real providers.",
            config.ledger.url,
        )
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    log.info("spendgate listening on http://%s:%d (OpenAI base_url http://%s:%d/v1)", host, port, host, port)
    server_config = uvicorn.Config(
        Gateway(config),
        host=host,
        port=port,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level=level.lower(),
        timeout_graceful_shutdown=int(config.server.graceful_timeout_s),
        timeout_keep_alive=75,
        server_header=False,
        date_header=False,
    )
    GracefulServer(server_config).run()
    return 0


class GracefulServer(uvicorn.Server):
    """SIGTERM is how orchestrators stop a gateway: after draining and flushing,
    exit 0 instead of re-raising the signal as uvicorn does."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and captured[-1] == sig:
            captured.pop()


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
