"""Operations: /healthz, /metrics (parsed with prometheus-client's parser), JSON logs, and the
HTTP face of a real ``imchat server`` process (flags, TLS)."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from conftest import TIMEOUT, Clients, imchat_command, join, next_event, subprocess_env
from httpfixtures import Http, http_fixture  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families

from imchat.client import ServerError
from imchat.server.logformat import JsonFormatter


async def scrape(http: Http) -> dict[str, Any]:
    """Every sample of /metrics by name and labels."""
    async with http.client.get(http.base + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            samples[key] = sample.value
    return samples


async def test_healthz(http: Http) -> None:
    status, body, _ = await http.get("/healthz")
    assert (status, body) == (200, {"status": "ok"})


async def test_metrics_count_what_happens(http: Http, connect: Clients) -> None:
    before = await scrape(http)
    bob = await connect("bob")
    await join(bob, "lobby")
    token = await http.account("deploy")
    for n in range(3):
        status, _, _ = await http.post(
            "/api/v1/rooms/lobby/messages", token=token, json={"text": f"m{n}"}
        )
        assert status == 200
    for _ in range(3):
        await next_event(bob, "msg")
    ws = await http.client.ws_connect(http.base.replace("http", "ws", 1) + "/ws")
    await ws.send_str('{"type":"ping","id":1}')
    assert json.loads((await ws.receive(TIMEOUT)).data) == {"type": "pong", "id": 1}
    after = await scrape(http)
    assert after["imchat_sessions{protocol=native}"] == 1
    assert after["imchat_sessions{protocol=websocket}"] == 1
    assert after["imchat_messages_total"] - before["imchat_messages_total"] == 3
    # bob's join reply, joined, 3 msgs; the pong
    assert after["imchat_deliveries_total"] - before["imchat_deliveries_total"] >= 6
    commits = (
        after["imchat_store_commit_seconds_count"] - before["imchat_store_commit_seconds_count"]
    )
    assert commits >= 1
    assert (
        after["imchat_store_commit_seconds_bucket{le=+Inf}"]
        == after["imchat_store_commit_seconds_count"]
    )
    assert "imchat_event_loop_lag_seconds_count" in after
    assert after["imchat_slow_consumer_cuts_total"] >= 0
    route = "imchat_http_requests_total{route=/api/v1/rooms/{room}/messages,status=200}"
    assert after[route] == 3
    if http.server.config.redis_url is not None:
        assert "imchat_redis_roundtrip_seconds_count" in after
    await ws.close()


@pytest.mark.server_config(rate=1, burst=1)
async def test_metrics_count_rate_limited_requests(http: Http, connect: Clients) -> None:
    bob = await connect("bob")
    await join(bob, "lobby")
    before = await scrape(http)
    codes = []
    for _ in range(3):
        try:
            await bob.request("say", room="lobby", text="x")
            codes.append("ok")
        except ServerError as exc:
            codes.append(exc.code)
    assert "rate_limited" in codes
    after = await scrape(http)
    name = "imchat_rate_limited_requests_total"
    assert after[name] - before[name] == codes.count("rate_limited")


def test_json_log_lines() -> None:
    record = logging.LogRecord("imchat.x", logging.WARNING, __file__, 1, "a %s\nb", ('q"',), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("warning", "imchat.x", 'a q"\nb')
    assert entry["ts"].endswith("+00:00")


def test_server_process_with_http_tls_and_json_logs(tmp_path: Path, server_process: Any) -> None:
    """``imchat server --http-port 0 --tls-cert … --log-format json``: HTTPS, same certificate."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    proc = server_process(
        tmp_path / "data",
        "--http-port",
        "0",
        "--tls-cert",
        str(cert_file),
        "--tls-key",
        str(key_file),
        "--log-format",
        "json",
    )
    import asyncio
    import re

    lines = [json.loads(line) for line in proc.lines if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(e) for e in lines)
    http_line = next(e["message"] for e in lines if e["message"].startswith("HTTP API at"))
    match = re.search(r"https://127\.0\.0\.1:(\d+)", http_line)
    assert match, http_line
    context = ssl.create_default_context()
    ca.configure_trust(context)

    async def check() -> None:
        async with aiohttp.ClientSession() as client:
            url = f"https://127.0.0.1:{match.group(1)}/healthz"
            async with client.get(url, ssl=context) as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}

    asyncio.run(check())


def test_bad_log_format_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *imchat_command(),
            "server",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--log-format",
            "xml",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=30,
    )
    assert result.returncode == 2
    assert "--log-format must be text or json" in result.stderr
