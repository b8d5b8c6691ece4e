"""`spendgate demo`: the first minute of a new user, in one command.

It writes a config whose upstreams are the built-in simulator, fills the
ledger with 30 days of believable history, starts the real gateway as a
separate process (exactly as `spendgate serve` runs), sends live traffic
through its HTTP API, stops it with SIGTERM so its ledger is flushed, and
prints the report with pointers for what to try next. Nothing leaves
127.0.0.1 and no API key is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from spendgate.config import Config, parse_config

if TYPE_CHECKING:
    from spendgate.demo.traffic import TrafficResult

DEFAULT_DIR = "./spendgate-demo"
CONFIG_NAME = "spendgate.yaml"
LEDGER_NAME = "spendgate.db"
LOG_NAME = "gateway.log"
ADMIN_KEY_NAME = "admin-key"  # the dashboard's and admin API's key, made once per demo dir
HOST = "127.0.0.1"
LEDGER_URL_MARK = "@LEDGER_URL@"
STATE_URL_MARK = "@STATE_URL@"
REPORT_BY = ("team", "model")

# Kept identical to examples/demo.yaml (a test checks it); the wheel carries
# this copy because examples/ is not installed.
DEMO_CONFIG_TEMPLATE = """\
# The config `spendgate demo` runs with (it writes this file into its --dir,
# with the ledger path filled in). Every upstream is the built-in provider
# simulator, so no API key and no network are needed; the model names are real,
# so calls are priced at real list prices.
#
# Run it yourself:  spendgate serve --config examples/demo.yaml
# To use real providers, replace `base_url: simulator` with nothing (the
# provider's default) and add `api_key_env: OPENAI_API_KEY` (or ANTHROPIC_API_KEY).

# First-minute mode: any API key is accepted. Configure `keys:` before sharing.
allow_any_key: true

ledger:
  url: @LEDGER_URL@

# virtual keys, burst grants and open budget reservations, beside the ledger
state:
  url: @STATE_URL@

simulator:
  latency_ms: 20  # a little time to first token, so streams look like streams

deployments:
  - {name: sim-gpt-4o, provider: openai, model: gpt-4o, base_url: simulator}
  - {name: sim-gpt-4o-mini, provider: openai, model: gpt-4o-mini, base_url: simulator}
  - {name: sim-text-embedding-3-small, provider: openai, model: text-embedding-3-small, base_url: simulator}
  - {name: sim-claude-sonnet-4-5, provider: anthropic, model: claude-sonnet-4-5, base_url: simulator}
  - {name: sim-claude-haiku-4-5, provider: anthropic, model: claude-haiku-4-5, base_url: simulator}
  # A self-hosted fine-tune behind an OpenAI-compatible server (vLLM, Ollama...).
  # It has no catalog price on purpose: its calls are recorded with
  # price_status=missing and the report lists it. Give it a price with e.g.
  #   gpu_hour: {hourly_rate: 2.50, input_tokens_per_second: 4000, output_tokens_per_second: 400}
  - name: sim-acme-llama-ft
    provider: openai_compatible
    model: acme-llama-ft
    base_url: simulator
    # a server started with an API key (vLLM --api-key) wants it as a bearer token
    headers: {authorization: "Bearer local-inference-token"}

# The dashboard (/dashboard) and the admin API open with the admin key, read from
# SPENDGATE_ADMIN_KEY; `spendgate demo` generates one into its --dir (admin-key).

# A monthly budget for the search team, shown on the dashboard. A budget holds
# what the gateway forwards: the live calls count, the backfilled history not.
budgets:
  - name: search-monthly
    scope: {team: search}
    window: {period: month}
    limit: "60"

# Model tiers: the dashboard's tier mix (and `model: tier:small` for clients).
routing:
  tiers:
    small: [gpt-4o-mini, claude-haiku-4-5]
    large: [gpt-4o, claude-sonnet-4-5]

# Alerts: state and history live in the ledger; the log notifier writes to the
# gateway's log (docs/alerts.md has every rule kind and the webhook, Slack and
# email notifiers).
alerts:
  evaluate_every_s: 60
  notifiers:
    log: {kind: log}
  rules:
    - name: unpriced-model           # a model answered with no price (acme-llama-ft)
      kind: unpriced_model
      notify: [log]
      cooldown_s: 86400
    - name: untagged-spend           # more than 1 % of the last week's spend has no team
      kind: untagged_share
      tags: [team]
      above_percent: 1
      window: 7d
      notify: [log]
    - name: big-call                 # one call above $0.50
      kind: single_call
      above: "0.50"
      notify: [log]
"""
EXAMPLE_LEDGER_URL = "sqlite:///spendgate-demo/spendgate.db"


def demo_config_yaml(ledger_url: str) -> str:
    """The demo config with its ledger URL filled in (JSON-quoted: any path is a valid YAML scalar)."""
    state_url = ledger_url.rsplit("/", 1)[0] + "/spendgate-state.db"
    return DEMO_CONFIG_TEMPLATE.replace(LEDGER_URL_MARK, json.dumps(ledger_url)).replace(STATE_URL_MARK, json.dumps(state_url))


def ledger_url_for(path: Path) -> str:
    """sqlite:////abs/path (four slashes): the config then works from any directory."""
    return f"sqlite:///{path.resolve()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where the config and the ledger go (default {DEFAULT_DIR})")
    parser.add_argument("--port", type=int, default=4000, help="gateway port (default 4000; a free one if taken; 0: any free one)")
    parser.add_argument("--days", type=float, default=30, help="days of history to backfill (default 30)")
    parser.add_argument("--live-seconds", type=float, default=10, help="seconds of live traffic through the gateway (default 10)")
    parser.add_argument("--keep-running", action="store_true", help="leave the gateway up after the report, until Ctrl-C")
    parser.add_argument("--reset", action="store_true", help="delete the demo ledger first and start fresh")
    parser.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)


def say(text: str = "") -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.days <= 0 or args.live_seconds < 0:
        print("spendgate demo: --days must be positive and --live-seconds not negative", file=sys.stderr)
        return 2
    demo_dir = Path(args.dir).expanduser()
    demo_dir.mkdir(parents=True, exist_ok=True)
    ledger_path = demo_dir / LEDGER_NAME
    config_path = demo_dir / CONFIG_NAME
    log_path = demo_dir / LOG_NAME
    if args.reset:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
    config_path.write_text(demo_config_yaml(ledger_url_for(ledger_path)))
    config = parse_config(config_path.read_text())

    say(f"spendgate demo: simulator + gateway + {args.days:g} days of history + live traffic, in {_show(demo_dir)}")
    say()
    since = _backfill(config, args.days, args.seed, ledger_path)

    port = _choose_port(args.port)
    base_url = f"http://{HOST}:{port}"
    admin_key_path = demo_dir / ADMIN_KEY_NAME
    admin_key = _admin_key(admin_key_path)
    gateway = _start_gateway(config_path, port, log_path, admin_key)
    try:
        if not _wait_healthy(base_url, gateway):
            say(f"  the gateway did not come up; its log ({_show(log_path)}) ends with:")
            say(_tail(log_path))
            return 1
        say(f"[2/4] gateway: {base_url} is up (pid {gateway.pid}; upstreams: the built-in simulator; log {_show(log_path)})")
        if args.live_seconds > 0:
            say(f"[3/4] live traffic: {args.live_seconds:g} s through the gateway's HTTP API ...")
            result = asyncio.run(_live(base_url, args.live_seconds))
            say(f"      {result.summary()}")
        else:
            say("[3/4] live traffic: skipped (--live-seconds 0)")
        if args.keep_running:
            time.sleep(config.ledger.flush_interval_ms / 1000 * 3 + 0.2)  # let its writer flush
        else:
            code = _stop(gateway, config.server.graceful_timeout_s)
            if code not in (0, -signal.SIGTERM):  # uvicorn re-raises the SIGTERM it handled
                say(f"  the gateway exited with status {code}; see {_show(log_path)}")
        say(f"[4/4] report: spend by {', '.join(REPORT_BY)} since the start of the history")
        say()
        sys.stdout.write(_report(config.ledger.url, since))
        say()
        say(_alerts(config.ledger.url))
        say()
        say(_next_steps(config_path, ledger_path, base_url if args.keep_running else f"http://{HOST}:4000"))
        if args.keep_running:
            _serve_until_interrupted(gateway, base_url, admin_key_path)
        return 0
    except KeyboardInterrupt:
        say()
        say("interrupted; stopping the gateway (its ledger is flushed on the way out)")
        return 130
    finally:
        _stop(gateway, config.server.graceful_timeout_s)


# --- steps ----------------------------------------------------------------


def _backfill(config: Config, days: float, seed: int, ledger_path: Path) -> float:
    """Write the history (unless the ledger has it already); returns the report's start."""
    from spendgate.demo.backfill import FEATURES, MODELS, TEAMS, generate_history
    from spendgate.demo.profile import load_profile
    from spendgate.ledger.events import UsageEvent
    from spendgate.ledger.open import open_ledger
    from spendgate.ledger.sqlite import TABLE
    from spendgate.pricing.catalog import Catalog

    now = time.time()
    since = now - days * 86400
    store = open_ledger(config.ledger.url)
    try:
        have, first = store.query(f"SELECT count(*), min(ts_start) FROM {TABLE} WHERE source = 'demo'")[0]
        if have:
            say(f"[1/4] history: {have:,} demo events already in {_show(ledger_path)} (use --reset for a fresh ledger)")
            return min(since, float(first))
        started = time.monotonic()
        # The unpriced model is there on purpose; the report lists it, so the
        # catalog's one-line warning would only be noise here.
        pricing_log = logging.getLogger("spendgate.pricing")
        level = pricing_log.level
        pricing_log.setLevel(logging.ERROR)
        try:
            written = 0
            batch: list[UsageEvent] = []
            for event in generate_history(load_profile(), Catalog(config), days=days, now=now, seed=seed):
                batch.append(event)
                if len(batch) >= 5000:
                    store.append(batch)
                    written += len(batch)
                    batch = []
            store.append(batch)
            written += len(batch)
        finally:
            pricing_log.setLevel(level)
        teams = len(TEAMS)
        features = sum(1 for f in FEATURES if f.name)
        say(
            f"[1/4] history: {written:,} events over {days:g} days ({teams} teams, {features} features, "
            f"{len(MODELS)} models) written to {_show(ledger_path)} in {time.monotonic() - started:.1f} s"
        )
        return since
    finally:
        store.close()


def _choose_port(wanted: int) -> int:
    """`wanted` if free; else (or for 0) one the OS hands out."""
    if wanted:
        with socket.socket() as s:
            # as uvicorn binds: a port held only by TIME_WAIT leftovers is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, wanted))
                return wanted
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    if wanted:
        say(f"      port {wanted} is taken; using {port}")
    return port


def _admin_key(path: Path) -> str:
    """The demo's admin key: made once (random, owner-only file), then reused."""
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = "sg-admin-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _start_gateway(config_path: Path, port: int, log_path: Path, admin_key: str) -> subprocess.Popen[bytes]:
    """The real gateway, in its own process (and session, so Ctrl-C is ours to relay)."""
    env = {**os.environ, "SPENDGATE_ADMIN_KEY": admin_key}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "spendgate.cli", "serve", "--config", str(config_path), "--host", HOST, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def _wait_healthy(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=1.0) as resp:
                if resp.status == 200:
                    # still ours? (a gateway that lost the port to another server exits)
                    time.sleep(0.1)
                    return proc.poll() is None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


async def _live(base_url: str, seconds: float) -> "TrafficResult":
    from spendgate.demo.profile import load_profile
    from spendgate.demo.traffic import send_traffic

    return await send_traffic(base_url, load_profile(), seconds)


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM (the gateway flushes its ledger on the way out), then wait; kill if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode or 0)


def _report(ledger_url: str, since: float) -> str:
    from spendgate.analytics.report import build_report, render_table
    from spendgate.ledger.open import open_ledger

    store = open_ledger(ledger_url)
    try:
        return render_table(build_report(store, since=since, until=None, by=REPORT_BY))
    finally:
        store.close()


def _alerts(ledger_url: str) -> str:
    """The alerts the gateway fired while it ran (from the ledger's alert history)."""
    from spendgate.ledger.open import open_ledger

    store = open_ledger(ledger_url)
    try:
        rows = store.query(
            "SELECT rule, subject, value, threshold, message FROM alert_history WHERE event = 'fired' ORDER BY ts, id"
        )
    except Exception:  # noqa: BLE001 - a ledger without alert tables: nothing fired
        rows = []
    finally:
        store.close()
    if not rows:
        return "alerts: none fired"
    lines = [f"alerts fired ({len(rows)}; the gateway's log has each notification):"]
    for rule, subject, _value, _threshold, message in rows:
        lines.append(f"  {rule:<16} {subject}: {message}")
    return "\n".join(lines)


def _serve_until_interrupted(proc: subprocess.Popen[bytes], base_url: str, admin_key_path: Path) -> None:
    say(f"The gateway is still running at {base_url} — try it:")
    say()
    say(_curl_snippet(base_url))
    say()
    say(f"The dashboard: {base_url}/dashboard  (sign in with the admin key in {_show(admin_key_path)})")
    say()
    say("Press Ctrl-C to stop it.")
    try:
        while proc.poll() is None:
            time.sleep(0.5)
        say(f"the gateway exited with status {proc.returncode}")
    except KeyboardInterrupt:
        say()
        say("stopping the gateway (its ledger is flushed on the way out) ...")


# --- text -----------------------------------------------------------------


def _curl_snippet(base_url: str) -> str:
    return (
        f"  curl {base_url}/v1/chat/completions \\\n"
        "    -H 'authorization: Bearer any-key' \\\n"
        "    -H 'x-spendgate-tags: team=search,feature=faq,environment=dev' \\\n"
        "    -H 'content-type: application/json' \\\n"
        "    -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}'"
    )


def _next_steps(config_path: Path, ledger_path: Path, base_url: str) -> str:
    cfg = _show(config_path)
    report = f"spendgate report --config {cfg}"
    lines = [
        "where to look next",
        f"  {report} --by feature,environment        # who spends what, and where",
        f"  {report} --by day --since 14d             # the spike: research's runaway eval sweep",
        f"  {report} --by tenant --since 7d           # per customer",
        f"  {report} --by prompt_version,model        # support's reply-draft v3 -> v4",
        f"  {report} --by source                      # the backfilled history vs the live calls",
        f"  the ledger is plain SQLite: sqlite3 {_show(ledger_path)} 'select team, count(*) from usage_events group by 1'",
        f"  run the gateway again: spendgate serve --config {cfg}   (or: spendgate demo --keep-running)",
        f"  the dashboard: spendgate demo --keep-running, then open {base_url}/dashboard",
        f"    (sign in with the admin key in {_show(config_path.parent / ADMIN_KEY_NAME)})",
        "  then point any OpenAI SDK at it:",
        f'    client = OpenAI(base_url="{base_url}/v1", api_key="any-key",',
        '                    default_headers={"x-spendgate-tags": "team=search,feature=faq"})',
        f'  or Anthropic: Anthropic(base_url="{base_url}", api_key="any-key")',
        "  more: README.md and docs/demo.md",
    ]
    return "\n".join(lines)


def _show(path: Path) -> str:
    """A path as the user would type it: relative to here when it is below here."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
