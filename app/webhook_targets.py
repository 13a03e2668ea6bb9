"""Where a webhook may go: never to a private, loopback or link-local address (SSRF),
unless GRAFT_WEBHOOK_ALLOW_PRIVATE=true says so (the scheme check stays either way).

Two checks, both here, so the API and the worker judge alike:

- `check_url`, when a job is created: the scheme is http or https; a host that is an IP
  literal, in any form the resolver accepts (127.0.0.1, 2130706433, 0x7f000001, 0177.1,
  127.1, [::ffff:127.0.0.1]), must be public; and names that are internal by definition
  are refused: `localhost` and names under `.localhost` (RFC 6761), `.internal` (cloud
  metadata such as metadata.google.internal), `.local` (mDNS) and `.home.arpa`
  (RFC 8375). Any other name passes: what it points at is only known at send time.
- `resolve_for_send`, at every delivery: the host is resolved, and the delivery is
  refused if ANY address it resolves to is not public (a name with one public and one
  private answer could otherwise be steered at the private one). The sender connects to
  the address returned, so a second, different DNS answer (rebinding) is never used.

Not public: loopback, private, link-local, multicast, reserved, unspecified, and whatever
else Python's `ipaddress` does not call global (100.64.0.0/10, ...). An IPv4 address
inside an IPv6 one is judged as IPv4: IPv4-mapped (::ffff:a.b.c.d) and NAT64
(64:ff9b::/96) by it alone, 6to4 (2002::/16) by both.

No torch, no SQL.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = {"http": 80, "https": 443}
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
PRIVATE = "private address"


class RefusedTarget(ValueError):
    """A webhook URL that may not be used. The message is for the person who sent it;
    `reason` (e.g. "private address") is what a delivery's event records."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """Where to send: `address` is the checked IP to connect to, or None to connect by
    name (private addresses allowed, so nothing was checked)."""

    scheme: str
    host: str
    port: int
    address: str | None


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address in NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def literal_address(host: str) -> IPAddress | None:
    """The IP address `host` spells, in any form the resolver accepts, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # 2130706433, 0x7f000001, 0177.0.0.1, 127.1: what inet_aton (and so DNS) accepts
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _parse(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RefusedTarget(
            f"`webhook_url` must be an http or https URL, not {scheme or 'one without a scheme'}.",
            "unsupported scheme",
        )
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port or SCHEMES[scheme]
    except ValueError:
        raise RefusedTarget("`webhook_url` has an invalid port.", "invalid port") from None
    if not host:
        raise RefusedTarget("`webhook_url` has no host.", "no host")
    return scheme, host, port


def _refused(what: str) -> RefusedTarget:
    return RefusedTarget(
        f"`webhook_url` points at {what}; webhooks may only go to public hosts "
        "(set GRAFT_WEBHOOK_ALLOW_PRIVATE=true to allow internal receivers).",
        PRIVATE,
    )


def check_url(url: str, *, allow_private: bool) -> None:
    """At job creation: raise RefusedTarget for a URL that could only reach a private
    address (see the module's docstring). Names are resolved only at send time."""
    _, host, _ = _parse(url)
    if allow_private:
        return
    address = literal_address(host)
    if address is not None:
        if not is_public(address):
            raise _refused(f"a private address ({address})")
    elif host == "localhost" or host.endswith(INTERNAL_SUFFIXES):
        raise _refused(f"an internal host name ({host})")


def resolve_for_send(url: str, *, allow_private: bool) -> Target:
    """At send time: the address to connect to, after checking every address the host
    resolves to. Raises RefusedTarget (final: a retry will not change it), or OSError when
    the name does not resolve (that may change)."""
    scheme, host, port = _parse(url)
    if allow_private:
        return Target(scheme, host, port, None)
    check_url(url, allow_private=False)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0])) for info in infos]
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    for address in addresses:
        if not is_public(address):
            raise _refused(f"a private address ({address})")
    return Target(scheme, host, port, str(addresses[0]))
