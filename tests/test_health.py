"""Deployment health: cooldowns, Retry-After, half-open probes, latency EWMA, rpm/tpm use."""

from __future__ import annotations

import pytest

from spendgate.config import Deployment
from spendgate.routing.health import (
    CANCELLED,
    CLIENT_ERROR,
    CONNECTION,
    CONTEXT_WINDOW,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    Health,
)
from spendgate.routing.schema import HealthConfig
from routing_fakes import Clock, dep
from spendgate.routing.failover import HEALTH_KIND, kind_of_status


CFG = HealthConfig(allowed_fails=3, window_s=60, cooldown_s=30, max_cooldown_s=300, latency_alpha=0.5)


def make(*deps: Deployment, cfg: HealthConfig = CFG) -> tuple[Health, Clock]:
    clock = Clock()
    return Health(cfg, deps or [dep("a")], clock=clock), clock


def fail(h: Health, name: str, kind: str = SERVER_ERROR, retry_after_s: float | None = None) -> None:
    probe = h.start(name)
    h.end(name, ok=False, failure=kind, retry_after_s=retry_after_s, probe=probe)


def succeed(h: Health, name: str, latency_s: float | None = 0.1) -> None:
    probe = h.start(name)
    h.end(name, ok=True, latency_s=latency_s, probe=probe)


def test_failure_kinds_of_statuses():
    def kind(status: int) -> str:  # as the failover loop reports an upstream error to Health
        return HEALTH_KIND[kind_of_status(status)]

    assert kind(429) == RATE_LIMITED
    assert kind(500) == kind(503) == kind(529) == SERVER_ERROR
    assert kind(504) == kind(408) == TIMEOUT
    assert HEALTH_KIND["connection"] == CONNECTION  # no status: the connection itself failed
    assert kind(400) == kind(404) == CLIENT_ERROR


@pytest.mark.parametrize("kind", [RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION])
def test_allowed_fails_within_window_cool_down(kind):
    h, clock = make()
    for _ in range(2):
        fail(h, "a", kind)
        clock.advance(10)
    assert h.available("a")  # two failures: still healthy
    fail(h, "a", kind)
    assert not h.available("a")
    assert h.cooling_left("a") == pytest.approx(30)
    snap = h.snapshot()["a"]
    assert snap["state"] == "cooling" and snap["last_failure"] == kind and snap["recent_failures"] == 3
    clock.advance(29.9)
    assert not h.available("a")
    clock.advance(0.2)
    assert h.available("a")  # half-open: the next call is the probe
    assert h.snapshot()["a"]["state"] == "half_open"


def test_failures_spread_beyond_the_window_do_not_cool_down():
    h, clock = make()
    for _ in range(10):
        clock.advance(31)  # at most two failures within any 60 s
        fail(h, "a")
    assert h.available("a")
    assert h.snapshot()["a"]["recent_failures"] == 2


@pytest.mark.parametrize("kind", [CLIENT_ERROR, CONTEXT_WINDOW, CANCELLED])
def test_client_errors_do_not_count(kind):
    h, _ = make()
    for _ in range(10):
        fail(h, "a", kind)
    assert h.available("a")
    assert h.snapshot()["a"]["recent_failures"] == 0


def test_failure_without_a_kind_counts():
    h, _ = make()
    for _ in range(3):
        probe = h.start("a")
        h.end("a", ok=False, probe=probe)
    assert not h.available("a")


def test_retry_after_cools_at_once_for_at_least_that_long():
    h, clock = make()
    fail(h, "a", RATE_LIMITED, retry_after_s=90)  # a single 429, longer than cooldown_s
    assert h.cooling_left("a") == pytest.approx(90)
    clock.advance(89)
    assert not h.available("a")
    clock.advance(1.5)
    assert h.available("a")


def test_short_retry_after_is_respected_without_the_full_cooldown():
    h, clock = make()
    fail(h, "a", RATE_LIMITED, retry_after_s=2)
    assert h.cooling_left("a") == pytest.approx(2)
    clock.advance(2.1)
    assert h.available("a")
    # its probe fails with no Retry-After: the configured cooldown applies from then on
    fail(h, "a", RATE_LIMITED)
    assert h.cooling_left("a") == pytest.approx(30)


def test_retry_after_longer_than_the_cooldown_wins():
    h, clock = make()
    fail(h, "a")
    fail(h, "a")
    fail(h, "a", RATE_LIMITED, retry_after_s=45)  # trips (3 fails) and says 45 s
    assert h.cooling_left("a") == pytest.approx(45)


def test_half_open_admits_one_probe_at_a_time():
    h, clock = make()
    for _ in range(3):
        fail(h, "a")
    clock.advance(30)
    assert h.available("a")
    assert h.start("a") is True  # the probe
    assert not h.available("a")  # a second call would not be a probe: it waits
    assert h.cooling_left("a") == 0.0
    assert h.snapshot()["a"]["state"] == "probing"
    assert h.start("a") is False  # forced anyway (e.g. every deployment is cooling): not a probe
    h.end("a", ok=True, latency_s=0.2)  # the forced call's success does not heal
    assert not h.available("a")
    h.end("a", ok=True, latency_s=0.2, probe=True)
    assert h.available("a")
    assert h.snapshot()["a"]["state"] == "healthy"


def test_failed_probes_double_the_cooldown_up_to_the_max():
    h, clock = make()
    for _ in range(3):
        fail(h, "a")
    seen = [h.cooling_left("a")]
    for _ in range(6):
        clock.advance(seen[-1])
        assert h.available("a")
        fail(h, "a", TIMEOUT)  # the probe fails
        seen.append(h.cooling_left("a"))
    assert seen == pytest.approx([30, 60, 120, 240, 300, 300, 300])


def test_probe_success_heals_and_resets_the_cooldown():
    h, clock = make()
    for _ in range(3):
        fail(h, "a")
    clock.advance(30)
    fail(h, "a")  # probe fails: 60 s
    clock.advance(60)
    succeed(h, "a")  # probe succeeds
    assert h.available("a") and h.snapshot()["a"]["state"] == "healthy"
    # healed: the failure count starts afresh and the next trip is the base cooldown again
    fail(h, "a")
    fail(h, "a")
    assert h.available("a")
    fail(h, "a")
    assert h.cooling_left("a") == pytest.approx(30)


def test_probe_answering_with_a_client_error_heals():
    h, clock = make()
    for _ in range(3):
        fail(h, "a")
    clock.advance(30)
    fail(h, "a", CONTEXT_WINDOW)  # the deployment answered
    assert h.snapshot()["a"]["state"] == "healthy"


def test_cancelled_probe_frees_the_slot_without_healing():
    h, clock = make()
    for _ in range(3):
        fail(h, "a")
    clock.advance(30)
    fail(h, "a", CANCELLED)
    assert h.snapshot()["a"]["state"] == "half_open"
    assert h.start("a") is True  # the next call probes


def test_late_failures_of_calls_sent_before_the_trip_do_not_extend_it():
    h, clock = make()
    early = [h.start("a") for _ in range(5)]
    assert early == [False] * 5
    for _ in range(3):
        h.end("a", ok=False, failure=SERVER_ERROR)
    assert h.cooling_left("a") == pytest.approx(30)
    clock.advance(10)
    for _ in range(2):
        h.end("a", ok=False, failure=SERVER_ERROR)
    assert h.cooling_left("a") == pytest.approx(20)
    assert h.snapshot()["a"]["in_flight"] == 0


def test_a_forced_call_while_cooling_is_the_probe():
    # when every deployment is cooling the balancer still sends to the least cooled one
    h, clock = make()
    for _ in range(3):
        fail(h, "a")
    clock.advance(5)
    assert h.start("a") is True
    h.end("a", ok=True, latency_s=0.1, probe=True)
    assert h.available("a")


def test_in_flight_counts():
    h, _ = make(dep("a"), dep("b"))
    h.start("a")
    h.start("a")
    h.start("b")
    assert h.in_flight("a") == 2 and h.in_flight("b") == 1
    h.end("a", ok=True)
    assert h.in_flight("a") == 1
    h.end("b", ok=True)
    h.end("b", ok=True)  # an unmatched end never goes below zero
    assert h.in_flight("b") == 0


def test_latency_ewma():
    h, _ = make()  # alpha 0.5
    assert h.latency_s("a") is None
    succeed(h, "a", 1.0)
    assert h.latency_s("a") == pytest.approx(1.0)
    succeed(h, "a", 3.0)
    assert h.latency_s("a") == pytest.approx(2.0)
    succeed(h, "a", 0.0)
    assert h.latency_s("a") == pytest.approx(1.0)
    fail(h, "a", TIMEOUT)  # failures do not feed the latency
    assert h.latency_s("a") == pytest.approx(1.0)
    assert h.snapshot()["a"]["latency_ewma_ms"] == pytest.approx(1000.0)


def test_latency_ewma_default_alpha():
    h = Health(HealthConfig(), [dep("a")], clock=Clock())
    succeed(h, "a", 1.0)
    succeed(h, "a", 2.0)
    assert h.latency_s("a") == pytest.approx(0.7 * 1.0 + 0.3 * 2.0)


def test_rpm_window_slides():
    h, clock = make(dep("a", rpm=3))
    for _ in range(3):
        assert h.fits("a")
        h.start("a")
        clock.advance(10)  # sent at t0, t0+10, t0+20
    assert not h.fits("a")
    clock.advance(29)  # t0+59: all three still within the last 60 s
    assert not h.fits("a")
    clock.advance(1)  # t0+60: the first one has left the window
    assert h.fits("a")
    assert h.snapshot()["a"]["rpm_used"] == 2
    clock.advance(600)  # long idle: everything dropped at once
    assert h.snapshot()["a"]["rpm_used"] == 0


def test_tpm_counts_the_call_tokens():
    h, clock = make(dep("a", tpm=1000))
    h.start("a", tokens=600)
    assert h.fits("a", 400)
    assert not h.fits("a", 401)
    clock.advance(60)
    assert h.fits("a", 1000)
    assert h.fits("a", 5000)  # bigger than the whole tpm: still goes to an idle deployment
    snap = h.snapshot()["a"]
    assert snap["tpm"] == 1000 and snap["tpm_used"] == 0


def test_no_limits_always_fit_and_are_not_tracked():
    h, _ = make(dep("a"))
    for _ in range(1000):
        h.start("a", tokens=10_000)
    assert h.fits("a", 10**9)
    assert h.snapshot()["a"]["rpm_used"] is None


def test_clock_going_back_does_not_corrupt_the_window():
    h, clock = make(dep("a", rpm=2))
    h.start("a")
    clock.advance(-5)
    h.start("a")
    assert not h.fits("a")
    clock.advance(65)
    assert h.fits("a") and h.snapshot()["a"]["rpm_used"] == 0


def test_unknown_deployment_is_tracked_on_first_use():
    h, _ = make()
    assert h.available("new")
    h.start("new")
    assert h.snapshot()["new"]["in_flight"] == 1


def test_track_updates_limits_and_keeps_state():
    h, _ = make(dep("a", rpm=1))
    h.start("a")
    assert not h.fits("a")
    h.track([dep("a", rpm=5), dep("b", tpm=10)])
    assert h.fits("a") and h.in_flight("a") == 1
    assert h.snapshot()["b"]["tpm"] == 10
