"""Parsing ``redis+sentinel://`` and ``redis+cluster://`` URLs (no Redis needed)."""

from __future__ import annotations

import pytest

from imchat.server.redis_url import (
    BadRedisUrl,
    ClusterTarget,
    SentinelTarget,
    parse_cluster_url,
    parse_sentinel_url,
)


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


def test_cluster_urls_name_seed_nodes() -> None:
    assert parse_cluster_url("redis://h:6379/0") is None
    assert parse_cluster_url("redis+sentinel://s:26379/svc") is None
    target = parse_cluster_url("redis+cluster://:pw@a:7000,b,[::1]:7002/")
    assert target == ClusterTarget((("a", 7000), ("b", 6379), ("::1", 7002)), "pw", False)
    tls = parse_cluster_url("rediss+cluster://a:7000")
    assert tls is not None and tls.tls and tls.password is None


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://a:x", "redis+cluster://a/3"])
def test_bad_cluster_urls_say_why(url: str) -> None:
    with pytest.raises(BadRedisUrl):
        parse_cluster_url(url)
