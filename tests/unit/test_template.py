"""The SAM template agrees with the code it deploys.

``template.yaml`` is parsed with a loader that turns CloudFormation's short-form tags into their long
form (``!Ref X`` → ``{"Ref": "X"}``, ``!GetAtt A.B`` → ``{"Fn::GetAtt": ["A", "B"]}``), so references
can be followed. ``cfn-lint`` and ``sam validate --lint`` check the template against CloudFormation
itself (``make lint-template``, run by CI); these tests check what only this project knows: handler
files, the environment ``heimdall.settings`` reads, the queue and retry semantics the code relies on.
"""

from __future__ import annotations

import fnmatch
import importlib
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.routes import API_ROUTES, INFER_ROUTES

from heimdall.errors import ConversionError
from heimdall.settings import ResourceNames, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"
SAMCONFIG = REPO_ROOT / "samconfig.toml"

#: The resource type each name in ``Settings.resource_names()`` must come from.
EXPECTED_SOURCES = {
    "HEIMDALL_INGEST_BUCKET": "AWS::S3::Bucket",
    "HEIMDALL_ARTIFACTS_BUCKET": "AWS::S3::Bucket",
    "HEIMDALL_TABLE_NAME": "AWS::DynamoDB::Table",
    "HEIMDALL_EVENT_BUS_NAME": "AWS::Events::EventBus",
    "HEIMDALL_JOB_QUEUE": "AWS::Batch::JobQueue",
    "HEIMDALL_JOB_DEFINITION": "AWS::Batch::JobDefinition",
}


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A SafeLoader that reads CloudFormation's short-form intrinsic functions as their long form."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


@cache
def _template() -> dict[str, Any]:
    loaded = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)
    assert isinstance(loaded, dict)
    return loaded


def _resources(kind: str | None = None) -> dict[str, dict[str, Any]]:
    resources: dict[str, dict[str, Any]] = _template()["Resources"]
    return {name: r for name, r in resources.items() if kind is None or r["Type"] == kind}


def _props(name: str) -> dict[str, Any]:
    props: dict[str, Any] = _resources()[name].get("Properties", {})
    return props


def _global_function() -> dict[str, Any]:
    globals_: dict[str, Any] = _template().get("Globals", {}).get("Function", {})
    return globals_


def _function_setting(name: str, key: str) -> Any:
    """A function's property, falling back to ``Globals.Function`` as SAM does."""
    return _props(name).get(key, _global_function().get(key))


def _function_env(name: str) -> dict[str, Any]:
    """SAM merges the function's variables over the global ones."""
    merged: dict[str, Any] = dict(_global_function().get("Environment", {}).get("Variables", {}))
    merged.update(_props(name).get("Environment", {}).get("Variables", {}))
    return merged


def _ref_target(value: Any) -> str:
    """The logical id a ``Ref`` or ``Fn::GetAtt`` points at."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return str(value["Fn::GetAtt"][0])
    raise AssertionError(f"expected a Ref or GetAtt, got {value!r}")


FUNCTIONS = sorted(_resources("AWS::Serverless::Function"))


def test_the_template_declares_the_pipeline_and_api_functions() -> None:
    assert {"IngestFunction", "JobStateFunction", "ApiFunction"} <= set(FUNCTIONS)


def _policy_statements(function: str) -> list[dict[str, Any]]:
    """The statements of a function's inline policy documents (not SAM's policy templates)."""
    return [
        s
        for policy in _props(function).get("Policies", [])
        if isinstance(policy, dict) and "Statement" in policy
        for s in policy["Statement"]
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- functions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_handler_file_exists_and_defines_its_handler(function: str) -> None:
    code_uri = _function_setting(function, "CodeUri")
    handler = _function_setting(function, "Handler")
    assert isinstance(code_uri, str)
    assert code_uri.startswith("functions/"), "each Lambda lives in its own folder under functions/"
    module, _, attribute = handler.rpartition(".")
    path = REPO_ROOT / code_uri / f"{module.replace('.', '/')}.py"
    assert path.is_file(), f"{function}: {path.relative_to(REPO_ROOT)} does not exist"
    assert f"def {attribute}(" in path.read_text(encoding="utf-8")


def _resource_name_variables() -> set[str]:
    """``HEIMDALL_*`` variables ``Settings.resource_names()`` reads: the stage and one per name."""
    fields = set(ResourceNames.model_fields)
    assert fields <= set(Settings.model_fields), "every resource name is a Settings field"
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {f"{prefix}STAGE"} | {f"{prefix}{field.upper()}" for field in fields}


def test_the_expected_sources_cover_every_resource_name() -> None:
    assert set(EXPECTED_SOURCES) | {"HEIMDALL_STAGE"} == _resource_name_variables()


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_gets_every_resource_name_from_the_resource_itself(function: str) -> None:
    env = _function_env(function)
    missing = _resource_name_variables() - set(env)
    assert not missing, f"{function} lacks {sorted(missing)}"
    assert env["HEIMDALL_STAGE"] == {"Ref": "Stage"}
    for variable, kind in EXPECTED_SOURCES.items():
        target = _ref_target(env[variable])
        assert _resources()[target]["Type"] == kind, f"{function}: {variable} -> {target}"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_has_powertools_settings_and_tracing(function: str) -> None:
    env = _function_env(function)
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "Heimdall"
    assert env.get("POWERTOOLS_SERVICE_NAME"), f"{function} has no POWERTOOLS_SERVICE_NAME"
    assert _function_setting(function, "Tracing") == "Active"
    assert _function_setting(function, "Runtime") == "python3.12"
    layers = _function_setting(function, "Layers")
    assert {"Ref": "CoreLayer"} in layers


def _heimdall_variables() -> list[tuple[str, str, Any]]:
    """(function, variable, value) for every ``HEIMDALL_*`` variable a function gets."""
    return [
        (function, variable, value)
        for function in FUNCTIONS
        for variable, value in _function_env(function).items()
        if variable.startswith("HEIMDALL_")
    ]


def _values_to_check(value: Any) -> list[Any]:
    """A literal, or every value a referenced template parameter may take at its bounds."""
    if not isinstance(value, dict):
        return [value]
    target = _ref_target(value)
    parameter = _template()["Parameters"].get(target)
    if parameter is None:
        return []  # a resource's name: the resource-name tests check those
    candidates = [parameter.get(key) for key in ("Default", "MinValue", "MaxValue")]
    candidates += parameter.get("AllowedValues", [])
    return [c for c in candidates if c is not None]


def test_every_heimdall_variable_is_a_setting_and_every_value_it_may_take_parses() -> None:
    """A misspelt variable would be ignored silently (``extra="ignore"``); a value out of range would
    fail every invocation at start-up. Parameters are checked at their default and their bounds."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    for function, variable, value in _heimdall_variables():
        field = variable.removeprefix(prefix).lower()
        assert field in Settings.model_fields, f"{function}: {variable} is not a Settings field"
        for candidate in _values_to_check(value):
            Settings.model_validate({field: str(candidate)})  # raises on a value Settings refuses


def test_service_names_are_distinct() -> None:
    names = [_function_env(f)["POWERTOOLS_SERVICE_NAME"] for f in FUNCTIONS]
    assert len(names) == len(set(names))


def test_the_ingest_function_gets_the_onnx_layer_and_room_for_bundles() -> None:
    assert {"Ref": "OnnxLayer"} in _function_setting("IngestFunction", "Layers")
    assert _props("IngestFunction")["EphemeralStorage"]["Size"] >= 4096


# --- queues ---------------------------------------------------------------------------------------


def _sqs_event(function: str) -> dict[str, Any]:
    events = [e for e in _props(function).get("Events", {}).values() if e["Type"] == "SQS"]
    assert len(events) == 1, f"{function} should have exactly one SQS event source"
    props: dict[str, Any] = events[0]["Properties"]
    return props


def test_the_ingest_function_reads_the_ingest_queue_with_partial_batch_failures() -> None:
    event = _sqs_event("IngestFunction")
    assert _ref_target(event["Queue"]) == "IngestQueue"
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= event["BatchSize"] <= 10


def test_the_ingest_queue_redrives_to_its_dead_letter_queue() -> None:
    redrive = _props("IngestQueue")["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["IngestDeadLetterQueue", "Arn"]}
    # The local stack's queues redrive after the same number of receives (one constant there).
    from heimdall.local.stack import MAX_RECEIVE_COUNT

    assert redrive["maxReceiveCount"] == MAX_RECEIVE_COUNT
    assert _resources()["IngestDeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    # The DLQ keeps messages longer than the source queue, or they could expire on the way.
    assert (
        _props("IngestDeadLetterQueue")["MessageRetentionPeriod"]
        > _props("IngestQueue")["MessageRetentionPeriod"]
    )


def test_the_visibility_timeout_is_at_least_six_times_the_ingest_timeout() -> None:
    timeout = _function_setting("IngestFunction", "Timeout")
    assert isinstance(timeout, int), "the ingest Timeout must be a literal for this check"
    assert _props("IngestQueue")["VisibilityTimeout"] >= 6 * timeout


def test_object_created_rules_feed_the_ingest_queue_and_may_send_to_it() -> None:
    rules = {
        name: props
        for name, r in _resources("AWS::Events::Rule").items()
        if (props := r["Properties"])["EventPattern"].get("source") == ["aws.s3"]
    }
    buckets = set()
    for name, props in rules.items():
        assert props["EventBusName"] == "default", f"{name}: S3 publishes on the default bus"
        assert props["EventPattern"]["detail-type"] == ["Object Created"]
        assert [_ref_target(t["Arn"]) for t in props["Targets"]] == ["IngestQueue"]
        buckets |= {_ref_target(b) for b in props["EventPattern"]["detail"]["bucket"]["name"]}
    assert buckets == {"IngestBucket", "ArtifactsBucket"}

    policy = next(
        p
        for p in _resources("AWS::SQS::QueuePolicy").values()
        if p["Properties"]["Queues"] == [{"Ref": "IngestQueue"}]
    )["Properties"]["PolicyDocument"]
    allow = next(s for s in policy["Statement"] if s["Effect"] == "Allow")
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    sources = {_ref_target(arn) for arn in allow["Condition"]["ArnEquals"]["aws:SourceArn"]}
    assert sources == set(rules)


def test_artifacts_written_by_the_ingest_function_cannot_retrigger_it() -> None:
    """Only ``exports/`` (a conversion job's outputs) of the artifacts bucket reaches the queue."""
    pattern = _props("ArtifactsBucketExportsRule")["EventPattern"]["detail"]
    assert pattern["object"]["key"] == [{"prefix": "exports/"}]


# --- job state ------------------------------------------------------------------------------------


def test_batch_state_changes_of_this_stacks_queue_reach_the_job_state_function() -> None:
    rules = [
        e["Properties"]
        for e in _props("JobStateFunction")["Events"].values()
        if e["Type"] == "EventBridgeRule"
    ]
    assert len(rules) == 1
    pattern = rules[0]["Pattern"]
    assert pattern["source"] == ["aws.batch"]
    assert pattern["detail-type"] == ["Batch Job State Change"]
    assert pattern["detail"]["jobQueue"] == [{"Ref": "ConversionJobQueue"}]
    # Every state the use case acts on (heimdall.logic.job_state) gets through.
    assert {"RUNNING", "SUCCEEDED", "FAILED"} <= set(pattern["detail"]["status"])


def test_the_sweep_function_runs_on_a_schedule_with_the_pair_timeout() -> None:
    (schedule,) = [e["Properties"] for e in _props("SweepFunction")["Events"].values()]
    assert schedule["Schedule"].startswith("rate(") and schedule["Enabled"] is True
    assert schedule["Name"] == {"Fn::Sub": "heimdall-${Stage}-sweep"}
    assert _function_setting("SweepFunction", "CodeUri") == "functions/sweep"
    timeout = _function_env("SweepFunction")["HEIMDALL_PAIR_TIMEOUT_S"]
    assert _ref_target(timeout) == "PairTimeoutSeconds"
    assert _template()["Parameters"]["PairTimeoutSeconds"]["Default"] == Settings().pair_timeout_s


def test_the_sweep_function_writes_only_quarantine_copies() -> None:
    writes = [
        s
        for s in _policy_statements("SweepFunction")
        if any(a.startswith("s3:Put") for a in _as_list(s["Action"]))
    ]
    assert writes and all(s["Resource"] == {"Fn::Sub": "${ArtifactsBucket.Arn}/quarantine/*"} for s in writes)


# --- HTTP API -------------------------------------------------------------------------------------

#: Which function serves which routes, and the module of its resolver.
ROUTED_FUNCTIONS = {
    "ApiFunction": (API_ROUTES, "heimdall.api.app"),
    "InferFunction": (INFER_ROUTES, "heimdall.inference.app"),
}
#: Routes without the JWT authorizer: the OpenAPI document, and the inference function's (API keys).
PUBLIC_ROUTES = frozenset({("GET", "/api/v1/openapi.json")}) | INFER_ROUTES


def _http_api_events() -> dict[tuple[str, str], dict[str, Any]]:
    """Every HttpApi event of every function, by route; a route declared twice fails."""
    events: dict[tuple[str, str], dict[str, Any]] = {}
    for function in FUNCTIONS:
        for name, event in _props(function).get("Events", {}).items():
            if event["Type"] != "HttpApi":
                continue
            props: dict[str, Any] = event["Properties"]
            route = (props["Method"].upper(), props["Path"])
            assert route not in events, f"{function}.{name}: {route} is declared twice"
            events[route] = {**props, "_function": function}
    return events


def test_every_route_is_an_http_api_event_of_its_function() -> None:
    events = _http_api_events()
    every = API_ROUTES | INFER_ROUTES
    assert set(events) == every, {
        "missing": sorted(every - set(events)),
        "unexpected": sorted(set(events) - every),
    }
    for route, props in events.items():
        expected = "ApiFunction" if route in API_ROUTES else "InferFunction"
        assert props["_function"] == expected, route
        assert props["ApiId"] == {"Ref": "HttpApi"}, route
        # Powertools' APIGatewayHttpResolver reads payload format 2.0 (SAM's default for HttpApi).
        assert props.get("PayloadFormatVersion", "2.0") == "2.0", route


def _resolver_routes(module_name: str) -> set[tuple[str, str]]:
    """(method, path) of every route registered on the resolver(s) of ``module_name``."""
    module = importlib.import_module(module_name)
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

    resolvers = {id(v): v for v in vars(module).values() if isinstance(v, ApiGatewayResolver)}
    assert resolvers, f"{module_name} defines no Powertools resolver"
    # Powertools keeps the registered routes (routers included) in these two lists; openapi_path is
    # the path in OpenAPI's (and API Gateway's) {name} syntax.
    return {
        (route.method.upper(), route.openapi_path)
        for resolver in resolvers.values()
        for route in [*resolver._static_routes, *resolver._dynamic_routes]
    }


@pytest.mark.parametrize("function", sorted(ROUTED_FUNCTIONS))
def test_the_gateway_routes_exactly_what_the_resolver_serves(function: str) -> None:
    """A route only the resolver has is unreachable in AWS (the gateway 404s it before the function);
    one only the gateway has reaches a handler that 404s it."""
    routes, module_name = ROUTED_FUNCTIONS[function]
    served = _resolver_routes(module_name)
    assert served == routes, {
        "not_in_the_template": sorted(served - routes),
        "not_served": sorted(routes - served),
    }


def test_only_the_openapi_document_and_the_inference_routes_skip_the_jwt_authorizer() -> None:
    auth = _props("HttpApi")["Auth"]
    assert auth["DefaultAuthorizer"] == "JwtAuthorizer"
    jwt = auth["Authorizers"]["JwtAuthorizer"]
    assert jwt["IdentitySource"] == "$request.header.Authorization"
    assert jwt["JwtConfiguration"] == {"issuer": {"Ref": "JwtIssuer"}, "audience": {"Ref": "JwtAudience"}}
    for route, props in _http_api_events().items():
        route_auth = props.get("Auth", {})
        if route in PUBLIC_ROUTES:
            assert route_auth == {"Authorizer": "NONE"}, route
        else:
            assert route_auth.get("Authorizer", auth["DefaultAuthorizer"]) == "JwtAuthorizer", route
            # Scopes are the handler's (heimdall/read, heimdall/write; HEIMDALL_API_REQUIRE_SCOPES):
            # a gateway scope would answer a non-JSON 403 and ignore ApiRequireScopes=false.
            assert "AuthorizationScopes" not in route_auth, route


def test_the_api_function_validates_bundles_within_the_gateways_time_limit() -> None:
    assert {"Ref": "OnnxLayer"} in _function_setting("ApiFunction", "Layers")
    assert {"Ref": "CoreLayer"} in _function_setting("ApiFunction", "Layers")
    assert _props("ApiFunction")["EphemeralStorage"]["Size"] >= 4096
    timeout = _function_setting("ApiFunction", "Timeout")
    assert isinstance(timeout, int) and timeout < 30, "an HTTP API waits 30 s at most for its integration"
    # The structural pass of an inline import ends (a 4xx naming the limit) before the function does.
    structural = float(_function_env("ApiFunction")["HEIMDALL_STRUCTURAL_TIMEOUT_S"])
    assert structural + 5 <= timeout


def test_the_inference_function_serves_sessions_and_may_only_read_models_and_count() -> None:
    assert {"Ref": "OnnxLayer"} in _function_setting("InferFunction", "Layers")
    timeout = _function_setting("InferFunction", "Timeout")
    assert isinstance(timeout, int) and timeout < 30
    structural = float(_function_env("InferFunction")["HEIMDALL_STRUCTURAL_TIMEOUT_S"])
    assert structural + 5 <= timeout, "a model's structural pass ends before the function does"
    templates = [
        p for p in _props("InferFunction")["Policies"] if isinstance(p, dict) and "Statement" not in p
    ]
    assert templates == [], "no SAM policy template: the inline statements say exactly what it may do"
    actions = set()
    for statement in _policy_statements("InferFunction"):
        assert "*" not in _as_list(statement["Resource"]), statement["Sid"]
        actions |= set(_as_list(statement["Action"]))
    assert actions == {
        "dynamodb:BatchGetItem",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "s3:ListBucket",
        "s3:GetObject",
    }
    from heimdall.logic.bundles import BUNDLE_ONNX_PREFIXES
    from heimdall.logic.deployment_artifacts import EXPORT_MODEL_PATTERN

    reads = next(s for s in _policy_statements("InferFunction") if s["Action"] == "s3:GetObject")
    granted = {r["Fn::Sub"].removeprefix("${ArtifactsBucket.Arn}/") for r in _as_list(reads["Resource"])}
    # Indexed models, and an export job's FP16/INT8 builds an endpoint may serve (no other job output).
    assert granted == {f"{prefix}*" for prefix in BUNDLE_ONNX_PREFIXES} | {EXPORT_MODEL_PATTERN}
    assert fnmatch.fnmatchcase("exports/job-1/model_int8.onnx", EXPORT_MODEL_PATTERN)
    assert not fnmatch.fnmatchcase("exports/job-1/result.json", EXPORT_MODEL_PATTERN)


def test_the_conversion_job_reads_indexed_bundles_but_writes_only_its_outputs() -> None:
    from heimdall.logic.bundles import INDEXED_BUNDLE_PREFIX

    statements = [
        s for policy in _props("ConversionJobRole")["Policies"] for s in policy["PolicyDocument"]["Statement"]
    ]
    artifacts = "${ArtifactsBucket.Arn}/"
    reads, writes = set(), set()
    for statement in statements:
        for resource in _as_list(statement["Resource"]):
            path = resource.get("Fn::Sub", "") if isinstance(resource, dict) else ""
            if not path.startswith(artifacts):
                continue
            actions = set(_as_list(statement["Action"]))
            if "s3:GetObject" in actions:
                reads.add(path.removeprefix(artifacts))
            if actions - {"s3:GetObject"}:
                writes.add(path.removeprefix(artifacts))
    assert f"{INDEXED_BUNDLE_PREFIX}*" in reads, "a bundle job reads the imported model's stored bundle"
    assert writes == {"exports/*", "timing-cache/*"}


def test_the_api_function_writes_to_the_ingest_bucket_only_where_imports_go() -> None:
    from heimdall.logic.imports import import_key

    ingest_prefix = "${IngestBucket.Arn}"
    for statement in _policy_statements("ApiFunction"):
        actions = _as_list(statement["Action"])
        resources = [r.get("Fn::Sub", "") for r in _as_list(statement["Resource"]) if isinstance(r, dict)]
        writes = [a for a in actions if a.startswith("s3:") and not a.startswith(("s3:Get", "s3:List"))]
        for resource in resources:
            if resource.startswith(ingest_prefix) and writes:
                assert resource == f"{ingest_prefix}/bundles/imports/*", (statement["Sid"], writes)
                assert fnmatch.fnmatchcase(import_key("0123"), resource.removeprefix(f"{ingest_prefix}/"))
    # No SAM policy template that writes to a whole bucket.
    templates = {k for p in _props("ApiFunction")["Policies"] if isinstance(p, dict) for k in p}
    assert not templates & {"S3CrudPolicy", "S3WritePolicy", "S3FullAccessPolicy"}


def test_the_api_function_may_cancel_jobs_and_nothing_is_granted_on_everything() -> None:
    statements = _policy_statements("ApiFunction")
    terminate = next(s for s in statements if "batch:TerminateJob" in _as_list(s["Action"]))
    assert terminate["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:batch:${AWS::Region}:${AWS::AccountId}:job/*"
    }
    for statement in statements:
        assert "*" not in _as_list(statement["Resource"]), statement["Sid"]


# --- buckets --------------------------------------------------------------------------------------


BUCKETS = sorted(_resources("AWS::S3::Bucket"))


@pytest.mark.parametrize("bucket", BUCKETS)
def test_every_bucket_blocks_public_access_and_is_encrypted(bucket: str) -> None:
    props = _props(bucket)
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert props["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True


@pytest.mark.parametrize("bucket", BUCKETS)
def test_every_bucket_refuses_plain_http(bucket: str) -> None:
    policies = [
        p["Properties"]["PolicyDocument"]
        for p in _resources("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for policy in policies
        for s in policy["Statement"]
    ), f"{bucket} has no TLS-only policy"


def _lifecycle_rules(bucket: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = _props(bucket).get("LifecycleConfiguration", {}).get("Rules", [])
    return [r for r in rules if r["Status"] == "Enabled"]


def _expires(rule: dict[str, Any]) -> bool:
    return "ExpirationInDays" in rule or "ExpirationDate" in rule


def test_bundles_assembled_for_download_expire_after_a_day_and_outlive_their_urls() -> None:
    (rule,) = [r for r in _lifecycle_rules("ArtifactsBucket") if r.get("Prefix") == "downloads/"]
    assert rule["ExpirationInDays"] == 1
    longest_url_s = _template()["Parameters"]["PresignTtlSeconds"]["MaxValue"]
    assert longest_url_s <= rule["ExpirationInDays"] * 24 * 3600
    # Nothing else in the artifacts bucket expires: indexed models and quarantine are kept.
    assert [r for r in _lifecycle_rules("ArtifactsBucket") if _expires(r)] == [rule]


def test_uploads_never_expire() -> None:
    """Imports under ``bundles/imports/`` included: a rejected one is quarantined from the original."""
    assert not [r for r in _lifecycle_rules("IngestBucket") if _expires(r)]


# --- AWS Batch ------------------------------------------------------------------------------------


def _retry_rules() -> list[dict[str, str]]:
    rules: list[dict[str, str]] = _props("ConversionJobDefinition")["RetryStrategy"]["EvaluateOnExit"]
    return rules


def _batch_action(exit_code: int | None, status_reason: str = "", reason: str = "") -> str:
    """What Batch does with a failed attempt: the first rule whose every condition matches wins;
    a condition on a value the attempt does not have (no exit code) does not match; no rule: retry."""
    observed = {
        "OnExitCode": None if exit_code is None else str(exit_code),
        "OnStatusReason": status_reason,
        "OnReason": reason,
    }
    for rule in _retry_rules():
        conditions = {k: v for k, v in rule.items() if k != "Action"}
        if all(
            observed[k] is not None and fnmatch.fnmatchcase(str(observed[k]), v)
            for k, v in conditions.items()
        ):
            return rule["Action"].upper()
    return "RETRY"


def _terminal_exit_codes() -> set[int]:
    """Exit codes the conversion errors declare terminal (every one but the base class's retryable)."""
    found: set[int] = set()
    pending = list(ConversionError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.add(cls.exit_code)
        pending.extend(cls.__subclasses__())
    return found - {ConversionError.exit_code}


def test_the_retry_strategy_exits_on_the_terminal_exit_codes() -> None:
    assert _terminal_exit_codes() == {3, 4}  # DESIGN §5
    for code in _terminal_exit_codes():
        assert _batch_action(code, "Essential container in task exited") == "EXIT", code


def test_the_terminal_rules_come_before_any_retry_rule() -> None:
    actions = [rule["Action"].upper() for rule in _retry_rules()]
    codes = [rule.get("OnExitCode") for rule in _retry_rules()]
    first_retry = actions.index("RETRY")
    assert {"3", "4"} <= set(codes[:first_retry])
    assert len(actions) <= 5, "Batch accepts at most five EvaluateOnExit rules"


def test_the_retry_strategy_retries_spot_reclaims_and_other_failures() -> None:
    strategy = _props("ConversionJobDefinition")["RetryStrategy"]
    assert strategy["Attempts"] >= 2
    reclaim = "Host EC2 (instance i-0123456789abcdef0) terminated."
    assert _batch_action(None, reclaim) == "RETRY"
    assert _batch_action(137, reclaim) == "RETRY"
    assert _batch_action(1, "Essential container in task exited") == "RETRY"
    assert (
        _batch_action(137, "Essential container in task exited", "OutOfMemoryError: Container killed")
        == "RETRY"
    )


def test_the_job_definition_runs_one_gpu_with_a_timeout_and_tags() -> None:
    props = _props("ConversionJobDefinition")
    requirements = {r["Type"]: r["Value"] for r in props["ContainerProperties"]["ResourceRequirements"]}
    assert requirements["GPU"] == "1"
    assert {"VCPU", "MEMORY"} <= set(requirements)
    assert props["Timeout"]["AttemptDurationSeconds"]
    assert props["PropagateTags"] is True
    assert props["PlatformCapabilities"] == ["EC2"]


def test_the_compute_environment_uses_spot_gpu_instances() -> None:
    resources = _props("GpuComputeEnvironment")["ComputeResources"]
    assert resources["Type"] == "SPOT"
    assert resources["AllocationStrategy"] == "SPOT_CAPACITY_OPTIMIZED"
    assert resources["Ec2Configuration"] == [{"ImageType": "ECS_AL2_NVIDIA"}]
    assert resources["MinvCpus"] == 0
    assert resources["InstanceTypes"] == {"Ref": "GpuInstanceTypes"}


@pytest.mark.parametrize("function", ["IngestFunction", "ApiFunction"])
def test_the_functions_that_submit_jobs_may_submit_to_this_stacks_queue_only(function: str) -> None:
    statements = _policy_statements(function)
    submit = next(s for s in statements if "batch:SubmitJob" in _as_list(s["Action"]))
    assert {"Ref": "ConversionJobQueue"} in submit["Resource"]
    assert "*" not in submit["Resource"]
    assert any("batch:TagResource" in _as_list(s["Action"]) for s in statements)


# --- outputs --------------------------------------------------------------------------------------


def test_outputs_name_everything_a_client_needs_and_are_exported() -> None:
    outputs: dict[str, Any] = _template()["Outputs"]
    referenced = set()
    for output in outputs.values():
        value = output["Value"]
        if isinstance(value, dict) and ("Ref" in value or "Fn::GetAtt" in value):
            referenced.add(_ref_target(value))
    wanted = {
        "IngestBucket",
        "ArtifactsBucket",
        "RegistryTable",
        "EventBus",
        "IngestQueue",
        "IngestDeadLetterQueue",
        "JobStateDeadLetterQueue",
        "ConversionJobQueue",
        "ConversionJobDefinition",
        "ConversionRepository",
        "IngestFunction",
        "JobStateFunction",
        "ApiFunction",
        "InferFunction",
        "HttpApi",
    }
    assert wanted <= referenced, sorted(wanted - referenced)
    for name, output in outputs.items():
        if name != "Stage":
            assert output["Export"]["Name"] == {"Fn::Sub": f"${{AWS::StackName}}-{name}"}, name


# --- samconfig.toml -------------------------------------------------------------------------------


def _deploy_environments() -> dict[str, dict[str, Any]]:
    config = tomllib.loads(SAMCONFIG.read_text(encoding="utf-8"))
    return {
        env: section["deploy"]["parameters"]
        for env, section in config.items()
        if isinstance(section, dict) and "deploy" in section
    }


def test_samconfig_has_dev_and_prod_with_their_own_stacks() -> None:
    config = tomllib.loads(SAMCONFIG.read_text(encoding="utf-8"))
    assert {"default", "dev", "prod"} <= set(_deploy_environments())
    assert (
        config["dev"]["global"]["parameters"]["stack_name"]
        != config["prod"]["global"]["parameters"]["stack_name"]
    )
    assert _deploy_environments()["prod"]["confirm_changeset"] is True


@pytest.mark.parametrize("environment", sorted(_deploy_environments()))
def test_samconfig_overrides_are_template_parameters_with_allowed_values(environment: str) -> None:
    parameters: dict[str, Any] = _template()["Parameters"]
    overrides = dict(
        item.split("=", 1) for item in shlex.split(_deploy_environments()[environment]["parameter_overrides"])
    )
    assert overrides["Stage"] == ("dev" if environment == "default" else environment)
    for name, value in overrides.items():
        assert name in parameters, f"{environment}: {name} is not a template parameter"
        spec = parameters[name]
        if "AllowedValues" in spec:
            assert value in [str(v) for v in spec["AllowedValues"]], f"{environment}: {name}={value}"
        if spec["Type"] == "Number":
            assert spec.get("MinValue", float("-inf")) <= float(value) <= spec.get("MaxValue", float("inf"))


def test_named_resources_follow_the_same_naming_rule_as_the_code() -> None:
    """One naming rule: the template's names are what ``Settings.resource_names()`` derives locally."""
    from heimdall.settings import Settings

    names = Settings(stage="dev").resource_names()
    declared = {
        "RegistryTable": ("TableName", names.table_name),
        "EventBus": ("Name", names.event_bus_name),
    }
    for resource, (prop, expected) in declared.items():
        value = _props(resource)[prop]
        assert value == {"Fn::Sub": expected.replace("dev", "${Stage}", 1)}, resource
    for kind, prop, expected in (
        ("AWS::Batch::JobQueue", "JobQueueName", names.job_queue),
        ("AWS::Batch::JobDefinition", "JobDefinitionName", names.job_definition),
    ):
        (props,) = [r.get("Properties", {}) for r in _resources(kind).values()]
        assert props[prop] == {"Fn::Sub": expected.replace("dev", "${Stage}", 1)}
    # Buckets carry the account and region in AWS (names are global); the prefix is the same rule.
    for resource, local in (
        ("IngestBucket", names.ingest_bucket),
        ("ArtifactsBucket", names.artifacts_bucket),
    ):
        assert _props(resource)["BucketName"]["Fn::Sub"].startswith(local.replace("dev", "${Stage}", 1) + "-")
