"""Webhooks never reach private addresses (SSRF): the check at job creation, the check at
send time (DNS mocked: it is outside the machine), and the sender that connects only to
the address it checked."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from pydantic import AnyHttpUrl, TypeAdapter

from app import webhook_targets
from app.config import Settings
from app.services.webhooks import Outgoing
from app.webhook_targets import RefusedTarget, check_url, resolve_for_send
from worker import webhooks as sender

PROBES = [
    "http://127.0.0.1:8080/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://[::1]/",
    "http://0.0.0.0/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a00:1]/",
    "http://[2002:7f00:1::]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://printer.local/",
]
PUBLIC = [
    "http://93.184.216.34/hook",
    "https://1.1.1.1/",
    "https://[2606:4700:4700::1111]/",
    "http://[::ffff:93.184.216.34]/",
    "https://hooks.example.com:8443/graft",
]
as_url = TypeAdapter(AnyHttpUrl)


@pytest.mark.parametrize("url", PROBES)
def test_private_targets_are_refused_at_creation(url: str) -> None:
    # As sent, and as the job spec stores it (pydantic writes 2130706433 as 127.0.0.1).
    for form in (url, str(as_url.validate_python(url))):
        with pytest.raises(RefusedTarget) as refused:
            check_url(form, allow_private=False)
        assert refused.value.reason == "private address"
        assert "GRAFT_WEBHOOK_ALLOW_PRIVATE=true" in str(refused.value)
        check_url(form, allow_private=True)


def test_the_message_names_the_address() -> None:
    with pytest.raises(RefusedTarget, match=r"private address \(127\.0\.0\.1\)"):
        check_url("http://2130706433:9/", allow_private=False)
    with pytest.raises(RefusedTarget, match=r"internal host name \(localhost\)"):
        check_url("http://localhost:9/", allow_private=False)


@pytest.mark.parametrize("url", PUBLIC)
def test_public_targets_are_accepted(url: str) -> None:
    check_url(url, allow_private=False)
    check_url(str(as_url.validate_python(url)), allow_private=False)


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/", "file:///etc/passwd", "gopher://x/"])
def test_other_schemes_are_refused_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(RefusedTarget, match="http or https"):
        check_url(url, allow_private=True)


def answers(*addresses: str) -> Any:
    def getaddrinfo(host: str, port: int, *args: Any, **kw: Any) -> list[Any]:
        out = []
        for a in addresses:
            family = socket.AF_INET6 if ":" in a else socket.AF_INET
            sockaddr = (a, port, 0, 0) if ":" in a else (a, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return getaddrinfo


@pytest.mark.parametrize(
    "addresses",
    [("127.0.0.1",), ("10.1.2.3",), ("::ffff:127.0.0.1",), ("93.184.216.34", "169.254.169.254")],
)
def test_a_public_name_resolving_to_any_private_address_is_refused_at_send_time(
    monkeypatch: pytest.MonkeyPatch, addresses: tuple[str, ...]
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answers(*addresses))
    check_url("https://hooks.example.com/", allow_private=False)  # passes at creation
    with pytest.raises(RefusedTarget) as refused:
        resolve_for_send("https://hooks.example.com/", allow_private=False)
    assert refused.value.reason == "private address"


def test_send_time_returns_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answers("93.184.216.34", "2606:2800:220:1::1"))
    target = resolve_for_send("https://Hooks.Example.com:8443/x", allow_private=False)
    assert target == webhook_targets.Target("https", "hooks.example.com", 8443, "93.184.216.34")


def test_send_time_with_private_allowed_resolves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kw: Any) -> Any:
        raise AssertionError("resolved")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    target = resolve_for_send("http://localhost:8080/", allow_private=True)
    assert target == webhook_targets.Target("http", "localhost", 8080, None)


# -- the sender --------------------------------------------------------------


def delivery(url: str) -> Outgoing:
    return Outgoing(7, url, "job.succeeded", {"type": "job.succeeded"}, "whsec_test")


def run_attempt(
    monkeypatch: pytest.MonkeyPatch, url: str, *, allow_private: bool = False
) -> tuple[list[httpx.Request], dict[str, Any]]:
    """One sender attempt through a mock transport; returns the requests that went out
    and what was recorded."""
    requests: list[httpx.Request] = []
    recorded: dict[str, Any] = {}

    def record(
        step: Any, delivery_id: int, status: int | None, error: str | None, **kw: Any
    ) -> str:
        recorded.update(status=status, error=error, **kw)
        return "recorded"

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    monkeypatch.setattr(sender, "in_transaction", record)
    settings = Settings(webhook_allow_private=allow_private)
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        sender._attempt(settings, client, delivery(url))
    return requests, recorded


def test_a_refused_delivery_connects_nowhere_and_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answers("127.0.0.1"))
    requests, recorded = run_attempt(monkeypatch, "http://rebind.example.com:6379/")
    assert requests == []
    assert recorded["error"] == "refused: private address"
    assert recorded["status"] is None and recorded["final"] is True


def test_the_sender_connects_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answers("93.184.216.34"))
    requests, recorded = run_attempt(monkeypatch, "https://hooks.example.com:8443/graft?x=1")
    (request,) = requests
    assert str(request.url) == "https://93.184.216.34:8443/graft?x=1"
    assert request.headers["Host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["Graft-Event"] == "job.succeeded"
    assert (recorded["status"], recorded["error"], recorded["final"]) == (204, None, False)


def test_an_unresolvable_name_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def nxdomain(*args: Any, **kw: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    requests, recorded = run_attempt(monkeypatch, "http://gone.example.com/")
    assert requests == []
    assert recorded["error"].startswith("DNS lookup failed") and recorded["final"] is False


def test_allowed_private_targets_are_sent_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    requests, recorded = run_attempt(monkeypatch, "http://localhost:8080/h", allow_private=True)
    (request,) = requests
    assert str(request.url) == "http://localhost:8080/h"
    assert "sni_hostname" not in request.extensions
    assert recorded["error"] is None
