"""A sender's model name and version are display text: what cannot be one is refused naming the field,
and what can be one reaches a client only as a file name in ``Content-Disposition`` (RFC 6266)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest

from heimdall.bundle import parse_metadata
from heimdall.bundle.models import MAX_MODEL_NAME_CHARS, MAX_VERSION_CHARS
from heimdall.domain.storage import content_disposition, download_name
from heimdall.errors import InvalidBundle
from heimdall.testing.sample_bundles import sample_bundle_metadata


def metadata_with(**model: Any) -> dict[str, Any]:
    return sample_bundle_metadata(model=model)


@pytest.mark.parametrize("field", ["model_name", "version"])
@pytest.mark.parametrize(
    "value",
    [
        "net\nv1",  # line feed (Cc): the name once reached an S3 key and broke it
        "net\rv1",
        "net\x00",
        "\tnet",
        "net\x7f",
        "net\x85",  # NEL, a C1 control
        "net\u202ev1",  # right-to-left override (Cf)
        "net\u200bv1",  # zero-width space (Cf)
        "net\ufeff",  # byte-order mark (Cf)
        "net\u2028v1",  # line separator (Zl)
        "net\u2029v1",  # paragraph separator (Zp)
        "net\ud800v1",  # a lone surrogate
        "",
        "   ",
        "\u3000",  # an ideographic space: blank all the same
    ],
    ids=repr,
)
def test_what_cannot_be_a_display_name_is_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(InvalidBundle) as caught:
        parse_metadata(metadata_with(**{field: value}))
    assert caught.value.code == "INVALID_BUNDLE"
    assert f"model.{field}" in caught.value.message
    assert caught.value.field == f"model.{field}"


@pytest.mark.parametrize(
    ("field", "cap"), [("model_name", MAX_MODEL_NAME_CHARS), ("version", MAX_VERSION_CHARS)]
)
def test_absurd_lengths_are_refused_and_the_cap_itself_is_fine(field: str, cap: int) -> None:
    bundle, _ = parse_metadata(metadata_with(**{field: "n" * cap}))
    assert getattr(bundle.model, field) == "n" * cap
    with pytest.raises(InvalidBundle) as caught:
        parse_metadata(metadata_with(**{field: "n" * (cap + 1)}))
    assert caught.value.field == f"model.{field}"


@pytest.mark.parametrize(
    "name",
    [
        "localization net (Imported)",
        "Модель распознавания",
        "模型 v2",
        "model/with/slashes",
        "../../x",  # display text only: no key or path is ever built from it
        "naïve-bayes.v1 [prod] 🚀",
    ],
)
def test_ordinary_display_names_stay_valid(name: str) -> None:
    bundle, _ = parse_metadata(metadata_with(model_name=name, version="1.0.0-rc.1 (beta)"))
    assert bundle.model.model_name == name
    assert bundle.model.version == "1.0.0-rc.1 (beta)"


# --- names as download file names --------------------------------------------------------------------


def test_a_plain_name_is_one_quoted_filename() -> None:
    assert content_disposition("net-v1.0.0.heimdall") == 'attachment; filename="net-v1.0.0.heimdall"'


@pytest.mark.parametrize(
    ("name", "fallback", "encoded"),
    [
        ("Модель-v1.heimdall", "______-v1.heimdall", "%D0%9C%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C-v1.heimdall"),
        ("../../x-v1.heimdall", "_.._x-v1.heimdall", ".._.._x-v1.heimdall"),
        ('a "quoted"; name\r\n.onnx', "a _quoted__ name__.onnx", "a%20%22quoted%22%3B%20name__.onnx"),
        ("net\u202ev1.heimdall", "net_v1.heimdall", "net_v1.heimdall"),
    ],
)
def test_any_other_name_gets_an_ascii_fallback_and_its_rfc_5987_form(
    name: str, fallback: str, encoded: str
) -> None:
    header = content_disposition(name)
    assert header.isascii() and "\r" not in header and "\n" not in header
    assert header.startswith(f'attachment; filename="{fallback}"')
    if encoded != fallback:
        assert header.endswith(f"; filename*=UTF-8''{encoded}")
    assert unquote(header.partition("filename*=UTF-8''")[2]) in ("", download_name(name))
    assert "/" not in download_name(name) and "\\" not in download_name(name)
