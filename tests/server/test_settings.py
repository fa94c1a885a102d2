"""Tests of ``smoothguard.server.settings``."""

from __future__ import annotations

import math

import pytest

from smoothguard.errors import ConfigError

SIZES = ("max_body_bytes", "max_image_pixels", "max_new_tokens", "default_max_new_tokens")


@pytest.mark.parametrize("name", SIZES)
def test_server_size_limits_accept_one_and_name_zero(name):
    """``getattr(self, name) < 1`` -> ``<= 1`` / ``< 2``, and the message (-> None, ``getattr(None, ...)``,
    ``getattr(self, None)``, ...): 1 is a limit, 0 is refused by name and value."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(**{name: 1, "default_max_new_tokens": 1})
    with pytest.raises(ConfigError, match=rf"^{name} must be >= 1, got 0$"):
        ServerSettings(**{name: 0})


def test_server_integer_settings_refuse_floats_and_accept_one():
    """``isinstance(v, bool) or not isinstance(v, int)`` -> ``and`` for max_prompt_tokens and
    max_batch_queries (2.5 would pass); ``v < 1`` -> ``<= 1`` / ``< 2``; their messages -> None."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(max_prompt_tokens=1, max_batch_queries=1)
    for name in ("max_prompt_tokens", "max_batch_queries"):
        label = rf"{name} \(--{name.replace('_', '-')}\)"
        with pytest.raises(ConfigError, match=rf"^{label} must be an integer >= 1, got 2.5$"):
            ServerSettings(**{name: 2.5})
        with pytest.raises(ConfigError, match=rf"^{label} must be an integer >= 1, got 0$"):
            ServerSettings(**{name: 0})


def test_server_request_timeout_bounds():
    """``not (isinstance(...) and math.isfinite(...))`` -> ``or`` (inf would pass); ``<= 0`` -> ``< 0`` /
    ``<= 1``; both messages -> None: inf and 0 are refused, 0.5 s is allowed."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(request_timeout=0.5)
    with pytest.raises(ConfigError, match=r"must be a finite number of seconds, got inf"):
        ServerSettings(request_timeout=math.inf)
    with pytest.raises(ConfigError, match=r"must be > 0 seconds, got 0"):
        ServerSettings(request_timeout=0)


def test_server_batch_window_bounds_are_inclusive():
    """``0 <= batch_window_ms <= MAX_BATCH_WINDOW_MS`` -> ``1 <=``, ``0 <``, ``< MAX``; the message -> None."""
    from smoothguard.server.settings import MAX_BATCH_WINDOW_MS, ServerSettings

    ServerSettings(batch_window_ms=0)
    ServerSettings(batch_window_ms=MAX_BATCH_WINDOW_MS)
    with pytest.raises(ConfigError, match=r"batch_window_ms \(--batch-window-ms\) must be a number of milliseconds"):
        ServerSettings(batch_window_ms=-1)


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"max_num_copies": -1}, True),
        ({"max_sigma": -0.5}, True),
        ({"fetch_timeout": 0}, True),
        ({"max_num_copies": 0, "max_sigma": 0}, False),
        ({"max_sigma": 0.5, "fetch_timeout": 0.5}, False),
    ],
)
def test_server_override_bounds_each_checked_alone(settings, refused):
    """``max_num_copies < 0 or max_sigma < 0 or fetch_timeout <= 0`` -> either ``or`` made ``and``,
    ``max_sigma <= 0`` / ``< 1``, ``fetch_timeout < 0`` / ``<= 1``; the message -> None / "XX...XX" / upper."""
    from smoothguard.server.settings import ServerSettings

    if not refused:
        ServerSettings(**settings)
        return
    with pytest.raises(ConfigError, match=r"^max_num_copies and max_sigma must be >= 0 and fetch_timeout > 0$"):
        ServerSettings(**settings)


def test_server_default_tokens_may_equal_the_limit():
    """``default_max_new_tokens > max_new_tokens`` -> ``>=``; the message -> None."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(default_max_new_tokens=8, max_new_tokens=8)
    with pytest.raises(ConfigError, match=r"the default max_new_tokens 9 is over the limit 8"):
        ServerSettings(default_max_new_tokens=9, max_new_tokens=8)


def test_server_api_key_empty_is_refused_and_a_key_is_kept():
    """``api_key is not None and not api_key.strip()`` -> ``and api_key.strip()`` (a real key refused); the
    message -> None / "XX...XX" / lower or upper case."""
    from smoothguard.server.settings import ServerSettings

    assert ServerSettings(api_key="k").api_key == "k"
    with pytest.raises(ConfigError, match=r"^the API key is empty; set the variable to a non-empty key$"):
        ServerSettings(api_key="  ")


def test_server_url_prefixes_are_used():
    """``object.__setattr__(self, "_prefixes", ...)`` -> "XX_prefixesXX" / "_PREFIXES" (no prefix would
    match); url_allowed's ``allowed_url(url)`` -> ``allowed_url(None)``, ``return True`` / ``return False``
    swapped; allowed_url's refusal message -> None / "XX...XX" / upper case."""
    from smoothguard.server.settings import ServerSettings
    from smoothguard.server.urls import UrlRefused

    settings = ServerSettings(allow_url_prefixes=("http://images.test/allowed/",))
    assert settings.allowed_url("http://images.test/allowed/a.png") == "http://images.test/allowed/a.png"
    assert settings.url_allowed("http://images.test/allowed/a.png") is True
    assert settings.url_allowed("http://images.test/other/a.png") is False
    with pytest.raises(UrlRefused) as caught:
        settings.allowed_url("http://images.test/other/a.png")
    assert str(caught.value) == (
        "it is not under an allowed --allow-url-prefix (scheme, host, port and the leading path segments must match)"
    )
