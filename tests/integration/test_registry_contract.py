"""One behavioural contract for both registries.

Every test runs twice: against :class:`InMemoryRegistry` (the fake logic's unit tests use) and against
:class:`DynamoRegistry` on the emulator's real HTTP endpoint (a moto server), with the table created from
``table_definition``. If the fake and the real thing ever disagree, one half of this suite fails.

Each test works under its own owner, so the DynamoDB half shares one table per module.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall.adapters.dynamodb.registry import DynamoRegistry
from heimdall.contracts.manifest import ExportFormat
from heimdall.domain.claims import IdempotencyClaims
from heimdall.domain.job_states import ALLOWED, TERMINAL
from heimdall.domain.records import (
    ExportJob,
    FormatSummary,
    ImportRecord,
    ImportStatus,
    JobResultSummary,
    JobStatus,
    MetricsSummary,
    ModelRecord,
    PendingUpload,
    UploadStatus,
)
from heimdall.domain.registry import Registry
from heimdall.domain.uploads import half_ref, upload_id_for
from heimdall.errors import (
    ConflictError,
    InvalidCursor,
    InvalidPagination,
    InvalidTransition,
    RecordNotFound,
    RegistryUnavailable,
)
from heimdall.testing.registry import InMemoryRegistry

S = JobStatus
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
#: A path from PENDING to every state.
PATH_TO = {
    S.PENDING: [],
    S.SUBMITTED: [S.SUBMITTED],
    S.RUNNING: [S.SUBMITTED, S.RUNNING],
    S.SUCCEEDED: [S.SUBMITTED, S.RUNNING, S.SUCCEEDED],
    S.FAILED: [S.SUBMITTED, S.FAILED],
    S.CANCELLED: [S.CANCELLED],
}
EDGES = [(source, target) for source, targets in ALLOWED.items() for target in sorted(targets)]


class Clock:
    """A settable clock for claims' expiry."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "dynamodb"])
def registry(request: pytest.FixtureRequest, clock: Clock) -> Iterator[Registry]:
    if request.param == "memory":
        yield InMemoryRegistry(now=clock)
    else:
        yield DynamoRegistry(
            request.getfixturevalue("table_name"), request.getfixturevalue("dynamodb"), now=clock
        )


@pytest.fixture
def claims(registry: Registry) -> IdempotencyClaims:
    """The same store as its idempotency claims: both implementations keep the two ports on one store."""
    assert isinstance(registry, InMemoryRegistry | DynamoRegistry)
    return registry


@pytest.fixture
def owner() -> str:
    return f"user-{uuid.uuid4().hex}"


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def model(owner: str, *, name: str = "net", version: str = "1.0.0", at: int = 0, **extra: Any) -> ModelRecord:
    return ModelRecord(
        owner=owner,
        model_id=extra.pop("model_id", _id("m")),
        model_name=name,
        version=version,
        created_at=T0 + timedelta(seconds=at),
        updated_at=T0 + timedelta(seconds=at),
        **extra,
    )


def job(owner: str, *, name: str = "net", version: str = "1.0.0", at: int = 0, **extra: Any) -> ExportJob:
    return ExportJob(
        owner=owner,
        job_id=extra.pop("job_id", _id("j")),
        model_name=name,
        version=version,
        checkpoint_bucket="ingest",
        checkpoint_key=f"checkpoints/{name}/{version}/model.safetensors",
        formats=[ExportFormat.ONNX],
        created_at=T0 + timedelta(seconds=at),
        updated_at=T0 + timedelta(seconds=at),
        **extra,
    )


def job_in(registry: Registry, owner: str, status: JobStatus, **extra: Any) -> ExportJob:
    created = registry.create_export_job(job(owner, **extra))
    for step in PATH_TO[status]:
        assert registry.transition_export_job(created.job_id, step) is not None
    return registry.get_export_job(owner, created.job_id)


def collect(fetch: Callable[[str | None], Any]) -> list[list[Any]]:
    """Every page of a listing, following cursors."""
    pages, cursor = [], None
    while True:
        page = fetch(cursor)
        pages.append(page.items)
        cursor = page.cursor
        if cursor is None:
            return pages


# --- models ----------------------------------------------------------------------------------------


def test_put_get_delete_model_round_trips_every_field(registry: Registry, owner: str) -> None:
    record = model(
        owner,
        architecture="localization_net",
        source="import",
        original_model_id="3f1c-sender-id",
        onnx_key="imported/net-1.0.0.onnx",
        onnx_sha256="a" * 64,
        onnx_size_bytes=201_234,
        bundle_key="bundles/m/net-v1.0.0.heimdall",
        opset=17,
        input_shape=["batch", 3, 128, 32],
        output_shape=[[-1, 2], [-1, 2]],
        components=["training_config", "performance_metrics"],
        metrics=MetricsSummary(final_val_loss=0.0145, final_val_accuracy=0.93, best_epoch=42),
    )
    assert registry.put_model(record) == record
    stored = registry.get_model(owner, record.model_id)
    assert stored == record
    assert stored.display_name == "net (Imported)"
    assert stored.metrics.final_val_loss == pytest.approx(0.0145)
    assert isinstance(stored.metrics.final_val_accuracy, float)

    registry.delete_model(owner, record.model_id)
    with pytest.raises(RecordNotFound) as caught:
        registry.get_model(owner, record.model_id)
    assert caught.value.http_status == 404
    with pytest.raises(RecordNotFound):
        registry.delete_model(owner, record.model_id)


def test_put_model_replaces_the_record(registry: Registry, owner: str) -> None:
    record = registry.put_model(model(owner))
    registry.put_model(record.model_copy(update={"bundle_key": "bundles/x.heimdall"}))
    assert registry.get_model(owner, record.model_id).bundle_key == "bundles/x.heimdall"
    assert len(registry.list_models(owner).items) == 1


def test_another_owners_model_is_not_found_not_listed_and_not_writable(
    registry: Registry, owner: str
) -> None:
    mine = registry.put_model(model(owner))
    other = f"{owner}-other"
    with pytest.raises(RecordNotFound):
        registry.get_model(other, mine.model_id)
    with pytest.raises(RecordNotFound):
        registry.delete_model(other, mine.model_id)
    assert registry.list_models(other).items == []
    assert registry.list_models(other, name="net").items == []
    assert registry.find_model_by_name_version(other, "net", "1.0.0") is None
    with pytest.raises(ConflictError):
        registry.put_model(mine.model_copy(update={"owner": other}))
    assert registry.get_model(owner, mine.model_id) == mine, "still there, unchanged"


def test_owner_names_cannot_forge_another_partition(registry: Registry, owner: str) -> None:
    registry.put_model(model(f"{owner}#NAME#net"))
    registry.put_model(model(owner, name="x#y"))
    assert registry.list_models(owner, name="net").items == []
    assert [m.model_name for m in registry.list_models(owner).items] == ["x#y"]


def test_list_models_newest_first_across_pages(registry: Registry, owner: str) -> None:
    created = [registry.put_model(model(owner, name=f"net{i % 2}", at=i)) for i in range(5)]
    pages = collect(lambda cursor: registry.list_models(owner, limit=2, cursor=cursor))
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [m.model_id for page in pages for m in page]
    assert listed == [m.model_id for m in reversed(created)]


def test_list_models_by_name(registry: Registry, owner: str) -> None:
    a = [registry.put_model(model(owner, name="alpha", version=str(i), at=i)) for i in range(3)]
    registry.put_model(model(owner, name="beta", at=10))
    pages = collect(lambda cursor: registry.list_models(owner, name="alpha", limit=2, cursor=cursor))
    assert [m.model_id for page in pages for m in page] == [m.model_id for m in reversed(a)]
    assert registry.list_models(owner, name="gamma").items == []


def test_find_model_by_name_version(registry: Registry, owner: str) -> None:
    registry.put_model(model(owner, name="net", version="1.0.0", at=0))
    wanted = registry.put_model(model(owner, name="net", version="2.0.0", at=1))
    registry.put_model(model(owner, name="net", version="3.0.0", at=2))
    assert registry.find_model_by_name_version(owner, "net", "2.0.0") == wanted
    assert registry.find_model_by_name_version(owner, "net", "9.9.9") is None
    assert registry.find_model_by_name_version(owner, "other", "2.0.0") is None


# --- cursors ---------------------------------------------------------------------------------------


def test_a_tampered_or_foreign_cursor_is_a_typed_400(registry: Registry, owner: str) -> None:
    for i in range(3):
        registry.put_model(model(owner, at=i))
        registry.create_export_job(job(owner, at=i))
    cursor = registry.list_models(owner, limit=1).cursor
    assert cursor is not None
    other = f"{owner}-other"
    registry.put_model(model(other))
    flipped = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
    attempts: list[Callable[[], Any]] = [
        lambda: registry.list_models(owner, cursor="not a cursor"),
        lambda: registry.list_models(owner, cursor=flipped),
        lambda: registry.list_models(owner, cursor=cursor + "x"),
        lambda: registry.list_models(other, cursor=cursor),  # another owner's position
        lambda: registry.list_models(owner, name="net", cursor=cursor),  # another listing
        lambda: registry.list_export_jobs(owner, cursor=cursor),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidCursor) as caught:
            attempt()
        assert caught.value.http_status == 400
    with pytest.raises(InvalidPagination):
        registry.list_models(owner, limit=0)


# --- export jobs -----------------------------------------------------------------------------------


def test_create_export_job_twice_is_a_conflict(registry: Registry, owner: str) -> None:
    first = registry.create_export_job(job(owner))
    with pytest.raises(ConflictError) as caught:
        registry.create_export_job(job(f"{owner}-other", job_id=first.job_id))
    assert caught.value.http_status == 409
    assert registry.get_export_job(owner, first.job_id) == first


def test_another_owners_job_is_not_found_but_the_job_state_path_sees_it(
    registry: Registry, owner: str
) -> None:
    created = registry.create_export_job(job(owner))
    other = f"{owner}-other"
    with pytest.raises(RecordNotFound):
        registry.get_export_job(other, created.job_id)
    assert registry.list_export_jobs(other).items == []
    assert registry.list_export_jobs(other, status=S.PENDING).items == []
    assert registry.get_export_job_any_owner(created.job_id) == created
    with pytest.raises(RecordNotFound):
        registry.get_export_job_any_owner("no-such-job")


def test_list_export_jobs_by_owner_name_and_status(registry: Registry, owner: str) -> None:
    a1 = job_in(registry, owner, S.SUCCEEDED, name="a", at=1)
    a2 = job_in(registry, owner, S.RUNNING, name="a", at=2)
    b3 = job_in(registry, owner, S.SUCCEEDED, name="b", at=3)
    a4 = job_in(registry, owner, S.SUCCEEDED, name="a", at=4)

    def ids(page_items: list[ExportJob]) -> list[str]:
        return [j.job_id for j in page_items]

    assert ids(registry.list_export_jobs(owner).items) == ids([a4, b3, a2, a1])
    assert ids(registry.list_export_jobs(owner, model_name="a").items) == ids([a4, a2, a1])
    assert ids(registry.list_export_jobs(owner, status=S.SUCCEEDED).items) == ids([a4, b3, a1])
    assert ids(registry.list_export_jobs(owner, model_name="a", status=S.SUCCEEDED).items) == ids([a4, a1])
    assert registry.list_export_jobs(owner, status=S.PENDING).items == []
    paged = collect(lambda c: registry.list_export_jobs(owner, status=S.SUCCEEDED, limit=2, cursor=c))
    assert [ids(p) for p in paged] == [ids([a4, b3]), ids([a1])]
    paged = collect(
        lambda c: registry.list_export_jobs(owner, model_name="a", status=S.SUCCEEDED, limit=1, cursor=c)
    )
    assert [ids(p) for p in paged] == [ids([a4]), ids([a1])]


@pytest.mark.parametrize(("source", "target"), EDGES, ids=[f"{s}->{t}" for s, t in EDGES])
def test_every_allowed_transition_applies_with_its_updates(
    registry: Registry, owner: str, source: JobStatus, target: JobStatus
) -> None:
    created = job_in(registry, owner, source)
    moved = registry.transition_export_job(
        created.job_id, target, updates={"reason": f"to {target}", "attempts": 2, "batch_job_id": "b-1"}
    )
    assert moved is not None
    assert moved.status is target
    assert (moved.reason, moved.attempts, moved.batch_job_id) == (f"to {target}", 2, "b-1")
    assert moved.created_at == created.created_at
    assert registry.get_export_job(owner, created.job_id) == moved
    # The status listing follows the job to its new state.
    assert [j.job_id for j in registry.list_export_jobs(owner, status=target).items] == [created.job_id]
    assert registry.list_export_jobs(owner, status=source).items == []


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_absorb_every_later_event(
    registry: Registry, owner: str, terminal: JobStatus
) -> None:
    done = job_in(registry, owner, terminal)
    for target in S:
        assert registry.transition_export_job(done.job_id, target, updates={"reason": "late"}) is None
    assert registry.get_export_job(owner, done.job_id) == done, "nothing written, not even updated_at"


def test_a_duplicate_event_is_ignored(registry: Registry, owner: str) -> None:
    running = job_in(registry, owner, S.RUNNING)
    assert registry.transition_export_job(running.job_id, S.RUNNING, updates={"attempts": 5}) is None
    assert registry.get_export_job(owner, running.job_id).attempts == 0


def test_out_of_order_events_never_regress(registry: Registry, owner: str) -> None:
    created = job_in(registry, owner, S.SUBMITTED)
    assert registry.transition_export_job(created.job_id, S.SUCCEEDED) is not None
    assert registry.transition_export_job(created.job_id, S.RUNNING) is None  # the late RUNNING
    assert registry.get_export_job(owner, created.job_id).status is S.SUCCEEDED

    running = job_in(registry, owner, S.RUNNING)
    assert registry.transition_export_job(running.job_id, S.SUBMITTED) is None
    assert registry.transition_export_job(running.job_id, S.PENDING) is None
    assert registry.get_export_job(owner, running.job_id).status is S.RUNNING


def test_an_event_ahead_of_a_missing_step_is_invalid(registry: Registry, owner: str) -> None:
    pending = job_in(registry, owner, S.PENDING)
    for target in (S.RUNNING, S.SUCCEEDED):
        with pytest.raises(InvalidTransition):
            registry.transition_export_job(pending.job_id, target)
    assert registry.get_export_job(owner, pending.job_id) == pending


def test_transition_of_an_unknown_job_is_not_found(registry: Registry) -> None:
    with pytest.raises(RecordNotFound):
        registry.transition_export_job("no-such-job", S.SUBMITTED)


def test_transition_records_the_result_summary(registry: Registry, owner: str) -> None:
    running = job_in(registry, owner, S.RUNNING)
    summary = JobResultSummary(
        status="SUCCEEDED",
        formats=[FormatSummary(format=ExportFormat.ONNX, status="built", file="model.onnx", size_bytes=12)],
        speedup={"1": 2.125, "32": 1.5},
        bundle_file="net-v1.0.0.heimdall",
    )
    done = registry.transition_export_job(
        running.job_id,
        S.SUCCEEDED,
        updates={"result": summary, "exit_code": 0, "output_prefix": "s3://artifacts/exports/j/"},
    )
    assert done is not None
    stored = registry.get_export_job(owner, running.job_id)
    assert stored.result == summary
    assert stored.exit_code == 0
    with pytest.raises(ValueError):
        registry.transition_export_job(running.job_id, S.FAILED, updates={"owner": "mallory"})


def test_racing_terminal_events_have_exactly_one_winner(registry: Registry, owner: str) -> None:
    submitted = job_in(registry, owner, S.SUBMITTED)
    barrier = threading.Barrier(8)
    results: list[ExportJob | None] = [None] * 8
    errors: list[BaseException] = []

    def race(i: int) -> None:
        target = S.SUCCEEDED if i % 2 else S.FAILED
        barrier.wait()
        try:
            results[i] = registry.transition_export_job(
                submitted.job_id, target, updates={"reason": f"thread {i}"}
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    final = registry.get_export_job(owner, submitted.job_id)
    assert final.status in TERMINAL
    assert (final.status, final.reason) == (winners[0].status, winners[0].reason)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.sampled_from(list(S)), min_size=1, max_size=8))
def test_a_random_event_sequence_obeys_the_machine(
    registry: Registry, owner: str, events: list[JobStatus]
) -> None:
    created = registry.create_export_job(job(owner))
    current = S.PENDING
    for target in events:
        try:
            result = registry.transition_export_job(created.job_id, target)
        except InvalidTransition:
            assert current is S.PENDING
            assert target in {S.RUNNING, S.SUCCEEDED}
            continue
        if result is None:
            assert target not in ALLOWED.get(current, frozenset())
        else:
            assert target in ALLOWED[current], f"{current} -> {target} is no edge"
            current = result.status
        assert registry.get_export_job(owner, created.job_id).status is current


# --- default export --------------------------------------------------------------------------------


def test_record_job_model_sets_the_model_in_any_state(registry: Registry, owner: str) -> None:
    done = job_in(registry, owner, JobStatus.SUCCEEDED)
    registry.record_job_model(done.job_id, "model-1")
    stored = registry.get_export_job(owner, done.job_id)
    assert (stored.model_id, stored.status) == ("model-1", JobStatus.SUCCEEDED)
    with pytest.raises(RecordNotFound):
        registry.record_job_model("no-such-job", "model-1")


def test_set_default_export_keeps_one_default_per_model_version(registry: Registry, owner: str) -> None:
    first = job_in(registry, owner, S.SUCCEEDED, at=1)
    second = job_in(registry, owner, S.SUCCEEDED, at=2)
    other_version = job_in(registry, owner, S.SUCCEEDED, version="2.0.0", at=3)
    assert registry.get_default_export(owner, "net", "1.0.0") is None

    assert registry.set_default_export(owner, first.job_id).is_default
    assert registry.set_default_export(owner, other_version.job_id).is_default
    now_default = registry.set_default_export(owner, second.job_id)
    assert now_default.is_default
    assert not registry.get_export_job(owner, first.job_id).is_default
    assert registry.get_export_job(owner, other_version.job_id).is_default, "another version is untouched"
    default = registry.get_default_export(owner, "net", "1.0.0")
    assert default is not None
    assert default.job_id == second.job_id
    assert registry.set_default_export(owner, second.job_id).is_default, "setting it again is harmless"

    running = job_in(registry, owner, S.RUNNING)
    with pytest.raises(ConflictError):
        registry.set_default_export(owner, running.job_id)
    with pytest.raises(RecordNotFound):
        registry.set_default_export(f"{owner}-other", second.job_id)
    assert registry.get_default_export(f"{owner}-other", "net", "1.0.0") is None


# --- imports ---------------------------------------------------------------------------------------


def test_import_records_are_owner_scoped_and_terminal_states_stick(registry: Registry, owner: str) -> None:
    pending = ImportRecord(owner=owner, import_id=_id("i"), bucket="ingest", key="bundles/net.heimdall")
    assert registry.put_import(pending) == pending
    assert registry.get_import(owner, pending.import_id) == pending
    with pytest.raises(RecordNotFound):
        registry.get_import(f"{owner}-other", pending.import_id)
    with pytest.raises(ConflictError):
        registry.put_import(pending.model_copy(update={"owner": f"{owner}-other"}))

    indexed = pending.model_copy(update={"status": ImportStatus.INDEXED, "model_id": "m-1"})
    assert registry.put_import(indexed) == indexed
    late = pending.model_copy(update={"status": ImportStatus.REJECTED, "reason": "duplicate delivery"})
    assert registry.put_import(late) == indexed, "a terminal import is returned, not overwritten"
    assert registry.put_import(pending) == indexed
    assert registry.get_import(owner, pending.import_id) == indexed
    with pytest.raises(RecordNotFound):
        registry.get_import(owner, "no-such-import")


def test_the_first_upload_revision_claims_an_import_and_keeps_it(
    registry: Registry, claims: IdempotencyClaims, owner: str
) -> None:
    record = ImportRecord(
        owner=owner,
        import_id=_id("i"),
        bucket="ingest",
        key="bundles/imports/x/bundle.heimdall",
        upload_max_bytes=4096,
    )
    registry.put_import(record)
    claimed = claims.claim_import_upload(record.import_id, "etag-a")
    assert claimed is not None and claimed.upload_revision == "etag-a" and claimed.upload_max_bytes == 4096
    assert claims.claim_import_upload(record.import_id, "etag-a") == claimed  # a redelivery
    assert claims.claim_import_upload(record.import_id, "etag-b") is None  # a reused form
    # Settling the import (a put of the claimed record) keeps the claim.
    registry.put_import(claimed.model_copy(update={"status": ImportStatus.INDEXED, "model_id": "m-1"}))
    assert registry.get_import(owner, record.import_id).upload_revision == "etag-a"
    assert claims.claim_import_upload(record.import_id, "etag-b") is None
    with pytest.raises(RecordNotFound):
        claims.claim_import_upload("no-such-import", "etag-a")


def test_of_concurrent_upload_revisions_exactly_one_claims_the_import(
    registry: Registry, claims: IdempotencyClaims, owner: str
) -> None:
    record = ImportRecord(owner=owner, import_id=_id("i"), bucket="ingest", key="k")
    registry.put_import(record)
    results: dict[str, ImportRecord | None] = {}

    def claim(revision: str) -> None:
        results[revision] = claims.claim_import_upload(record.import_id, revision)

    threads = [threading.Thread(target=claim, args=(f"etag-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [revision for revision, claimed in results.items() if claimed is not None]
    assert len(winners) == 1
    assert registry.get_import(owner, record.import_id).upload_revision == winners[0]


def test_an_import_is_found_by_id_alone_with_its_component_selection(registry: Registry, owner: str) -> None:
    # The ingest function learns only the import id (from the object key) and needs owner and selection.
    record = ImportRecord(
        owner=owner,
        import_id=_id("i"),
        bucket="ingest",
        key="bundles/imports/x/bundle.heimdall",
        components=["training_config", "sample_predictions"],
        upload_expires_at=datetime(2026, 11, 25, 12, 15, 30, 123456, tzinfo=UTC),
    )
    registry.put_import(record)
    found = registry.get_import_any_owner(record.import_id)
    assert found == record
    assert (found.owner, found.components) == (owner, ["training_config", "sample_predictions"])
    everything = record.model_copy(update={"import_id": _id("i"), "components": None})
    registry.put_import(everything)
    assert registry.get_import_any_owner(everything.import_id).components is None
    none_kept = record.model_copy(update={"import_id": _id("i"), "components": []})
    registry.put_import(none_kept)
    assert registry.get_import_any_owner(none_kept.import_id).components == []
    with pytest.raises(RecordNotFound):
        registry.get_import_any_owner("no-such-import")


# --- idempotency -----------------------------------------------------------------------------------


def test_claim_once_is_true_once_until_it_expires_or_is_released(
    claims: IdempotencyClaims, clock: Clock
) -> None:
    key = f"s3://ingest/checkpoints/net/1.0.0/model.safetensors#{uuid.uuid4().hex}"
    assert claims.claim_once(key, ttl_s=3600) is True
    assert claims.claim_once(key, ttl_s=3600) is False
    assert claims.claim_once(f"{key}-other", ttl_s=3600) is True
    clock.now += timedelta(seconds=3599)
    assert claims.claim_once(key, ttl_s=3600) is False
    clock.now += timedelta(seconds=1)
    assert claims.claim_once(key, ttl_s=60) is True, "an expired claim is free before TTL deletes it"
    claims.release_claim(key)
    assert claims.claim_once(key, ttl_s=60) is True
    with pytest.raises(ValueError):
        claims.claim_once(key, ttl_s=0)


def test_claim_once_long_keys(claims: IdempotencyClaims) -> None:
    key = "s3://ingest/" + "k%#/" * 700
    assert claims.claim_once(key, ttl_s=60) is True
    assert claims.claim_once(key, ttl_s=60) is False


def test_concurrent_claims_have_exactly_one_winner(claims: IdempotencyClaims) -> None:
    key = f"etag-{uuid.uuid4().hex}"
    barrier = threading.Barrier(8)
    results: list[bool] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        won = claims.claim_once(key, ttl_s=3600)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_claim_request_keeps_the_first_fingerprint_for_ever(claims: IdempotencyClaims, clock: Clock) -> None:
    key = f"api-export-job-request#{uuid.uuid4().hex}"
    assert claims.claim_request(key, "a" * 64) == "a" * 64
    assert claims.claim_request(key, "a" * 64) == "a" * 64
    assert claims.claim_request(key, "b" * 64) == "a" * 64, "the first request's fingerprint stays"
    clock.now += timedelta(days=400)  # not a lease: a key names its first request as long as its job lives
    assert claims.claim_request(key, "b" * 64) == "a" * 64
    assert claims.claim_request(f"{key}-other", "b" * 64) == "b" * 64


def test_concurrent_request_claims_agree_on_one_fingerprint(claims: IdempotencyClaims) -> None:
    key = f"api-export-job-request#{uuid.uuid4().hex}"
    barrier = threading.Barrier(8)
    seen: list[str] = []
    lock = threading.Lock()

    def claim(n: int) -> None:
        barrier.wait()
        stored = claims.claim_request(key, f"{n:064d}")
        with lock:
            seen.append(stored)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and len(seen) == 8


def test_is_claimed_reads_without_claiming(claims: IdempotencyClaims, clock: Clock) -> None:
    key = f"done#{uuid.uuid4().hex}"
    assert claims.is_claimed(key) is False
    assert claims.claim_once(key, ttl_s=60) is True  # looking did not claim it
    assert claims.is_claimed(key) is True
    clock.now += timedelta(seconds=60)
    assert claims.is_claimed(key) is False
    claims.claim_once(key, ttl_s=60)
    claims.release_claim(key)
    assert claims.is_claimed(key) is False


# --- half pairs (a checkpoint or manifest waiting for the other half) --------------------------------


def lone_half(
    owner: str, *, half: str = "manifest", revision: str = "r1", at: int = 0, prefix: str | None = None
) -> PendingUpload:
    prefix = prefix or f"checkpoints/{owner}/1.0.0/"
    key = prefix + ("heimdall.json" if half == "manifest" else "model.safetensors")
    return PendingUpload(
        owner=owner,
        upload_id=upload_id_for("ingest", prefix),
        bucket="ingest",
        prefix=prefix,
        model_name=owner,
        version="1.0.0",
        half=half,
        key=key,
        revision=revision,
        etag=revision,
        size_bytes=12,
        refs=[half_ref("ingest", key, revision)],
        created_at=T0 + timedelta(seconds=at),
        updated_at=T0 + timedelta(seconds=at),
    )


def pairing(first: PendingUpload, *, revision: str = "c1", job_id: str = "job-1") -> PendingUpload:
    """The other half arrived: the PAIRED record its handler writes."""
    other = first.prefix + ("model.safetensors" if first.half == "manifest" else "heimdall.json")
    return first.model_copy(
        update={
            "status": UploadStatus.PAIRED,
            "half": first.missing,
            "key": other,
            "revision": revision,
            "refs": [half_ref("ingest", other, revision), first.refs[0]],
            "job_id": job_id,
            "paired_key": first.key,
        }
    )


def due(registry: Registry, owner: str, *, after_s: int, lease_s: int = 300) -> list[PendingUpload]:
    now = T0 + timedelta(seconds=after_s)
    found = registry.due_uploads(
        arrived_before=now - timedelta(seconds=100),
        rejecting_before=now - timedelta(seconds=lease_s),
        limit=1000,
    )
    return [u for u in found if u.owner == owner]


def test_a_lone_half_is_awaiting_listed_and_owner_scoped(registry: Registry, owner: str) -> None:
    record = lone_half(owner)
    stored = registry.await_upload(record)
    assert stored.status is UploadStatus.AWAITING and stored.missing == "checkpoint"
    assert registry.get_upload(owner, record.upload_id) == record
    assert [u.upload_id for u in registry.list_uploads(owner).items] == [record.upload_id]
    assert [u.upload_id for u in registry.list_uploads(owner, status=UploadStatus.AWAITING).items] == [
        record.upload_id
    ]
    assert registry.list_uploads(owner, status=UploadStatus.PAIRED).items == []
    with pytest.raises(RecordNotFound):
        registry.get_upload("someone-else", record.upload_id)
    # The same half again, or another lone revision: the round (and its clock) stays as it was.
    assert registry.await_upload(lone_half(owner, revision="r2", at=50)) == record


def test_the_other_half_settles_the_round_paired_keeping_its_first_half(
    registry: Registry, owner: str
) -> None:
    first = registry.await_upload(lone_half(owner))
    paired = registry.pair_upload(pairing(first))
    assert paired is not None and paired.status is UploadStatus.PAIRED
    stored = registry.get_upload(owner, first.upload_id)
    assert (stored.status, stored.job_id, stored.half, stored.key) == (
        UploadStatus.PAIRED,
        "job-1",
        "manifest",
        first.key,
    )
    assert stored.paired_key == first.prefix + "model.safetensors"
    assert due(registry, owner, after_s=10_000) == []
    # The lone half's notification, late: the round already holds it.
    assert registry.await_upload(first).status is UploadStatus.PAIRED


def test_a_pair_with_no_round_yet_is_recorded_so_a_late_lone_write_cannot_dangle(
    registry: Registry, owner: str
) -> None:
    first = lone_half(owner)
    assert registry.pair_upload(pairing(first)) is not None
    assert registry.await_upload(first).status is UploadStatus.PAIRED
    assert due(registry, owner, after_s=10_000) == []


def test_the_sweep_sees_only_rounds_past_the_timeout_and_rejects_each_once(
    registry: Registry, owner: str, clock: Clock
) -> None:
    record = registry.await_upload(lone_half(owner))
    assert due(registry, owner, after_s=50) == []
    (seen,) = due(registry, owner, after_s=101)
    clock.now = T0 + timedelta(seconds=101)
    rejected = registry.begin_upload_rejection(seen, code="INCOMPLETE_UPLOAD", reason="alone")
    assert rejected is not None and rejected.status is UploadStatus.REJECTED
    assert rejected.rejecting_since == clock.now
    assert registry.begin_upload_rejection(seen, code="INCOMPLETE_UPLOAD", reason="again") is None
    # A pairing now is refused: the half that was rejected never starts a job.
    assert registry.pair_upload(pairing(record)) is None
    registry.finish_upload_rejection(rejected, quarantine_key="quarantine/x/original")
    stored = registry.get_upload(owner, record.upload_id)
    assert (stored.status, stored.error_code, stored.quarantine_key, stored.rejecting_since) == (
        UploadStatus.REJECTED,
        "INCOMPLETE_UPLOAD",
        "quarantine/x/original",
        None,
    )
    assert due(registry, owner, after_s=10_000, lease_s=1) == []
    assert [u.upload_id for u in registry.list_uploads(owner, status=UploadStatus.REJECTED).items] == [
        record.upload_id
    ]


def test_an_announcement_left_unfinished_is_due_again_after_its_lease(
    registry: Registry, owner: str, clock: Clock
) -> None:
    registry.await_upload(lone_half(owner))
    (seen,) = due(registry, owner, after_s=101)
    clock.now = T0 + timedelta(seconds=101)
    crashed = registry.begin_upload_rejection(seen, code="INCOMPLETE_UPLOAD", reason="alone")
    assert crashed is not None
    # While it is being announced, a new lone half must wait (retryable), and nothing is due yet.
    with pytest.raises(RegistryUnavailable):
        registry.await_upload(lone_half(owner, half="checkpoint", revision="c9"))
    assert due(registry, owner, after_s=200) == []
    (again,) = due(registry, owner, after_s=500)
    clock.now = T0 + timedelta(seconds=500)
    taken_over = registry.begin_upload_rejection(again, code="INCOMPLETE_UPLOAD", reason="alone")
    assert taken_over is not None and taken_over.rejecting_since == clock.now
    registry.finish_upload_rejection(crashed, quarantine_key="late")  # the first sweep, back: ignored
    assert registry.get_upload(seen.owner, seen.upload_id).rejecting_since == clock.now
    registry.finish_upload_rejection(taken_over, quarantine_key="q")
    assert registry.get_upload(seen.owner, seen.upload_id).quarantine_key == "q"


def test_after_a_settled_rejection_a_new_lone_half_starts_a_new_round(registry: Registry, owner: str) -> None:
    registry.await_upload(lone_half(owner))
    (seen,) = due(registry, owner, after_s=101)
    rejected = registry.begin_upload_rejection(seen, code="INCOMPLETE_UPLOAD", reason="alone")
    assert rejected is not None
    registry.finish_upload_rejection(rejected, quarantine_key=None)
    fresh = lone_half(owner, half="checkpoint", revision="c2", at=200)
    assert registry.await_upload(fresh) == fresh
    # A re-uploaded manifest (a new revision) pairs with it.
    assert registry.pair_upload(pairing(fresh, revision="r2")) is not None


@pytest.mark.parametrize("attempt", range(3))
def test_a_racing_pairing_and_rejection_have_exactly_one_winner(
    registry: Registry, owner: str, attempt: int
) -> None:
    record = registry.await_upload(lone_half(owner))
    (seen,) = due(registry, owner, after_s=101)
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def reject() -> None:
        barrier.wait()
        done = registry.begin_upload_rejection(seen, code="INCOMPLETE_UPLOAD", reason="alone")
        outcomes.append("rejected" if done is not None else "lost")

    def pair() -> None:
        barrier.wait()
        done = registry.pair_upload(pairing(record))
        outcomes.append("paired" if done is not None else "refused")

    threads = [threading.Thread(target=reject) for _ in range(3)] + [
        threading.Thread(target=pair) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = registry.get_upload(owner, record.upload_id).status
    if final is UploadStatus.REJECTED:
        assert outcomes.count("rejected") == 1 and "paired" not in outcomes
    else:
        assert final is UploadStatus.PAIRED and "rejected" not in outcomes


def job_halves(first: PendingUpload, *, revision: str | None = None) -> dict[str, str]:
    """What an API job converts: the awaiting half (in ``revision``) and a manifest from elsewhere."""
    manifest = "checkpoints/shared/1.0.0/net.json"
    return {
        half_ref("ingest", first.key, revision or first.revision): first.key,
        half_ref("ingest", manifest, "m1"): manifest,
    }


def test_an_api_job_settles_only_a_round_awaiting_the_very_half_it_converts(
    registry: Registry, owner: str
) -> None:
    first = registry.await_upload(lone_half(owner, half="checkpoint"))
    # Another revision of the half, or no round at all: nothing is written.
    other_revision = job_halves(first, revision="r2")
    assert registry.pair_upload_with_job(first.upload_id, other_revision, job_id="j") is None
    assert registry.pair_upload_with_job(upload_id_for("ingest", "checkpoints/x/1/"), {}, job_id="j") is None
    assert registry.get_upload(owner, first.upload_id) == first
    used = job_halves(first)
    paired = registry.pair_upload_with_job(first.upload_id, used, job_id="job-api")
    assert paired is not None
    stored = registry.get_upload(owner, first.upload_id)  # still the drop owner's
    assert stored == paired
    assert (stored.status, stored.job_id, stored.key, stored.paired_key) == (
        UploadStatus.PAIRED,
        "job-api",
        first.key,
        "checkpoints/shared/1.0.0/net.json",
    )
    assert stored.refs == list(used)
    assert due(registry, owner, after_s=10_000) == []
    # Settled: a repeat, or another job, changes nothing.
    assert registry.pair_upload_with_job(first.upload_id, used, job_id="job-2") is None
    assert registry.get_upload(owner, first.upload_id) == stored


def test_an_api_job_after_the_sweep_leaves_the_round_rejected(registry: Registry, owner: str) -> None:
    first = registry.await_upload(lone_half(owner))
    (seen,) = due(registry, owner, after_s=101)
    assert registry.begin_upload_rejection(seen, code="INCOMPLETE_UPLOAD", reason="alone") is not None
    assert registry.pair_upload_with_job(first.upload_id, job_halves(first), job_id="job-api") is None
    assert registry.get_upload(owner, first.upload_id).status is UploadStatus.REJECTED


@pytest.mark.parametrize("attempt", range(3))
def test_an_api_job_and_the_sweep_racing_have_exactly_one_winner(
    registry: Registry, owner: str, attempt: int
) -> None:
    first = registry.await_upload(lone_half(owner))
    (seen,) = due(registry, owner, after_s=101)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def reject() -> None:
        barrier.wait()
        done = registry.begin_upload_rejection(seen, code="INCOMPLETE_UPLOAD", reason="alone")
        outcomes.append("rejected" if done is not None else "lost")

    def pair(job_id: str) -> None:
        barrier.wait()
        done = registry.pair_upload_with_job(first.upload_id, job_halves(first), job_id=job_id)
        outcomes.append("paired" if done is not None else "left")

    threads = [threading.Thread(target=reject) for _ in range(2)]
    threads += [threading.Thread(target=pair, args=(f"job-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = registry.get_upload(owner, first.upload_id)
    assert outcomes.count("rejected") + outcomes.count("paired") == 1, outcomes
    assert final.status is (UploadStatus.PAIRED if "paired" in outcomes else UploadStatus.REJECTED)
