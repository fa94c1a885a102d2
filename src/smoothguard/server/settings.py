"""What a server allows: request limits, per-request override bounds, the API key, fetchable URL prefixes,
the time budget of a request, where its noise seed comes from and how concurrent requests are batched."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from smoothguard.errors import ConfigError, check_int
from smoothguard.server.urls import UrlPrefix, UrlRefused, normalize_url

#: The longest batching window a server accepts (milliseconds): batching waits for batch-mates a few
#: milliseconds, not seconds (a longer window is for tests that want every request in one batch).
MAX_BATCH_WINDOW_MS = 60_000


@dataclass(frozen=True)
class ServerSettings:
    """Settings of one server.

    ``model_name``: the id in ``/v1/models`` and the ``model`` a request must name (``None``: the
    model's own name). ``api_key``: required as ``Authorization: Bearer KEY`` on ``/v1/*`` when set
    (never printed: not in the repr). ``max_body_bytes`` / ``max_image_pixels``: larger requests get
    413. ``max_num_copies`` / ``max_sigma`` / ``max_new_tokens``: bounds of a request's overrides
    (422 above them). ``default_max_new_tokens``: when a request names none. ``allow_url_prefixes``:
    ``http(s)`` image URLs under one of these are fetched, in their normalised form (``urls.py``: the
    same scheme, host and port, the prefix's path segments first; no redirects, ``max_body_bytes`` at
    most, ``fetch_timeout`` seconds); every other URL is refused. ``max_prompt_tokens``: longer prompts
    get 413 (tokens of the model's tokenizer; UTF-8 bytes for a remote model). ``request_timeout``:
    seconds a request may hold a local model (generation stops there, and the answer says so);
    ``smoothguard serve`` lowers a proxy's upstream timeout to it. ``fixed_seed``: every request uses the guard's seed
    (unless it overrides it); ``False`` (the default) draws a fresh seed from the OS per request.
    ``batch_window_ms`` / ``max_batch_queries`` (a local model): concurrent requests with the same settings
    are answered together, at most ``max_batch_queries`` per ``generate_batch`` call, a batch closing when
    full or ``batch_window_ms`` milliseconds after the last request joined it (``batching.py``);
    ``max_batch_queries`` 1 answers one request at a time.
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
    max_prompt_tokens: int = 2048
    request_timeout: float = 120.0
    fixed_seed: bool = False
    batch_window_ms: float = 5.0
    max_batch_queries: int = 8
    _prefixes: tuple[UrlPrefix, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_new_tokens", "default_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_int("max_prompt_tokens (--max-prompt-tokens)", self.max_prompt_tokens, minimum=1)
        if not (isinstance(self.request_timeout, (int, float)) and math.isfinite(self.request_timeout)):
            raise ConfigError(
                f"request_timeout (--request-timeout) must be a finite number of seconds, got {self.request_timeout!r}"
            )
        if self.request_timeout <= 0:
            raise ConfigError(f"request_timeout (--request-timeout) must be > 0 seconds, got {self.request_timeout}")
        if not (
            isinstance(self.batch_window_ms, (int, float))
            and not isinstance(self.batch_window_ms, bool)
            and 0 <= self.batch_window_ms <= MAX_BATCH_WINDOW_MS
        ):
            raise ConfigError(
                f"batch_window_ms (--batch-window-ms) must be a number of milliseconds in 0..{MAX_BATCH_WINDOW_MS:,}, "
                f"got {self.batch_window_ms!r}"
            )
        check_int("max_batch_queries (--max-batch-queries)", self.max_batch_queries, minimum=1)
        if self.max_num_copies < 0 or self.max_sigma < 0 or self.fetch_timeout <= 0:
            raise ConfigError("max_num_copies and max_sigma must be >= 0 and fetch_timeout > 0")
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"the default max_new_tokens {self.default_max_new_tokens} is over the limit {self.max_new_tokens}"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty; set the variable to a non-empty key")
        prefixes = []
        for prefix in self.allow_url_prefixes:
            try:
                prefixes.append(UrlPrefix.parse(prefix))
            except UrlRefused as exc:
                raise ConfigError(
                    f"URL prefix {prefix!r} is not usable ({exc}); write it as http(s)://HOST[:PORT]/PATH..."
                ) from None
        object.__setattr__(self, "_prefixes", tuple(prefixes))

    def allowed_url(self, url: str) -> str:
        """The normalised form of ``url``, the URL to fetch; UrlRefused naming the reason unless it is under
        an allowed prefix."""
        normal = normalize_url(url)
        if not any(prefix.matches(normal) for prefix in self._prefixes):
            raise UrlRefused(
                "it is not under an allowed --allow-url-prefix (scheme, host, port and the leading path "
                "segments must match)"
            )
        return normal.url

    def url_allowed(self, url: str) -> bool:
        """Whether ``url`` may be fetched (``allowed_url`` accepts it)."""
        try:
            self.allowed_url(url)
        except UrlRefused:
            return False
        return True
