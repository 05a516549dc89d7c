"""Rate limiting of the token-free enrollment nonce endpoint, with an injected clock: the token
bucket's refill, burst and retry time, per-client isolation and its memory bound, the 429 with
``Retry-After`` and a JSON reason on SQLite and PostgreSQL, the off switch, the default limit and
the OpenAPI document naming the 429."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from iotid.fleet.app import create_app
from iotid.fleet.db import Database
from iotid.fleet.enrollment.api import NONCE_LIMITER_STATE_KEY, install_nonce_limit
from iotid.fleet.ratelimit import Decision, RateLimit, TokenBucketLimiter
from support.fleetworld import FleetWorld, build_world

NONCE = "/v1/enrollment/nonce"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the token bucket -----------------------------------------------------------------------------
def test_bucket_burst_refill_and_retry_after() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(RateLimit(rate=2.0, burst=3), clock=clock)
    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.take("a")
    assert refused == Decision(False, 0.5)  # one token every 0.5 s
    assert refused.retry_after_header == "1"
    assert limiter.take("b").allowed  # another client has its own bucket
    clock.now += 0.25
    assert limiter.take("a") == Decision(False, 0.25)
    clock.now += 0.25
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    clock.now += 3600  # refill stops at the burst
    assert [limiter.take("a").allowed for _ in range(4)] == [True, True, True, False]


def test_bucket_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(RateLimit(rate=0.1, burst=1), clock=clock)
    assert limiter.take("a").allowed
    refused = limiter.take("a")
    assert (refused.allowed, refused.retry_after, refused.retry_after_header) == (False, 10.0, "10")
    clock.now += 9.5
    assert limiter.take("a").retry_after_header == "1"


def test_bucket_memory_is_bounded() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(RateLimit(rate=1.0, burst=1, max_clients=3), clock=clock)
    for key in ("a", "b", "c", "d"):
        assert limiter.take(key).allowed
    assert len(limiter) == 3
    assert not limiter.take("d").allowed  # still remembered
    assert limiter.take("a").allowed  # the least recently seen was forgotten: a full bucket


def test_off_switch_and_bad_parameters() -> None:
    limiter = TokenBucketLimiter(RateLimit.off(), clock=Clock())
    assert all(limiter.take("a").allowed for _ in range(1000))
    assert len(limiter) == 0
    for kwargs in ({"rate": 0.0}, {"rate": float("nan")}, {"burst": 0}, {"max_clients": 0}):
        with pytest.raises(ValueError):
            RateLimit(**kwargs)  # type: ignore[arg-type]


# -- the endpoint ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("ratelimit"), {"p256-a": ("p256", 1)})


@pytest.fixture
def client(fleet_db: Database, world: FleetWorld) -> Iterator[TestClient]:
    root_pem = world.root.public_bytes(serialization.Encoding.PEM)
    app = create_app(fleet_db.url, root_pem, keys=world.keys)
    with TestClient(app) as test_client:
        yield test_client


def test_nonce_endpoint_answers_429_with_retry_after(client: TestClient) -> None:
    clock = Clock()
    install_nonce_limit(client.app, RateLimit(rate=0.5, burst=2), clock=clock)  # type: ignore[arg-type]
    assert [client.post(NONCE).status_code for _ in range(2)] == [201, 201]
    refused = client.post(NONCE)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    body = refused.json()
    assert body["error"] == "enrollment.rate_limited"
    assert body["retry_after"] == 2
    assert "retry after 2 s" in body["message"]
    assert "nonce" not in body  # no nonce was issued
    other = TestClient(client.app, client=("192.0.2.7", 50000))
    assert other.post(NONCE).status_code == 201  # another address is not affected
    clock.now += 2.0
    assert client.post(NONCE).status_code == 201
    assert client.post(NONCE).status_code == 429


def test_nonce_limit_off_and_default(client: TestClient) -> None:
    app = client.app
    assert [client.post(NONCE).status_code for _ in range(3)] == [201] * 3
    limiter = getattr(app.state, NONCE_LIMITER_STATE_KEY)  # made on first use
    assert limiter.limit == RateLimit()
    assert (limiter.limit.rate, limiter.limit.burst, limiter.limit.enabled) == (50.0, 100, True)
    install_nonce_limit(app, RateLimit.off())  # type: ignore[arg-type]
    assert all(client.post(NONCE).status_code == 201 for _ in range(150))


def test_openapi_documents_the_429(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    answer = spec["paths"][NONCE]["post"]["responses"]["429"]
    assert "Retry-After" in answer["headers"]
    assert answer["content"]["application/json"]["schema"]
