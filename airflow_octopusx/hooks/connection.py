"""The ``octopusx`` connection read once: where the API is, its key, and where requests may go."""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from airflow.providers.common.compat.sdk import mask_secret

from airflow_octopusx.exceptions import OctopusXError
from airflow_octopusx.hooks.retry import RetryPolicy

DEFAULT_BASE_URL = "https://octopusx.ai"
# Seconds allowed for each HTTP connect, read and write, unless the connection's extra ``timeout`` says.
DEFAULT_TIMEOUT = 30.0
# What a bearer token may hold (RFC 6750's b64token, plus what keys in the wild use); nothing that
# could end a header line or need escaping.
_KEY = re.compile(r"[\x21-\x7e]+")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API is, the key for it and how patiently to talk to it, as the connection says.

    The key is kept out of ``repr`` so it cannot leak into logs. ``timeout`` and ``max_attempts`` come
    from the connection rather than the operators because a deferred wait rebuilds its hook in the
    triggerer from the connection id alone, and there all waits of one connection share one client.
    ``allow_private_links`` lets video links and redirects reach private addresses (extra of the same
    name); without it only an API on such an address may send us to one like it.
    """

    base_url: str
    api_key: str = field(repr=False)
    conn_id: str = "octopusx_default"
    timeout: float = DEFAULT_TIMEOUT
    max_attempts: int = RetryPolicy.max_attempts
    allow_private_links: bool = False

    @classmethod
    def from_connection(cls, conn: Any, *, name: str | None = None) -> ApiEndpoint:
        """Read and check a connection; messages call it ``name`` (default: its id)."""
        name = name or f"Connection {conn.conn_id!r}"
        key = (conn.password or "").strip()
        if not key:
            raise OctopusXError(f"{name} has no API key: fill in its 'API key' field (the password)")
        mask_secret(conn.password)
        mask_secret(key)
        if not _KEY.fullmatch(key):
            raise OctopusXError(
                f"{name}: its API key holds spaces, control or non-ASCII characters, which cannot be sent "
                "in an HTTP header; paste the key into the 'API key' field again"
            )
        host = (conn.host or DEFAULT_BASE_URL).strip().rstrip("/")
        try:
            url = httpx.URL(host if "://" in host else f"https://{host}")
            if conn.port and url.port is None:
                url = url.copy_with(port=conn.port)
        except (httpx.InvalidURL, ValueError, TypeError) as error:
            raise OctopusXError(f"{name}: base URL {host!r} is not a URL: {error}") from None
        extra = conn.extra_dejson
        allow_http = _flag(extra, "allow_insecure_http")
        if url.scheme != "https" and not (url.scheme == "http" and (allow_http or is_loopback(url.host))):
            raise OctopusXError(
                f"{name}: base URL {str(url)!r} must use https:// (http:// is allowed only for loopback "
                "hosts, or with extra {'allow_insecure_http': true})"
            )
        return cls(
            base_url=str(url).rstrip("/"),
            api_key=key,
            conn_id=conn.conn_id,
            timeout=_positive_extra(name, extra, "timeout", DEFAULT_TIMEOUT),
            max_attempts=int(
                _positive_extra(name, extra, "max_attempts", RetryPolicy.max_attempts, whole=True)
            ),
            allow_private_links=_flag(extra, "allow_private_links"),
        )

    @functools.cached_property
    def _origin(self) -> tuple[str, str, int | None]:
        # Parsed once: every request of every waiting video is checked against it.
        own = httpx.URL(self.base_url)
        return own.scheme, own.host, own.port

    def is_api_origin(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the API's own origin (scheme, host and port), the only one given the key."""
        return (url.scheme, url.host, url.port) == self._origin

    def link_refusal(self, url: httpx.URL, addresses: Iterable[Address] = ()) -> str | None:
        """Why a request off the API's origin (a video link, a redirect) must not be sent; None if it may.

        ``addresses`` are what the host name resolves to (for a name that is not an IP address). Only
        https is followed (http only when the API itself is on http), and only to public addresses: a
        link to a cloud metadata service, a private network or this machine is refused, unless the API
        itself lives on that kind of address (the simulator on loopback, a gateway in the same private
        network) or the connection's extra ``allow_private_links`` allows it.
        """
        if self.is_api_origin(url):
            return None
        api_scheme, api_host, _ = self._origin
        if url.scheme != "https" and not (url.scheme == "http" and api_scheme == "http"):
            return f"it is not https ({url.scheme or 'no scheme'})"
        api_kind = _kind(ip_address(api_host)) if api_host != "localhost" else "loopback"
        literal = ip_address(url.host)
        for address in [literal] if literal else addresses:
            kind = _kind(address)
            if kind != "public" and kind != api_kind and not self.allow_private_links:
                return f"it points to the {kind} address {address} (extra 'allow_private_links' allows it)"
        return None

    def needs_resolving(self, url: httpx.URL) -> bool:
        """Whether ``link_refusal`` needs the host's addresses to decide."""
        return not (self.is_api_origin(url) or self.allow_private_links or ip_address(url.host))


class LinkRefused(Exception):
    """A link or redirect refused by the CDN (expired, revoked) or by the link rules; /content will do.

    ``permanent``: the link rules refused it, so a fresh link from the same place would be refused too.
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


def video_path(video_id: str) -> str:
    """The API's path of a video, its id escaped."""
    return f"/v1/videos/{quote(video_id, safe='')}"


def ip_address(host: str | None) -> Address | None:
    """The host as an IP address (IPv4 inside IPv6 unwrapped), or None for a name."""
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _kind(address: Address | None) -> str:
    """The kind of network an address is in; a host name stands for a public one."""
    if address is None or address.is_global:
        return "public"
    # An unspecified address (0.0.0.0, ::) reaches this machine's own listeners.
    if address.is_loopback or address.is_unspecified:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    return "private"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine (localhost or a loopback address), where plain http is allowed."""
    if host == "localhost":
        return True
    address = ip_address(host)
    return address is not None and address.is_loopback


class ApiOnlyBearerAuth(httpx.Auth):
    """Adds the key only to requests for the API's own origin, never to a CDN link or a redirect target."""

    def __init__(self, endpoint: ApiEndpoint) -> None:
        self._endpoint = endpoint

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the key to requests for the API's own origin, and to no other."""
        if self._endpoint.is_api_origin(request.url):
            request.headers["Authorization"] = f"Bearer {self._endpoint.api_key}"
        else:
            request.headers.pop("Authorization", None)
        yield request


def _flag(extra: dict[str, Any], name: str) -> bool:
    return str(extra.get(name, False)).strip().lower() == "true"


def _positive_extra(
    name: str, extra: dict[str, Any], key: str, default: float, *, whole: bool = False
) -> float:
    """A number > 0 (a whole one if ``whole``) from the connection's extra; ``default`` if it is absent.

    A connection URI or the UI may give the number as a string.
    """
    value = extra.get(key)
    if value is None or value == "":
        return default
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and number > 0) or (whole and not number.is_integer()):
        allowed = "a whole number >= 1" if whole else "a number of seconds > 0"
        raise OctopusXError(f"{name}: extra {key!r} must be {allowed}, got {value!r}")
    return number
