"""Image URLs a server may fetch: each URL is normalised, then matched against the allowed prefixes.

``normalize_url`` reads an ``http(s)`` URL strictly and returns the one form the server fetches, or
raises :class:`UrlRefused` with the reason. Refused: another scheme, no host, userinfo (``user:pass@``),
an invalid port, a backslash, whitespace or control character anywhere, a ``%`` that is not a ``%XX``
escape, and in the path: an empty segment (``//``, anywhere but a trailing ``/``: servers disagree on
whether to collapse it), a segment that decodes to something holding ``/``, ``\\`` or ``%`` (``%2f``,
``%5c``, a double-encoded ``%25``), a segment made only of dots and spaces other than a plain ``.`` or
``..`` (``%2e%2e``, ``..;``, ``...``, ``.. ``; also after Unicode NFKC folding, so ``．．`` too),
undecodable UTF-8, and a ``..`` that climbs above the root. Plain ``.`` and ``..`` segments are
resolved (``/img/a/../b.png`` is ``/img/b.png``). URLs over ``MAX_URL_LENGTH`` characters are refused
unread.

The normal form: lower-case scheme; the host lower-cased and IDNA-encoded (IPv6 literals compressed);
the port omitted when it is the scheme's default; each path segment percent-decoded once and re-encoded
canonically; the query kept as sent; the fragment dropped.

``UrlPrefix.matches``: scheme, host and effective port equal, and the prefix's path segments are the
first segments of the URL's path, so ``/img/`` and ``/img`` match ``/img/cat.png`` and never
``/imgX/cat.png``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit

from smoothguard.errors import InputError

DEFAULT_PORTS = {"http": 80, "https": 443}
#: Longer URLs are refused before they are read (web servers commonly stop at 8 KiB).
MAX_URL_LENGTH = 8192
_NETLOC = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[^:]*))?")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST_CHARS = re.compile(r"[a-z0-9._-]+")
#: RFC 3986 ``pchar`` without the unreserved characters ``quote`` keeps anyway.
_SEGMENT_SAFE = "!$&'()*+,;=:@"


class UrlRefused(InputError):
    """A URL the server will not fetch; the message says why."""


@dataclass(frozen=True)
class NormalUrl:
    """A normalised ``http(s)`` URL: ``segments`` are the decoded path segments (a trailing ``""`` for a
    trailing ``/``), ``query`` the raw query (``""`` when none)."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]
    query: str = ""

    @property
    def url(self) -> str:
        """The URL to fetch."""
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        path = "/" + "/".join(quote(segment, safe=_SEGMENT_SAFE) for segment in self.segments)
        return f"{self.scheme}://{self.host}{port}{path}" + (f"?{self.query}" if self.query else "")


@dataclass(frozen=True)
class UrlPrefix:
    """An allowed prefix, ``http(s)://HOST[:PORT]/PATH...``, matched segment by segment."""

    text: str
    base: NormalUrl

    @classmethod
    def parse(cls, text: str) -> UrlPrefix:
        """``text`` as a prefix; UrlRefused if it is not a clean ``http(s)://HOST[:PORT]/...`` without a
        query, fragment or dot segments."""
        base = normalize_url(text)
        parts = urlsplit(text)
        if parts.query or parts.fragment or "?" in text or "#" in text:
            raise UrlRefused("a prefix has no query or fragment")
        if not parts.path.startswith("/"):
            raise UrlRefused("a prefix needs at least the '/' after the host, so that it cannot match another host")
        if any(segment in (".", "..") for segment in parts.path.split("/")):
            raise UrlRefused("a prefix has no '.' or '..' segments")
        # The trailing '/' of "/img/" only ends the last segment: "/img/" and "/img" both mean "under /img".
        segments = base.segments[:-1] if base.segments and base.segments[-1] == "" else base.segments
        return cls(text, NormalUrl(base.scheme, base.host, base.port, segments))

    def matches(self, url: NormalUrl) -> bool:
        base = self.base
        same_origin = (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
        return same_origin and url.segments[: len(base.segments)] == base.segments


def normalize_url(url: str) -> NormalUrl:
    """``url`` in its normal form (see the module docstring); UrlRefused naming the reason otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is {len(url):,} characters long, over {MAX_URL_LENGTH:,}")
    for char in url:
        if char == "\\":
            raise UrlRefused("the URL holds a backslash")
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf"):
            raise UrlRefused(f"the URL holds a whitespace or control character ({char!a})")
    if _BAD_ESCAPE.search(url):
        raise UrlRefused("the URL holds a '%' that is not a %XX escape")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an invalid [IPv6] host
        raise UrlRefused(f"the URL cannot be parsed ({exc})") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UrlRefused(f"only http and https URLs are fetched, not {parts.scheme or 'a relative URL'!r}")
    if "@" in parts.netloc:
        raise UrlRefused("the URL holds userinfo (user:password@); put no credentials in an image URL")
    host, port = _host_port(parts.netloc, parts.scheme)
    path = parts.path or "/"
    if not path.startswith("/"):
        raise UrlRefused("the URL has no path after the host")
    return NormalUrl(parts.scheme, host, port, _segments(path[1:].split("/")), parts.query)


def _host_port(netloc: str, scheme: str) -> tuple[str, int]:
    found = _NETLOC.fullmatch(netloc)
    if found is None or not found["host"]:
        raise UrlRefused("the URL has no valid host")
    host, port = found["host"], found["port"]
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UrlRefused(f"the URL's port {port!r} is not a number in 1..65535")
    effective = int(port) if port else DEFAULT_PORTS[scheme]
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]", effective
        except ValueError:
            raise UrlRefused("the URL's host is not a valid IPv6 address") from None
    if "%" in host:
        raise UrlRefused("the URL's host is percent-encoded")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UrlRefused("the URL's host is not a valid (IDNA) host name") from None
    if not _HOST_CHARS.fullmatch(host):
        raise UrlRefused("the URL's host holds characters a host name cannot have")
    return host, effective


def _segments(raw: list[str]) -> tuple[str, ...]:
    """Decode and check each path segment, resolving plain ``.`` and ``..`` segments."""
    resolved: list[str] = []
    for index, segment in enumerate(raw):
        last = index == len(raw) - 1
        if segment in (".", ".."):
            if segment == "..":
                if not resolved:
                    raise UrlRefused("the URL's path climbs above the root with '..'")
                resolved.pop()
            if last:
                resolved.append("")
            continue
        if segment == "" and not last:
            raise UrlRefused("the URL's path has an empty segment ('//')")
        resolved.append(_decode(segment))
    return tuple(resolved)


def _decode(segment: str) -> str:
    try:
        decoded = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise UrlRefused("a path segment of the URL is not UTF-8 once percent-decoded") from None
    folded = unicodedata.normalize("NFKC", decoded)
    if any(char in text for text in (decoded, folded) for char in "/\\%"):
        raise UrlRefused("a path segment of the URL encodes '/', '\\' or '%' (e.g. %2f, %5c, %25)")
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in decoded):
        raise UrlRefused("a path segment of the URL encodes a control character")
    if any(not text.split(";", 1)[0].strip(". ") for text in (decoded, folded)) and segment:
        raise UrlRefused("a path segment of the URL is an encoded or disguised dot segment (e.g. %2e%2e, '..;')")
    return decoded
