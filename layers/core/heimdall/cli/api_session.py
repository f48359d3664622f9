"""A connection to the Heimdall API: where it is, the token, and the plumbing every route goes through.

:class:`ApiSession` sends requests to the API's routes with the bearer token (or a deployment's API
key on the inference routes), turns error answers and transport failures into typed errors, follows
redirects by hand so that the token never leaves the API's origin, and streams presigned downloads
into place. The route groups (:mod:`~heimdall.cli.api_model_routes`, ...) are built on it. The
environment variables, the local stack's token file and :func:`resolve_token` are here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx

from heimdall import __version__
from heimdall.cli.api_common import Json, ProgressCallback, json_object, replacing, save_stream
from heimdall.cli.api_errors import ApiError, ApiTimeout, ApiUnreachable, ConnectionLost, error_from_response
from heimdall.errors import ChecksumMismatch, ConfigurationError

#: Where the API is when nothing says otherwise: the local stack (``heimdall local up``).
DEFAULT_API_URL = "http://127.0.0.1:3000"
API_URL_VARIABLE = "HEIMDALL_API_URL"
API_TOKEN_VARIABLE = "HEIMDALL_API_TOKEN"  # noqa: S105 - a variable name, not a secret
#: The token file ``heimdall local up`` writes, relative to the folder it runs in.
LOCAL_TOKEN_FILE = Path(".heimdall-local") / "api-token"
API_PREFIX = "/api/v1"
#: The routes a deployment's API key opens (inference, usage, health), beside the API's own.
INFERENCE_PREFIX = "/v1"
#: Where ``heimdall infer`` and ``deploy usage|health`` read a deployment's API key when not given.
API_KEY_VARIABLE = "HEIMDALL_API_KEY"
USER_AGENT = f"heimdall/{__version__}"
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class DownloadedFile:
    """A job output or a deployment's artifact downloaded to a local file."""

    path: Path
    size_bytes: int
    sha256: str
    #: The API's download answer ``{url, expires_at, file, key, size_bytes, sha256}``.
    link: Json


class ApiSession:
    """A connection to the Heimdall API over httpx, and the plumbing every route goes through.

    Holds the base URL, the bearer token and the httpx client; sends requests to the API's routes
    (adding the token, or a deployment's API key for the inference routes), turns error answers and
    transport failures into typed errors, follows redirects by hand so that the token never leaves the
    API's origin, and streams presigned downloads into place. The route groups build on it and
    :class:`~heimdall.cli.api_client.ApiClient` puts them together.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ConfigurationError(f"the API URL must be http(s)://host[:port][/prefix], got {base_url!r}")
        self.base_url = str(url).rstrip("/")
        self._origin = _origin(url)
        self._token = token or None
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,  # followed by hand, so that the token never leaves the API's origin
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _download(self, link: Json, dest: Path, progress: ProgressCallback | None) -> DownloadedFile:
        """Stream a presigned download answer's file into ``dest``; its size and sha256 must match."""
        url = link.get("url")
        if not isinstance(url, str):
            raise ApiError("INVALID_RESPONSE", "the API's download answer has no url", status=None)
        with self._fetch(url) as fetched, replacing(dest) as part:
            size, sha256 = save_stream(fetched.response, part, progress)
            expected_sha, expected_size = link.get("sha256"), link.get("size_bytes")
            if isinstance(expected_size, int) and expected_size != size:
                raise ChecksumMismatch(
                    f"downloaded {size} bytes but the API declared {expected_size}; {dest} was not written",
                    field="size_bytes",
                )
            if isinstance(expected_sha, str) and expected_sha.lower() != sha256:
                raise ChecksumMismatch(
                    f"the download hashes to {sha256} but the API declared {expected_sha}; "
                    f"{dest} was not written",
                    field="sha256",
                )
        return DownloadedFile(path=dest, size_bytes=size, sha256=sha256, link=link)

    def _url(self, *segments: str, prefix: str = API_PREFIX) -> str:
        return self.base_url + prefix + "".join("/" + _segment(s) for s in segments)

    def _headers(self, extra: Mapping[str, str] | None = None, *, key: str | None = None) -> dict[str, str]:
        """``extra`` with the bearer: a deployment's API ``key`` when given (never with the token)."""
        headers = dict(extra or {})
        bearer = key if key is not None else self._token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return headers

    def _call(
        self,
        method: str,
        path: tuple[str, ...],
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        key: str | None = None,
    ) -> httpx.Response:
        """One request to the API; with ``key``, to the inference routes with that key as the bearer."""
        url = self._url(*path, prefix=API_PREFIX if key is None else INFERENCE_PREFIX)
        with self._transport_errors(url, api=True):
            response = self._http.request(
                method,
                url,
                params=_query(params),
                json=json_body,
                content=content,
                headers=self._headers(headers, key=key),
            )
        if response.status_code not in ok:
            raise self._error(response, keyed=key is not None)
        return response

    def _json(self, method: str, path: tuple[str, ...], **kwargs: Any) -> Json:
        return json_object(self._call(method, path, **kwargs))

    def _error(self, response: httpx.Response, *, keyed: bool = False) -> ApiError:
        error = error_from_response(response)
        if error.status == 401 and keyed:
            error.message += (
                f" (the deployment's API key was refused: check --key or {API_KEY_VARIABLE}; "
                "`heimdall deploy rotate-key` issues a new one)"
            )
        elif error.status == 401 and not self._token:
            error.message += (
                f" (no token was sent: pass --token, set {API_TOKEN_VARIABLE}, or run where "
                f"`heimdall local up` wrote {LOCAL_TOKEN_FILE})"
            )
        return error

    @contextlib.contextmanager
    def _fetch(self, url: str, *, params: Mapping[str, Any] | None = None) -> Iterator[_Fetched]:
        """GET ``url`` as a stream, following redirects by hand; the token goes to the API's origin only."""
        # Merged, not passed as ``params=``: httpx would replace the URL's own query, and with it the
        # signature of a presigned URL.
        target = httpx.URL(url).copy_merge_params(_query(params))
        first: httpx.Response | None = None
        for _ in range(MAX_REDIRECTS + 1):
            own = _origin(target) == self._origin
            request = self._http.build_request("GET", target, headers=self._headers() if own else None)
            with self._transport_errors(str(target), api=own):
                response = self._http.send(request, stream=True)
            try:
                if first is None:
                    first = response
                if response.has_redirect_location:
                    target = response.url.join(response.headers["location"])
                    continue
                if not response.is_success:
                    response.read()
                    if own:
                        raise self._error(response)
                    raise error_from_response(response, code="DOWNLOAD_FAILED", origin="the storage")
                with self._transport_errors(str(target), api=own):
                    yield _Fetched(first=first, response=response, redirected=response is not first)
                return
            finally:
                response.close()
        raise ApiError("TOO_MANY_REDIRECTS", f"more than {MAX_REDIRECTS} redirects from {url}", status=None)

    @contextlib.contextmanager
    def _transport_errors(self, url: str, *, api: bool) -> Iterator[None]:
        """Turn httpx's transport exceptions into the project's typed errors."""
        where = _origin_text(httpx.URL(url))
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            hint = (
                f"; is `heimdall local up` running? (or pass --api / set {API_URL_VARIABLE})" if api else ""
            )
            raise ApiUnreachable(f"cannot connect to {where}: {_reason(exc)}{hint}") from None
        except httpx.TimeoutException as exc:
            raise ApiTimeout(f"{where} did not answer in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ConnectionLost(f"the connection to {where} failed: {_reason(exc)}") from None


def resolve_token(explicit: str | None, cwd: Path | None = None) -> str | None:
    """The bearer token: ``explicit`` (``--token`` or its variable), else the local stack's token file."""
    if explicit:
        return explicit.strip()
    local = (cwd or Path.cwd()) / LOCAL_TOKEN_FILE
    if local.is_file():
        return local.read_text(encoding="utf-8").strip() or None
    return None


@dataclass(frozen=True)
class _Fetched:
    first: httpx.Response
    response: httpx.Response
    redirected: bool


def _segment(value: str) -> str:
    # Ids are percent-encoded whole: "a/b" stays one segment, and "." or ".." cannot climb the path.
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if set(value) <= {"."} else quoted


def _query(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {k: str(v) for k, v in (params or {}).items() if v is not None}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _origin_text(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii', errors='replace')}"


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
