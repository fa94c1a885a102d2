"""What a server allows: request limits, per-request override bounds, the API key, fetchable URL prefixes."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from smoothguard.errors import ConfigError


@dataclass(frozen=True)
class ServerSettings:
    """Settings of one server.

    ``model_name``: the id in ``/v1/models`` and the ``model`` a request must name (``None``: the
    model's own name). ``api_key``: required as ``Authorization: Bearer KEY`` on ``/v1/*`` when set
    (never printed: not in the repr). ``max_body_bytes`` / ``max_image_pixels``: larger requests get
    413. ``max_num_copies`` / ``max_sigma`` / ``max_new_tokens``: bounds of a request's overrides
    (422 above them). ``default_max_new_tokens``: when a request names none. ``allow_url_prefixes``:
    ``http(s)`` image URLs starting with one of these are fetched (no redirects, ``max_body_bytes``
    at most, ``fetch_timeout`` seconds); every other URL is refused.
    """

    model_name: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 20 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_num_copies: int = 32
    max_sigma: float = 1.0
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 128
    allow_url_prefixes: tuple[str, ...] = ()
    fetch_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_new_tokens", "default_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_num_copies < 0 or self.max_sigma < 0 or self.fetch_timeout <= 0:
            raise ConfigError("max_num_copies and max_sigma must be >= 0 and fetch_timeout > 0")
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"the default max_new_tokens {self.default_max_new_tokens} is over the limit {self.max_new_tokens}"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty; set the variable to a non-empty key")
        for prefix in self.allow_url_prefixes:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.startswith("/"):
                raise ConfigError(
                    f"URL prefix {prefix!r} must be http(s)://HOST[:PORT]/PATH... with at least the '/' "
                    "after the host, so that it cannot match another host"
                )

    def url_allowed(self, url: str) -> bool:
        """Whether ``url`` may be fetched (it starts with an allowed prefix)."""
        return any(url.startswith(prefix) for prefix in self.allow_url_prefixes)
