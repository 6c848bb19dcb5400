"""Webhook destinations and POSTs: which URLs an admin may set (SSRF policy), the HMAC signature, one attempt.

Server-side request forgery: a webhook makes the alerts worker send a POST to a URL an admin typed, from
inside the network. Without limits that reaches what the outside cannot: cloud metadata endpoints
(169.254.169.254), databases and admin consoles on private addresses, services on localhost. So:

- only ``http`` and ``https`` URLs, without user:password;
- with ``SKETCHWATCH_WEBHOOK_ALLOWLIST`` empty (the default) a destination must resolve only to public
  (globally routable) addresses: private, loopback, link-local, shared, multicast and reserved ones are refused;
- with an allowlist, a destination must match one of its entries: a host name (``hooks.example.com``), a
  domain and its subdomains (``*.example.com``), or an address or network (``10.0.0.0/8``, ``127.0.0.1``);
  a host name entry trusts whatever the name resolves to, an address entry is checked against every address;
- the check runs when a rule is saved and again before every POST, on the addresses then resolved, and the
  connection goes to the address that was checked (TLS still verifies the host name), so a DNS answer that
  changes in between (rebinding) cannot redirect it; redirects are never followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-SketchWatch-Signature"
EVENT_HEADER = "X-SketchWatch-Event"
DELIVERY_HEADER = "X-SketchWatch-Delivery"
USER_AGENT = "SketchWatch-Webhook/1"
MAX_URL_LENGTH = 2000
# A receiver's answer is read up to this much, for the history; the rest is dropped.
MAX_RESPONSE_BYTES = 4096

Resolver = Callable[[str, int], list[str]]


class WebhookURLError(ValueError):
    """A webhook URL that may not be used, and why."""


@dataclass(frozen=True)
class Allowlist:
    """Parsed SKETCHWATCH_WEBHOOK_ALLOWLIST: host names, domain suffixes and networks."""

    hosts: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    networks: tuple = ()
    text: str = ""

    @property
    def empty(self) -> bool:
        """True when no entry is set (public destinations only)."""
        return not (self.hosts or self.domains or self.networks)

    def names_host(self, host: str) -> bool:
        """True when ``host`` is an allowlisted name or lies under an allowlisted domain."""
        host = host.lower().rstrip(".")
        return host in self.hosts or any(host == d or host.endswith("." + d) for d in self.domains)

    def holds_address(self, address: str) -> bool:
        """True when ``address`` lies in an allowlisted network."""
        ip = ipaddress.ip_address(address)
        return any(ip.version == net.version and ip in net for net in self.networks)


def parse_allowlist(text: str | None) -> Allowlist:
    """Parse a comma- or space-separated allowlist; ValueError naming a bad entry."""
    hosts, domains, networks = set(), [], []
    for raw in (text or "").replace(",", " ").split():
        entry = raw.strip().lower()
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry[2:] if entry.startswith("*.") else entry
        if not name or "/" in name or ":" in name or not all(part for part in name.rstrip(".").split(".")):
            raise ValueError(f"SKETCHWATCH_WEBHOOK_ALLOWLIST: {raw!r} is neither a host name, *.domain, address nor network")
        (domains.append(name.rstrip(".")) if entry.startswith("*.") else hosts.add(name.rstrip(".")))
    return Allowlist(frozenset(hosts), tuple(domains), tuple(networks), text or "")


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookURLError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def public_address(address: str) -> bool:
    """True for a globally routable unicast address (never private, loopback, link-local, shared or reserved)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Target:
    """A checked destination: where to connect, and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def check_url(url: str, allowlist: Allowlist, resolver: Resolver = resolve) -> Target:
    """The destination of ``url`` if the policy allows it; WebhookURLError saying why not otherwise."""
    url = (url or "").strip()
    if not url:
        raise WebhookURLError("a webhook URL is required")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookURLError(f"a webhook URL is at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError("a webhook URL must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLError("a webhook URL must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise WebhookURLError("a webhook URL needs a host")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = resolver(host, port)
    if not addresses:
        raise WebhookURLError(f"{host!r} resolves to no address")
    if allowlist.empty:
        refused = [a for a in addresses if not public_address(a)]
        if refused:
            raise WebhookURLError(
                f"{host} resolves to a non-public address ({refused[0]}); add it to SKETCHWATCH_WEBHOOK_ALLOWLIST "
                "to allow it"
            )
    elif not allowlist.names_host(host):
        refused = [a for a in addresses if not allowlist.holds_address(a)]
        if refused:
            raise WebhookURLError(f"{host} ({refused[0]}) is not in SKETCHWATCH_WEBHOOK_ALLOWLIST")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, tuple(addresses))


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the raw body keyed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time comparison; for receivers and tests)."""
    return hmac.compare_digest(sign(body, secret), header or "")


@dataclass
class PostResult:
    """What one POST attempt got."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    response: str = ""
    headers: dict = field(default_factory=dict)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    allowlist: Allowlist,
    timeout_s: float,
    resolver: Resolver = resolve,
) -> PostResult:
    """POST ``body`` once to the checked address of ``url``; any 2xx is success, anything else (or none) failure."""
    import urllib3

    started = time.perf_counter()

    def done(**kwargs) -> PostResult:
        return PostResult(duration_ms=round((time.perf_counter() - started) * 1000.0, 1), **kwargs)

    try:
        target = check_url(url, allowlist, resolver)
    except WebhookURLError as exc:
        return done(ok=False, error=f"refused: {exc}")
    address = target.addresses[0]
    timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s, total=timeout_s)
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, target.port, timeout=timeout, retries=False, maxsize=1,
            server_hostname=target.host, assert_hostname=target.host,
        )  # fmt: skip
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, retries=False, maxsize=1)
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host and not target.host.startswith("["):
        host_header = f"[{target.host}]" + ("" if target.port == default_port else f":{target.port}")
    sent = {"Host": host_header, "User-Agent": USER_AGENT, "Content-Type": "application/json", **headers}
    try:
        resp = pool.urlopen(
            "POST", target.path, body=body, headers=sent, redirect=False, retries=False,
            preload_content=False, assert_same_host=False,
        )  # fmt: skip
        try:
            text = resp.read(MAX_RESPONSE_BYTES, decode_content=False).decode("utf-8", "replace")
        finally:
            resp.release_conn()
        ok = 200 <= resp.status < 300
        error = None if ok else f"HTTP {resp.status}" + (" (redirects are not followed)" if 300 <= resp.status < 400 else "")
        return done(ok=ok, status_code=resp.status, error=error, response=text)
    except urllib3.exceptions.TimeoutError:
        return done(ok=False, error=f"timed out after {timeout_s:g} s")
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        return done(ok=False, error=f"{type(exc).__name__}: {reason}")
    except OSError as exc:
        return done(ok=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        pool.close()
