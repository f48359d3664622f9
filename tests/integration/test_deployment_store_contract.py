"""One behavioural contract for both deployment stores.

Every test runs twice: against :class:`InMemoryDeploymentStore` and against :class:`DynamoDeploymentStore`
on the emulator's real HTTP endpoint (a moto server), on a table made by ``create_registry_table``. Each
test works under its own owner and ids, so the DynamoDB half shares one table per module.
"""

from __future__ import annotations

import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.rate_arrivals import SEEN_BURSTS, arrivals, check_exact, thirds

from heimdall.adapters.dynamodb.counters import rate_key, rate_log_item
from heimdall.adapters.dynamodb.deployments import DynamoDeploymentStore
from heimdall.adapters.dynamodb.registry import DynamoRegistry
from heimdall.bundle.models import NormalizationStats
from heimdall.domain.api_keys import (
    authenticate_api_key,
    authorize_request,
    generate_api_key,
    hash_api_key,
    key_matches,
    parse_key_id,
)
from heimdall.domain.deployments import (
    RATE_LIMITS,
    ApiKeyRecord,
    Deployment,
    DeploymentAction,
    DeploymentArtifact,
    DeploymentStatus,
    DeploymentStore,
    DeploymentType,
    Tier,
)
from heimdall.domain.rate_limits import MAX_RATE_LIMIT, RateDecision, rate_moment
from heimdall.domain.records import ModelRecord
from heimdall.errors import ConflictError, InvalidCursor, RecordNotFound, Unauthorized
from heimdall.testing.deployments import InMemoryDeploymentStore

ACTIVE, INACTIVE = DeploymentStatus.ACTIVE, DeploymentStatus.INACTIVE
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)  # every write gets its own instant, as in real life
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "dynamodb"])
def store(request: pytest.FixtureRequest, clock: Clock) -> Iterator[DeploymentStore]:
    if request.param == "memory":
        yield InMemoryDeploymentStore(now=clock)
    else:
        yield DynamoDeploymentStore(
            request.getfixturevalue("table_name"), request.getfixturevalue("dynamodb"), now=clock
        )


@pytest.fixture
def owner() -> str:
    return f"user-{uuid.uuid4().hex}"


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def deployment(owner: str, *, model_id: str = "model-1", at: int = 0, **extra: Any) -> Deployment:
    return Deployment(
        deployment_id=extra.pop("deployment_id", _id("d")),
        owner=owner,
        model_id=model_id,
        type=extra.pop("type", DeploymentType.DOWNLOAD),
        name=extra.pop("name", "my deployment"),
        created_at=T0 + timedelta(seconds=at),
        updated_at=T0 + timedelta(seconds=at),
        **extra,
    )


def endpoint(owner: str, **extra: Any) -> tuple[Deployment, ApiKeyRecord, str]:
    """A platform endpoint with its key record and the key itself."""
    key_id, key = generate_api_key()
    record = deployment(owner, type=DeploymentType.PLATFORM_ENDPOINT, tier=Tier.FREE, key_id=key_id, **extra)
    stored = ApiKeyRecord(
        key_id=key_id, deployment_id=record.deployment_id, owner=owner, key_hash=hash_api_key(key)
    )
    return record, stored, key


def new_key(record: Deployment) -> tuple[ApiKeyRecord, str]:
    key_id, key = generate_api_key()
    return (
        ApiKeyRecord(
            key_id=key_id, deployment_id=record.deployment_id, owner=record.owner, key_hash=hash_api_key(key)
        ),
        key,
    )


def authenticates(store: DeploymentStore, key: str) -> bool:
    """What the inference path does with a bearer key: parse, look up by id, compare the hash."""
    key_id = parse_key_id(key)
    if key_id is None:
        return False
    try:
        record = store.get_api_key(key_id)
    except RecordNotFound:
        return False
    return (
        key_matches(key, record.key_hash) and authenticate_api_key(store, key, record.deployment_id) == record
    )


def collect(fetch: Callable[[str | None], Any]) -> list[list[Any]]:
    pages, cursor = [], None
    while True:
        page = fetch(cursor)
        pages.append(page.items)
        cursor = page.cursor
        if cursor is None:
            return pages


# --- API keys (pure functions) ---------------------------------------------------------------------


def test_api_keys_parse_hash_and_compare() -> None:
    key_id, key = generate_api_key()
    assert key.startswith(f"hdk_{key_id}_")
    assert parse_key_id(key) == key_id
    assert len({generate_api_key()[1] for _ in range(50)}) == 50
    digest = hash_api_key(key)
    assert len(digest) == 64
    assert key not in digest
    assert key_matches(key, digest)
    assert not key_matches(key + "x", digest)
    assert not key_matches(generate_api_key()[1], digest)
    for bad in ("", "hdk_", f"hdk_{key_id}", "Bearer " + key, key.replace("hdk_", "hdx_"), key + "!"):
        assert parse_key_id(bad) is None, bad


# --- deployments -----------------------------------------------------------------------------------


def test_put_get_delete_round_trips_every_field(store: DeploymentStore, owner: str) -> None:
    record, key_record, _ = endpoint(
        owner,
        export_job_id="job-1",
        apply_normalization=True,
        options={"nested": {"ratio": 0.25, "sizes": [1, 8]}, "flag": True},
        artifact=DeploymentArtifact(key="deployments/x/package.zip", file_name="package.zip", size_bytes=3),
        normalization=NormalizationStats(feature_means=[0.5, 0.25], feature_stds=[0.125, 1.0]),
    )
    assert store.put_deployment(record, api_key=key_record) == record
    stored = store.get_deployment(owner, record.deployment_id)
    assert stored == record
    assert isinstance(stored.options["nested"]["ratio"], float)
    assert store.get_deployment_any_owner(record.deployment_id) == record

    with pytest.raises(ConflictError):
        store.put_deployment(record)
    store.delete_deployment(owner, record.deployment_id)
    with pytest.raises(RecordNotFound) as caught:
        store.get_deployment(owner, record.deployment_id)
    assert caught.value.http_status == 404
    with pytest.raises(RecordNotFound):
        store.delete_deployment(owner, record.deployment_id)
    with pytest.raises(RecordNotFound):
        store.history(owner, record.deployment_id)


def test_another_owners_deployment_is_not_found_and_not_changed(store: DeploymentStore, owner: str) -> None:
    record, key_record, key = endpoint(owner)
    store.put_deployment(record, api_key=key_record)
    other = f"{owner}-other"
    for attempt in (
        lambda: store.get_deployment(other, record.deployment_id),
        lambda: store.delete_deployment(other, record.deployment_id),
        lambda: store.transition_deployment(other, record.deployment_id, INACTIVE, actor=other),
        lambda: store.history(other, record.deployment_id),
        lambda: store.rotate_api_key(other, record.deployment_id, new_key(record)[0], actor=other),
    ):
        with pytest.raises(RecordNotFound):
            attempt()
    assert store.list_deployments(other).items == []
    assert store.list_deployments(other, model_id=record.model_id).items == []
    assert store.get_deployment(owner, record.deployment_id) == record, "still there, unchanged"
    assert authenticates(store, key)


def test_list_deployments_newest_first_by_owner_and_model(store: DeploymentStore, owner: str) -> None:
    made = [store.put_deployment(deployment(owner, model_id=f"m{i % 2}", at=i)) for i in range(5)]
    pages = collect(lambda cursor: store.list_deployments(owner, limit=2, cursor=cursor))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [d.deployment_id for p in pages for d in p] == [d.deployment_id for d in reversed(made)]

    pages = collect(lambda cursor: store.list_deployments(owner, model_id="m0", limit=2, cursor=cursor))
    assert [[d.deployment_id for d in p] for p in pages] == [
        [made[4].deployment_id, made[2].deployment_id],
        [made[0].deployment_id],
    ]
    assert store.list_deployments(owner, model_id="m9").items == []
    cursor = store.list_deployments(owner, limit=1).cursor
    assert cursor is not None
    with pytest.raises(InvalidCursor):
        store.list_deployments(owner, model_id="m0", cursor=cursor)
    with pytest.raises(InvalidCursor):
        store.list_deployments(f"{owner}-other", cursor=cursor)


# --- lifecycle and history -------------------------------------------------------------------------


def test_transitions_are_recorded_with_before_after_and_actor(store: DeploymentStore, owner: str) -> None:
    record = store.put_deployment(deployment(owner), actor="creator")
    off = store.transition_deployment(owner, record.deployment_id, INACTIVE, actor="alice")
    assert off.status is INACTIVE
    assert off.updated_at > record.updated_at
    assert store.get_deployment(owner, record.deployment_id) == off
    with pytest.raises(ConflictError) as caught:
        store.transition_deployment(owner, record.deployment_id, INACTIVE, actor="alice")
    assert caught.value.http_status == 409
    on = store.transition_deployment(owner, record.deployment_id, ACTIVE, actor="bob")
    assert on.status is ACTIVE

    history = store.history(owner, record.deployment_id)
    assert [(e.action, e.before, e.after, e.actor) for e in history] == [
        (DeploymentAction.CREATED, None, ACTIVE, "creator"),
        (DeploymentAction.DEACTIVATED, ACTIVE, INACTIVE, "alice"),
        (DeploymentAction.ACTIVATED, INACTIVE, ACTIVE, "bob"),
    ]
    assert [e.at for e in history] == sorted(e.at for e in history)
    assert all(e.deployment_id == record.deployment_id for e in history)


def test_racing_transitions_have_exactly_one_winner(store: DeploymentStore, owner: str) -> None:
    record = store.put_deployment(deployment(owner))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def race(i: int) -> None:
        barrier.wait()
        try:
            store.transition_deployment(owner, record.deployment_id, INACTIVE, actor=f"t{i}")
            outcome = "won"
        except ConflictError:
            outcome = "conflict"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["won"]
    assert len(store.history(owner, record.deployment_id)) == 2


# --- API keys in the store -------------------------------------------------------------------------


def test_only_the_hash_is_stored_and_the_key_is_found_by_its_id(store: DeploymentStore, owner: str) -> None:
    record, key_record, key = endpoint(owner)
    store.put_deployment(record, api_key=key_record)
    found = store.get_api_key(key_record.key_id)
    assert found == key_record
    assert (found.deployment_id, found.owner) == (record.deployment_id, owner)
    assert key not in found.model_dump_json()
    assert authenticates(store, key)
    assert not authenticates(store, key[:-1] + ("A" if key[-1] != "A" else "B"))
    with pytest.raises(RecordNotFound):
        store.get_api_key("0" * 16)
    with pytest.raises(ConflictError):
        store.put_api_key(key_record)


def test_authenticate_api_key_is_one_401_for_every_failure(store: DeploymentStore, owner: str) -> None:
    record, key_record, key = endpoint(owner)
    store.put_deployment(record, api_key=key_record)
    other, other_key_record, other_key = endpoint(owner)
    store.put_deployment(other, api_key=other_key_record)
    assert authenticate_api_key(store, key, record.deployment_id) == key_record
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    for attempt in (None, "", "Bearer x", wrong_secret, other_key, generate_api_key()[1]):
        with pytest.raises(Unauthorized) as caught:
            authenticate_api_key(store, attempt, record.deployment_id)
        assert caught.value.http_status == 401
    store.revoke_api_key(key_record.key_id)
    with pytest.raises(Unauthorized):
        authenticate_api_key(store, key, record.deployment_id)


def test_authorize_request_reads_the_key_and_the_deployment_together(
    store: DeploymentStore, owner: str
) -> None:
    record, key_record, key = endpoint(owner)
    store.put_deployment(record, api_key=key_record)
    other, other_key_record, other_key = endpoint(owner)
    store.put_deployment(other, api_key=other_key_record)
    assert authorize_request(store, key, record.deployment_id) == (key_record, record)
    assert store.get_api_key_and_deployment(key_record.key_id, other.deployment_id) == (key_record, other)
    assert store.get_api_key_and_deployment("0" * 16, "no-such-deployment") == (None, None)
    for attempt in (None, "", other_key, key[:-1] + ("A" if key[-1] != "A" else "B")):
        with pytest.raises(Unauthorized):
            authorize_request(store, attempt, record.deployment_id)
    with pytest.raises(Unauthorized):  # a live key of a deployment id that names nothing
        authorize_request(store, key, "no-such-deployment")
    store.revoke_api_key(key_record.key_id)
    assert store.get_api_key_and_deployment(key_record.key_id, record.deployment_id) == (None, record)
    with pytest.raises(Unauthorized):
        authorize_request(store, key, record.deployment_id)
    store.delete_deployment(owner, other.deployment_id)
    assert store.get_api_key_and_deployment(other_key_record.key_id, other.deployment_id) == (None, None)
    with pytest.raises(Unauthorized):
        authorize_request(store, other_key, other.deployment_id)


def test_a_taken_key_id_creates_nothing(store: DeploymentStore, owner: str) -> None:
    record, key_record, _ = endpoint(owner)
    store.put_deployment(record, api_key=key_record)
    second = deployment(owner, type=DeploymentType.PLATFORM_ENDPOINT, key_id=key_record.key_id)
    clash = key_record.model_copy(update={"deployment_id": second.deployment_id})
    with pytest.raises(ConflictError):
        store.put_deployment(second, api_key=clash)
    with pytest.raises(RecordNotFound):
        store.get_deployment(owner, second.deployment_id)
    assert store.get_api_key(key_record.key_id).deployment_id == record.deployment_id


def test_revoke_rotate_and_delete_stop_the_old_key_at_once(store: DeploymentStore, owner: str) -> None:
    record, key_record, key = endpoint(owner)
    store.put_deployment(record, api_key=key_record)

    replacement, new = new_key(record)
    rotated = store.rotate_api_key(owner, record.deployment_id, replacement, actor="alice")
    assert rotated.key_id == replacement.key_id
    assert store.get_deployment(owner, record.deployment_id).key_id == replacement.key_id
    assert not authenticates(store, key)
    with pytest.raises(RecordNotFound):
        store.get_api_key(key_record.key_id)
    assert authenticates(store, new)
    last = store.history(owner, record.deployment_id)[-1]
    assert (last.action, last.actor, last.before, last.after) == (
        DeploymentAction.KEY_ROTATED,
        "alice",
        ACTIVE,
        ACTIVE,
    )
    assert last.detail == {"old_key_id": key_record.key_id, "new_key_id": replacement.key_id}
    with pytest.raises(ConflictError):  # a key id that exists is refused, nothing changes
        store.rotate_api_key(owner, record.deployment_id, replacement, actor="alice")
    assert authenticates(store, new)

    store.revoke_api_key(replacement.key_id)
    assert not authenticates(store, new)
    with pytest.raises(RecordNotFound):
        store.revoke_api_key("f" * 16)

    third, newest = new_key(record)
    store.rotate_api_key(owner, record.deployment_id, third, actor="alice")
    assert authenticates(store, newest)
    store.delete_deployment(owner, record.deployment_id)
    assert not authenticates(store, newest)

    plain = store.put_deployment(deployment(owner))
    with pytest.raises(ConflictError):
        store.rotate_api_key(owner, plain.deployment_id, new_key(plain)[0], actor="alice")


# --- rate limits -----------------------------------------------------------------------------------


def test_a_burst_over_the_limit_is_denied_until_retry_after(store: DeploymentStore) -> None:
    key_id = generate_api_key()[0]
    limit = RATE_LIMITS[Tier.FREE]
    assert limit == 10
    start = T0 + timedelta(seconds=20)
    decisions = [store.consume_rate_limit(key_id, limit, start + timedelta(seconds=i)) for i in range(15)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 5
    assert [d.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    for i, denied in enumerate(decisions[10:], start=10):
        # The first request (at 20 s) leaves the window at 80 s: then one more fits.
        assert denied.retry_after_s == 80 - (20 + i)
        assert denied.remaining == 0
    assert store.consume_rate_limit(generate_api_key()[0], limit, start).allowed, "another key is not limited"
    last = start + timedelta(seconds=14)
    retry = timedelta(seconds=decisions[-1].retry_after_s)
    assert not store.consume_rate_limit(key_id, limit, last + retry - timedelta(seconds=1)).allowed
    assert not store.consume_rate_limit(key_id, limit, last + retry - timedelta(microseconds=1)).allowed
    on_time = store.consume_rate_limit(key_id, limit, last + retry)
    assert (on_time.allowed, on_time.remaining) == (True, 0)
    # Two minutes on, nothing of the burst counts any more.
    later = [store.consume_rate_limit(key_id, limit, T0 + timedelta(seconds=180)) for _ in range(11)]
    assert [d.allowed for d in later] == [True] * 10 + [False]
    assert later[-1].retry_after_s == 60
    for bad in (0, MAX_RATE_LIMIT + 1):
        with pytest.raises(ValueError):
            store.consume_rate_limit(key_id, bad, start)


def test_the_seen_bursts_at_a_minute_edge_get_the_limit_through_and_no_more(store: DeploymentStore) -> None:
    """10 at second 59.8, 10 at +30 s, 10 at +50 s on a 10/min key: the minute counters let 18 through."""
    key_id = generate_api_key()[0]
    admitted = check_exact(lambda now: store.consume_rate_limit(key_id, 10, now), SEEN_BURSTS, 10)
    assert admitted == SEEN_BURSTS[:10]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=arrivals(max_requests=30), limit=st.integers(min_value=1, max_value=8))
def test_every_arrival_pattern_is_answered_exactly(
    store: DeploymentStore, times: list[datetime], limit: int
) -> None:
    """Bursts at minute edges and thirds of a window, random times: admitted iff the 60 s before have
    room, so no 60-s window admits more than the limit; remaining and Retry-After exact."""
    key_id = generate_api_key()[0]
    check_exact(lambda now: store.consume_rate_limit(key_id, limit, now), times, limit)


def test_thirds_of_a_window(store: DeploymentStore) -> None:
    key_id = generate_api_key()[0]
    admitted = check_exact(lambda now: store.consume_rate_limit(key_id, 3, now), thirds(3), 3)
    assert len(admitted) == 4 * 3


@pytest.mark.parametrize(("threads", "each", "limit"), [(8, 3, 10), (12, 5, 25)])
def test_concurrent_consumers_at_one_instant_admit_exactly_the_limit(
    store: DeploymentStore, threads: int, each: int, limit: int
) -> None:
    """As concurrent instances do: every thread reads the log, decides, and writes if it admits."""
    key_id = generate_api_key()[0]
    barrier = threading.Barrier(threads)
    decisions: list[RateDecision] = []
    lock = threading.Lock()

    def consume() -> None:
        barrier.wait()
        for _ in range(each):
            decision = store.consume_rate_limit(key_id, limit, T0 + timedelta(seconds=5))
            with lock:
                decisions.append(decision)

    workers = [threading.Thread(target=consume) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(decisions) == threads * each
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == limit
    assert sorted(d.remaining for d in allowed) == list(range(limit))
    assert {d.retry_after_s for d in decisions if not d.allowed} == {60}
    assert not store.consume_rate_limit(key_id, limit, T0 + timedelta(seconds=64.999999)).allowed
    assert store.consume_rate_limit(key_id, limit, T0 + timedelta(seconds=65)).allowed


def test_concurrent_consumers_across_a_minute_edge(store: DeploymentStore) -> None:
    """Threads whose requests carry times either side of a minute boundary, in any order."""
    key_id = generate_api_key()[0]
    moments = [T0 + timedelta(seconds=59.8 + 0.1 * (n % 5)) for n in range(30)]  # 59.8 .. 60.2 s
    barrier = threading.Barrier(6)
    admitted: list[datetime] = []
    lock = threading.Lock()

    def consume(mine: list[datetime]) -> None:
        barrier.wait()
        for now in mine:
            if store.consume_rate_limit(key_id, 10, now).allowed:
                with lock:
                    admitted.append(now)

    workers = [threading.Thread(target=consume, args=(moments[n::6],)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(admitted) == 10
    assert not store.consume_rate_limit(key_id, 10, T0 + timedelta(seconds=90)).allowed


# --- usage -----------------------------------------------------------------------------------------


def test_usage_counters_add_up(store: DeploymentStore, owner: str) -> None:
    record = store.put_deployment(deployment(owner))
    empty = store.get_usage(record.deployment_id)
    assert (empty.request_count, empty.last_request_at, empty.total_inference_ms) == (0, None, 0.0)
    for i, ms in enumerate((1.5, 2.25, 3.0)):
        store.record_usage(record.deployment_id, ms, T0 + timedelta(seconds=i))
    usage = store.get_usage(record.deployment_id)
    assert usage.request_count == 3
    assert usage.total_inference_ms == pytest.approx(6.75)
    assert usage.last_request_at == T0 + timedelta(seconds=2)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError):
            store.record_usage(record.deployment_id, bad, T0)
    assert store.get_usage(record.deployment_id) == usage
    store.delete_deployment(owner, record.deployment_id)
    assert store.get_usage(record.deployment_id).request_count == 0


def test_an_inference_request_reads_once_and_writes_once_if_admitted(
    table_name: str, dynamodb: Any, owner: str
) -> None:
    """The key, the deployment and the rate log in one ``BatchGetItem``; one conditional ``PutItem`` for
    an admitted request, none for a refused one."""
    store = DynamoDeploymentStore(table_name, dynamodb)
    record, key_record, key = endpoint(owner)
    store.put_deployment(record, api_key=key_record)
    calls: list[str] = []

    def count(model: Any, **_: Any) -> None:
        calls.append(model.name)

    dynamodb.meta.events.register("before-call.dynamodb", count)
    try:
        answers = []
        for n in range(3):
            authorize_request(store, key, record.deployment_id)
            answers.append(store.consume_rate_limit(key_record.key_id, 2, T0 + timedelta(seconds=n)))
    finally:
        dynamodb.meta.events.unregister("before-call.dynamodb", count)
    assert [a.allowed for a in answers] == [True, True, False]
    assert calls == ["BatchGetItem", "PutItem", "BatchGetItem", "PutItem", "BatchGetItem"]


def test_a_lost_race_is_decided_again_on_the_log_it_returns(
    table_name: str, dynamodb: Any, owner: str
) -> None:
    """Two instances read the same log; the second to write loses the condition, and decides again on
    the log the failure returns (no other read): admitted while there is room, refused once it is full."""
    first, second = DynamoDeploymentStore(table_name, dynamodb), DynamoDeploymentStore(table_name, dynamodb)
    record, key_record, key = endpoint(owner)
    first.put_deployment(record, api_key=key_record)
    key_id = key_record.key_id
    authorize_request(first, key, record.deployment_id)
    authorize_request(second, key, record.deployment_id)
    assert first.consume_rate_limit(key_id, 2, T0 + timedelta(seconds=1)).allowed
    calls: list[str] = []

    def count(model: Any, **_: Any) -> None:
        calls.append(model.name)

    dynamodb.meta.events.register("before-call.dynamodb", count)
    try:
        late = second.consume_rate_limit(key_id, 2, T0 + timedelta(seconds=2))  # read before the first wrote
        assert (late.allowed, late.remaining) == (True, 0)
        assert calls == ["PutItem", "PutItem"]
        authorize_request(first, key, record.deployment_id)
        authorize_request(second, key, record.deployment_id)
        assert first.consume_rate_limit(key_id, 3, T0 + timedelta(seconds=3)).allowed
        calls.clear()
        full = second.consume_rate_limit(key_id, 3, T0 + timedelta(seconds=4))
        assert (full.allowed, full.retry_after_s) == (False, 57)  # the request at 1 s leaves at 61 s
        assert calls == ["PutItem"]
    finally:
        dynamodb.meta.events.unregister("before-call.dynamodb", count)


def test_the_largest_limit_fits_one_item(table_name: str, dynamodb: Any) -> None:
    store = DynamoDeploymentStore(table_name, dynamodb)
    key_id = generate_api_key()[0]
    limit = MAX_RATE_LIMIT
    # A full log: ``limit`` times over the last minute (written directly: ``limit`` requests take long).
    times = tuple(rate_moment(T0) + n * 5_000 for n in range(limit))
    dynamodb.put_item(TableName=table_name, Item=rate_log_item(key_id, times, "v1"))
    item = dynamodb.get_item(TableName=table_name, Key=rate_key(key_id))["Item"]
    assert len(item["admitted"]["B"]) == 8 + 4 * limit < 400_000 // 4  # 40 kB
    refused = store.consume_rate_limit(key_id, limit, T0 + timedelta(seconds=50))
    assert (refused.allowed, refused.retry_after_s) == (False, 10)
    admitted = store.consume_rate_limit(key_id, limit, T0 + timedelta(seconds=60))
    assert (admitted.allowed, admitted.remaining) == (True, 0)


def test_on_the_table_keys_are_hashes_and_rate_logs_expire(
    table_name: str, dynamodb: Any, owner: str
) -> None:
    store = DynamoDeploymentStore(table_name, dynamodb)
    record, key_record, key = endpoint(owner)
    store.put_deployment(record, api_key=key_record)
    item = dynamodb.get_item(
        TableName=table_name, Key={"PK": {"S": f"APIKEY#{key_record.key_id}"}, "SK": {"S": "META"}}
    )
    assert item["Item"]["key_hash"] == {"S": hash_api_key(key)}
    # hdk_{16 hex key id}_{43 url-safe base64 characters}: the secret itself may hold "_".
    secret = key.removeprefix(f"hdk_{key_record.key_id}_")
    assert len(secret) == 43
    assert secret not in str(item["Item"])

    now = T0 + timedelta(seconds=75.25)
    store.consume_rate_limit(key_record.key_id, 10, now)
    log = dynamodb.get_item(
        TableName=table_name, Key={"PK": {"S": f"RATE#{key_record.key_id}"}, "SK": {"S": "LOG"}}
    )["Item"]
    assert log["entity"] == {"S": "RATE_LOG"}
    # The newest time (microseconds), then each time's distance behind it.
    assert log["admitted"]["B"] == struct.pack(">qI", rate_moment(now), 0)
    # Once the newest time has left the window nothing in the log counts: TTL takes it after a grace.
    assert int(log["expires_at"]["N"]) == int(now.timestamp()) + 60 + 300


# --- the shared table ------------------------------------------------------------------------------


def test_deployments_do_not_show_in_the_registrys_listings(
    table_name: str, dynamodb: Any, owner: str
) -> None:
    registry = DynamoRegistry(table_name, dynamodb)
    deployments = DynamoDeploymentStore(table_name, dynamodb)
    registry.put_model(ModelRecord(owner=owner, model_id=_id("m"), model_name="net", version="1"))
    deployments.put_deployment(deployment(owner))
    assert [m.model_name for m in registry.list_models(owner).items] == ["net"]
    assert registry.list_export_jobs(owner).items == []
    assert len(deployments.list_deployments(owner).items) == 1


def test_batch_reads_retry_unprocessed_keys_then_fall_back_to_single_reads(owner: str) -> None:
    """DynamoDB may leave keys of a ``BatchGetItem`` unprocessed (throttling): they are asked for again,
    and after a few tries read one by one, so a request is never refused for the database's sake."""
    from botocore.stub import ANY, Stubber

    from heimdall.adapters.dynamodb.deployments import api_key_item, deployment_item

    record, key_record, key = endpoint(owner)
    items = {"key": api_key_item(key_record), "deployment": deployment_item(record)}
    keys = {name: {"PK": item["PK"], "SK": item["SK"]} for name, item in items.items()}
    client = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    store = DynamoDeploymentStore("t", client)
    stub = Stubber(client)
    # One key at a time, then both, each time with the other left unprocessed.
    stub.add_response(
        "batch_get_item",
        {"Responses": {"t": [items["key"]]}, "UnprocessedKeys": {"t": {"Keys": [keys["deployment"]]}}},
        {"RequestItems": ANY},
    )
    stub.add_response("batch_get_item", {"Responses": {"t": [items["deployment"]]}}, {"RequestItems": ANY})
    # Nothing processed five times: single consistent reads of both keys.
    for _ in range(5):
        stub.add_response(
            "batch_get_item",
            {"Responses": {"t": []}, "UnprocessedKeys": {"t": {"Keys": list(keys.values())}}},
            {"RequestItems": ANY},
        )
    for name in ("key", "deployment"):
        stub.add_response(
            "get_item", {"Item": items[name]}, {"TableName": "t", "Key": keys[name], "ConsistentRead": True}
        )
    with stub:
        assert authorize_request(store, key, record.deployment_id) == (key_record, record)
        assert store.get_api_key_and_deployment(key_record.key_id, record.deployment_id) == (
            key_record,
            record,
        )
    stub.assert_no_pending_responses()
