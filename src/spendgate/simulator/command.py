"""`spendgate simulate`: run the provider simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from spendgate.simulator.settings import DEFAULT_RANDOM_FAULTS, FAULT_KINDS, SimulatorSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on; 0 picks a free one (default 8090)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before the first byte of every answer")
    parser.add_argument("--tokens-per-second", type=float, default=0.0, help="pace streamed output; 0 = as fast as possible")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests (0..1) that get a random fault")
    parser.add_argument(
        "--faults",
        default=",".join(DEFAULT_RANDOM_FAULTS),
        help=f"fault kinds drawn at --fault-rate, comma-separated from {','.join(FAULT_KINDS)} (default: all but timeout)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random fault draw")
    parser.add_argument("--no-auth", action="store_true", help="accept requests that present no API key")


def settings_from(args: argparse.Namespace) -> SimulatorSettings:
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    return SimulatorSettings(
        latency_ms=args.latency_ms,
        tokens_per_second=args.tokens_per_second,
        fault_rate=args.fault_rate,
        fault_kinds=kinds,
        seed=args.seed,
        require_auth=not args.no_auth,
    )


async def serve(host: str, port: int, settings: SimulatorSettings) -> None:
    from spendgate.simulator.app import start_simulator

    sim = await start_simulator(host, port, settings=settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            pass
    print(f"spendgate simulator listening on {sim.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"spendgate simulate: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - optional speed-up
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(serve(args.host, args.port, settings))
        except OSError as exc:
            print(f"spendgate simulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
    return 0
