"""The sandbox Slack Web API, driven by the real slack-sdk WebClient over loopback HTTP."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from sandbox.faults import write_faults
from sandbox.servers import spawn

TOKEN = "xoxb-sandbox-token"


@dataclass
class SlackServer:
    url: str
    faults: Path
    state_dir: Path
    proc: subprocess.Popen[bytes]

    def client(self, token: str = TOKEN, **kwargs: Any) -> WebClient:
        return WebClient(token=token, base_url=f"{self.url}/api/", timeout=10, **kwargs)

    def messages(self, method: str | None = None) -> list[dict[str, Any]]:
        params = {"method": method} if method else {}
        response = httpx.get(f"{self.url}/_sandbox/messages", params=params, timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def slack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlackServer]:
    tmp = tmp_path_factory.mktemp("slack")
    faults, state_dir = tmp / "faults.json", tmp / "state"
    args = ["--port", "0", "--state-dir", str(state_dir), "--faults", str(faults), "--token", TOKEN]
    args += ["--channel", "#trading-alerts", "--channel", "ops"]
    proc, url = spawn("sandbox.slack_api", args, log_path=tmp / "server.log")
    yield SlackServer(url, faults, state_dir, proc)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def clean(slack: SlackServer) -> None:
    httpx.post(f"{slack.url}/_sandbox/reset", timeout=10).raise_for_status()


def set_faults(path: Path, faults: dict[str, dict[str, Any]]) -> None:
    time.sleep(0.03)  # FaultBoard keys on mtime, which only ticks every few ms
    write_faults(path, faults)


@contextlib.contextmanager
def fault(slack: SlackServer, kind: str) -> Iterator[None]:
    set_faults(slack.faults, {kind: {}})
    try:
        yield
    finally:
        set_faults(slack.faults, {})


def test_post_thread_reply_and_update_are_recorded(slack: SlackServer) -> None:
    client = slack.client()
    assert client.auth_test()["user_id"] == "U0SANDBOX"
    first = client.chat_postMessage(channel="#trading-alerts", text="bot is down", blocks=[{"type": "divider"}])
    channel, ts = first["channel"], first["ts"]
    assert channel.startswith("C") and first["message"]["text"] == "bot is down"
    seconds, micros = ts.split(".")
    assert len(seconds) == 10 and len(micros) == 6
    reply = client.chat_postMessage(channel=channel, text="restarting", thread_ts=ts)
    assert reply["message"]["thread_ts"] == ts and float(reply["ts"]) > float(ts)
    updated = client.chat_update(channel="trading-alerts", ts=ts, text="bot is back")
    assert updated["ts"] == ts and updated["text"] == "bot is back"
    assert client.reactions_add(channel=channel, name="white_check_mark", timestamp=ts)["ok"]

    posts = slack.messages("chat.postMessage")
    assert [(m["channel"], m["text"], m["thread_ts"], m["status"]) for m in posts] == [
        (channel, "bot is down", None, 200),
        (channel, "restarting", ts, 200),
    ]
    assert posts[0]["blocks"] == [{"type": "divider"}] and posts[0]["ts"] == ts
    assert posts[0]["channel_name"] == "trading-alerts" and isinstance(posts[0]["time"], float)
    assert posts[1]["thread_parent_found"] is True
    assert [m["method"] for m in slack.messages()] == [
        "auth.test", "chat.postMessage", "chat.postMessage", "chat.update", "reactions.add",
    ]  # fmt: skip
    assert slack.messages("chat.update")[0]["text"] == "bot is back"


def test_conversations(slack: SlackServer) -> None:
    client = slack.client()
    channels = client.conversations_list()["channels"]
    assert sorted(c["name"] for c in channels) == ["ops", "trading-alerts"]
    ops = next(c for c in channels if c["name"] == "ops")
    assert client.conversations_info(channel=ops["id"])["channel"]["name"] == "ops"


def test_files_upload_v2_saves_the_file(slack: SlackServer) -> None:
    client = slack.client()
    result = client.files_upload_v2(
        channel=client.conversations_info(channel="#ops")["channel"]["id"],
        content="equity,1\n",
        filename="report.csv",
        title="Daily report",
        initial_comment="here is the report",
    )
    assert result["file"]["name"] == "report.csv" and result["file"]["title"] == "Daily report"
    saved = list((slack.state_dir / "files").iterdir())
    assert len(saved) == 1 and saved[0].read_text() == "equity,1\n"
    completed = slack.messages("files.completeUploadExternal")[0]
    assert completed["text"] == "here is the report" and completed["files"][0]["path"] == str(saved[0])
    assert completed["channel_name"] == "ops"


def test_errors(slack: SlackServer) -> None:
    with pytest.raises(SlackApiError) as caught:
        slack.client().chat_postMessage(channel="#nowhere", text="hi")
    assert caught.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as caught:
        slack.client(token="xoxb-wrong").chat_postMessage(channel="#ops", text="hi")
    assert caught.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as caught:
        slack.client().api_call("chat.fly")
    assert caught.value.response["error"] == "unknown_method"
    failed = slack.messages()
    assert [(m["method"], m["error"]) for m in failed] == [
        ("chat.postMessage", "channel_not_found"),
        ("chat.postMessage", "invalid_auth"),
        ("chat.fly", "unknown_method"),
    ]


def test_auth_and_down_faults(slack: SlackServer) -> None:
    client = slack.client()
    with fault(slack, "slack-auth"):
        with pytest.raises(SlackApiError) as caught:
            client.chat_postMessage(channel="#ops", text="hi")
        assert caught.value.response["error"] == "invalid_auth"
    with fault(slack, "slack-down"):
        with pytest.raises(SlackApiError) as caught:
            client.chat_postMessage(channel="#ops", text="hi")
        assert caught.value.response.status_code == 503
    assert client.chat_postMessage(channel="#ops", text="hi")["ok"]
    assert [m["status"] for m in slack.messages("chat.postMessage")] == [200, 503, 200]


def test_ratelimit_is_retried_by_the_sdk_handler(slack: SlackServer) -> None:
    plain = slack.client()
    with fault(slack, "slack-ratelimit"):
        with pytest.raises(SlackApiError) as caught:
            plain.chat_postMessage(channel="#ops", text="hi")
        assert caught.value.response.status_code == 429
        assert caught.value.response.headers["Retry-After"] == "1"
        assert caught.value.response["error"] == "ratelimited"
        # lift the fault while the handler waits out Retry-After; the retry then succeeds
        timer = threading.Timer(0.3, set_faults, args=(slack.faults, {}))
        timer.start()
        retrying = slack.client(retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)])
        started = time.monotonic()
        assert retrying.chat_postMessage(channel="#ops", text="after backoff")["ok"]
        assert time.monotonic() - started >= 1.0
        timer.join()
    statuses = [m["status"] for m in slack.messages("chat.postMessage")]
    assert statuses[:2] == [429, 429] and statuses[-1] == 200
