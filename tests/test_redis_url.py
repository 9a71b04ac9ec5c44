"""Parsing ``redis+sentinel://`` URLs (no Redis needed)."""

from __future__ import annotations

import pytest

from imchat.server.redis_url import BadRedisUrl, SentinelTarget, parse_sentinel_url


def test_plain_urls_are_not_sentinel_urls() -> None:
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    assert parse_sentinel_url("rediss://:pw@host:6380/2") is None


def test_several_sentinels_service_and_db() -> None:
    target = parse_sentinel_url("redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380,h/chat/3")
    assert target == SentinelTarget(
        (("10.0.0.1", 26379), ("::1", 26380), ("h", 26379)), "chat", 3, "s@cret", False
    )


def test_tls_scheme_and_default_db() -> None:
    target = parse_sentinel_url("rediss+sentinel://h:1/mymaster")
    assert target is not None and target.tls and target.db == 0 and target.password is None


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///mymaster",
        "redis+sentinel://h:1/",
        "redis+sentinel://h:port/mymaster",
        "redis+sentinel://h:1/mymaster/zero",
    ],
)
def test_bad_sentinel_urls_say_why(url: str) -> None:
    with pytest.raises(BadRedisUrl):
        parse_sentinel_url(url)
