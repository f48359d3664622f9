"""Request bodies the routes read themselves: raw bytes, multipart uploads, small JSON documents.

API Gateway hands the body over as a string, base64-encoded when it is binary. Powertools would decode
it to text, which a gzip bundle or a multipart upload is not, and its body parsing lets some malformed
bodies escape as bare exceptions (500s); so the routes that take a body read it here, and declare it in
the document themselves. Every failure is a typed error (415 for a Content-Type the operation does not
take, 413 before decoding what is too large, 400 for what does not parse, 422 for what parses but is
not acceptable), worded like Powertools' own validation.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from heimdall.errors import BadRequest, InvalidJson, PayloadTooLarge, RequestInvalid, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)

MULTIPART = "multipart/form-data"
#: The form field of a multipart upload that holds the bundle (``curl -F "file=@model.heimdall"``).
FILE_FIELD = "file"


def raw_body(event: BaseProxyEvent, *, max_bytes: int, hint: str = "") -> bytes:
    """The request body as bytes, at most ``max_bytes`` of them: else 413, checked before decoding.

    ``hint`` ends the 413's message (what to do instead).
    """

    def too_large(size: int) -> PayloadTooLarge:
        message = f"the request body is {size} bytes, over the {max_bytes}-byte limit of this request"
        return PayloadTooLarge(message + hint, field="body", size_bytes=size, max_bytes=max_bytes)

    body = event.body or ""
    if not event.is_base64_encoded:
        # A character is at least one byte: a string longer than the limit is over it.
        if len(body) > max_bytes:
            raise too_large(len(body))
        data = body.encode("utf-8", "surrogatepass")  # lone surrogates: the bundle reader refuses them
    else:
        estimated = len(body) * 3 // 4 - body[-2:].count("=")
        if estimated > max_bytes:
            raise too_large(estimated)
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                "the request body is marked base64 but is not valid base64", field="body"
            ) from None
    if len(data) > max_bytes:
        raise too_large(len(data))
    return data


def media_type(event: BaseProxyEvent) -> str:
    """The request's media type, lower case, without parameters (``""`` when there is none)."""
    value = event.headers.get("content-type") or ""
    return value.partition(";")[0].strip().lower()


def require_media_type(event: BaseProxyEvent, accepted: tuple[str, ...]) -> str:
    """The request's media type if the operation takes it (:func:`media_type`); else 415.

    JSON is also any ``application/*+json``. No Content-Type at all is accepted and read for what it
    is (JSON, or a bundle told by its bytes): some clients send none (``requests.post(url,
    data=...)``), and what counts then is that the body parses. A type that says the body is
    something else (``curl -d`` without ``-H``: a form; ``text/plain``) is refused, not guessed at.
    """
    found = media_type(event)
    is_json = found.startswith("application/") and found.endswith("+json")
    if not found or found in accepted or (is_json and "application/json" in accepted):
        return found
    raise UnsupportedMediaType(
        f"Content-Type {found[:100]!r} is not accepted here; send {' or '.join(accepted)}",
        field="Content-Type",
        accepted=list(accepted),
    )


class _FormParts:
    """The parts of a multipart body, collected from python-multipart's parser callbacks."""

    def __init__(self) -> None:
        #: (Content-Disposition value, content) of every complete part, in order.
        self.parts: list[tuple[bytes, bytes]] = []
        self.ended = False
        self._header, self._value = bytearray(), bytearray()
        self._disposition, self._data = b"", bytearray()

    def callbacks(self) -> Any:
        def chunk(target: bytearray) -> Callable[[bytes, int, int], None]:
            return lambda data, start, end: target.extend(data[start:end])

        return {
            "on_part_begin": self._part_begin,
            "on_header_field": chunk(self._header),
            "on_header_value": chunk(self._value),
            "on_header_end": self._header_end,
            "on_part_data": chunk(self._data),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._data.clear()

    def _header_end(self) -> None:
        if bytes(self._header).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header.clear()
        self._value.clear()

    def _part_end(self) -> None:
        self.parts.append((self._disposition, bytes(self._data)))

    def _end(self) -> None:
        self.ended = True


def multipart_file(data: bytes, content_type: str, *, field: str = FILE_FIELD) -> bytes:
    """The content of the form field ``field`` of a ``multipart/form-data`` body.

    400 BAD_REQUEST for a body that is not well-formed multipart (no boundary, truncated, garbage);
    422 VALIDATION_ERROR when it is, but has no such field.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("a multipart/form-data body needs a boundary in its Content-Type", field="body")
    form = _FormParts()
    try:
        parser = MultipartParser(boundary, form.callbacks())
        parser.write(data)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise BadRequest(f"the multipart/form-data body is malformed: {exc}", field="body") from None
    if not form.ended:  # the parser does not check that the closing boundary came
        raise BadRequest("the multipart/form-data body is truncated (no closing boundary)", field="body")
    for disposition, content in form.parts:
        _, params = parse_options_header(disposition.decode("latin-1"))
        if params.get(b"name") == field.encode():
            return content
    raise RequestInvalid(f"the multipart/form-data body has no {field!r} field", field=field)


def json_model(data: bytes, model: type[M]) -> M:
    """``data`` parsed as JSON and validated as ``model``: 400 INVALID_JSON, or 422 naming the fields.

    The routes check the Content-Type first (:func:`require_media_type`).
    """
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidJson("the request body is not valid JSON", field="body") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        # The same error as Powertools' own body validation, so one handler words both.
        errors = [
            {**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
