"""The SSRF guard for video URLs that clients send: which hosts and addresses may be fetched.

Standard library only, so the functions can reject a bad URL before a job is queued. The same
rules run again at connection time inside the downloader (see :mod:`pipelines.video.net`), for
every hop of a redirect and for every host a page points at, on the address actually connected to.

The policy: only ``http``/``https``, no credentials in the URL, a host name that is not the
metadata server's, in the allow-list when one is set, and **every** address the host resolves to
is public. Literal IPs are parsed the way ``inet_aton`` (and browsers) do, so ``2130706433``,
``0x7f.1`` and ``0177.0.0.1`` are all 127.0.0.1, and IPv4-mapped, NAT64 and 6to4 IPv6 addresses are
judged by the IPv4 address they embed.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from core.errors import InvalidInput, RetryableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]

MAX_URL_LENGTH = 4096
ALLOWED_SCHEMES = frozenset({"http", "https"})
# Google Cloud's metadata server; 169.254.169.254 is caught by the link-local rule.
BLOCKED_HOSTNAMES = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})

_NET = ipaddress.ip_network
# Checked in this order; the first that contains the address names the reason it is refused.
_CATEGORIES: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("unspecified", (_NET("0.0.0.0/8"), _NET("::/128"))),
    ("loopback", (_NET("127.0.0.0/8"), _NET("::1/128"))),
    ("link_local", (_NET("169.254.0.0/16"), _NET("fe80::/10"))),
    ("private", (_NET("10.0.0.0/8"), _NET("172.16.0.0/12"), _NET("192.168.0.0/16"), _NET("fc00::/7"))),
    ("shared", (_NET("100.64.0.0/10"),)),
    ("multicast", (_NET("224.0.0.0/4"), _NET("ff00::/8"))),
    ("site_local", (_NET("fec0::/10"),)),
    ("broadcast", (_NET("255.255.255.255/32"),)),
)
_CATEGORY_TEXT = {
    "unspecified": "an unspecified address (0.0.0.0 or ::)",
    "loopback": "a loopback address (this machine)",
    "link_local": "a link-local address (such as the cloud metadata server 169.254.169.254)",
    "private": "a private network address",
    "shared": "a carrier-grade NAT address (100.64.0.0/10)",
    "multicast": "a multicast address",
    "site_local": "a site-local address",
    "broadcast": "the broadcast address",
    "reserved": "a reserved or special-purpose address",
}
_NAT64 = (_NET("64:ff9b::/96"), _NET("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = _NET("::/96")
_HEX_PART = re.compile(r"^0[xX][0-9a-fA-F]*$")
_HOST_CHARS = re.compile(r"^[a-z0-9_.-]+$")


class BlockedAddress(InvalidInput):
    """The URL's host is, or resolves to, an address the service must not connect to."""

    code = "blocked_address"

    def __init__(self, message: str, *, host: str, address: str, category: str) -> None:
        super().__init__(message)
        self.host = host
        self.address = address
        self.category = category


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed :func:`check_url`.

    Attributes:
        url: the URL as given (stripped of surrounding whitespace).
        scheme: ``http`` or ``https``.
        host: the host name in lower case ASCII (IDNA), without a trailing dot; for a literal IP,
            its canonical text (``2130706433`` becomes ``127.0.0.1``).
        port: the explicit port, or 80/443.
        addresses: every address the host resolved to, all of them allowed.
    """

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def default_resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to, through the system resolver (``getaddrinfo``).

    Returns an empty list when the name does not exist.

    Raises:
        RetryableError: when the resolver itself fails temporarily (``EAI_AGAIN``).
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise RetryableError(
                f"Could not look up {host!r} right now (temporary DNS failure)", code="dns_unavailable"
            ) from exc
        return []
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _parse_ipv4_part(part: str) -> int:
    if _HEX_PART.match(part):
        return int(part[2:] or "0", 16)
    if not part.isdigit() or not part.isascii():
        raise ValueError(part)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)  # raises ValueError on 8 or 9, as inet_aton does
    return int(part)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any form ``inet_aton`` accepts, or ``None`` if ``host`` is not one.

    ``inet_aton`` (used by ``getaddrinfo``, curl and browsers alike) takes 1 to 4 dot-separated parts,
    each decimal, octal (leading ``0``) or hex (``0x``); the last part fills the remaining bytes.
    So ``2130706433``, ``0x7f.1``, ``017700000001`` and ``127.1`` are all 127.0.0.1.

    Raises:
        ValueError: if ``host`` looks numeric (its last label is a number, as the WHATWG URL
            standard defines it) but is not a valid address, such as ``1.2.3.4.5`` or ``1.2.3.256``.
    """
    labels = host.split(".")
    last = labels[-1]
    if not (last.isascii() and last.isdigit()) and not _HEX_PART.match(last):
        return None
    if len(labels) > 4:
        raise ValueError(f"{host!r} has too many parts for an IPv4 address")
    try:
        parts = [_parse_ipv4_part(label) for label in labels]
    except ValueError:
        raise ValueError(f"{host!r} is not a valid IPv4 address") from None
    value = 0
    for part in parts[:-1]:
        if part > 255:
            raise ValueError(f"{host!r} is not a valid IPv4 address")
        value = value * 256 + part
    remaining = 4 - (len(parts) - 1)
    if parts[-1] >= 256**remaining:
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    value = value * 256**remaining + parts[-1]
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def address_category(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be connected to (``"loopback"``, ``"private"``...), or ``None`` if public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%")[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # Connecting to ::ffff:a.b.c.d (or through NAT64 or 6to4) reaches a.b.c.d.
            return address_category(embedded)
        if ip in _IPV4_COMPATIBLE and int(ip) > 1:
            return "reserved"  # deprecated IPv4-compatible ::a.b.c.d
    for category, networks in _CATEGORIES:
        if any(ip.version == net.version and ip in net for net in networks):
            return category
    if not ip.is_global:
        return "reserved"
    return None


def _parse_address(ip: str) -> IPAddress:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        # getaddrinfo gives IPv6 link-local addresses with a zone: fe80::1%eth0.
        return ipaddress.ip_address(ip.split("%", 1)[0])


def guard_address(ip: str, *, allow_loopback: bool, host: str | None = None) -> None:
    """Refuse to connect to ``ip`` unless it is a public address (or loopback, if allowed).

    This is the check made on the peer address at connection time.

    Raises:
        BlockedAddress: ``ip`` is loopback (unless ``allow_loopback``), private, link-local,
            shared, multicast, unspecified or otherwise reserved; or it is not an IP address.
    """
    try:
        address = _parse_address(ip)
    except ValueError:
        raise BlockedAddress(
            f"Refusing to connect to {ip!r}: not an IP address",
            host=host or ip,
            address=ip,
            category="invalid",
        ) from None
    category = address_category(address)
    if category is None or (category == "loopback" and allow_loopback):
        return
    shown = host if host and host != str(address) else None
    where = f"{shown!r} resolves to {address}" if shown else f"{address}"
    raise BlockedAddress(
        f"The URL's host is not allowed: {where}, which is {_CATEGORY_TEXT[category]}. "
        "Only public internet addresses can be downloaded from.",
        host=host or str(address),
        address=str(address),
        category=category,
    )


def normalize_host(host: str) -> str:
    """The host in lower-case ASCII (IDNA) without a trailing dot; :class:`InvalidInput` if malformed."""
    name = host.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidInput("The URL has no host name", code="missing_host")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidInput(f"The URL's host name {host!r} is not valid", code="invalid_host") from None
    if not _HOST_CHARS.match(name) or any(not label for label in name.split(".")):
        raise InvalidInput(f"The URL's host name {host!r} is not valid", code="invalid_host")
    return name


def domain_allowed(host: str, allowed_domains: Sequence[str]) -> bool:
    """Whether ``host`` is one of ``allowed_domains`` or a subdomain of one (empty list: any host)."""
    if not allowed_domains:
        return True
    for entry in allowed_domains:
        domain = entry.strip().lower().strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def check_host(
    host: str,
    *,
    resolve: Resolver = default_resolve,
    allow_loopback: bool = False,
    allowed_domains: Sequence[str] = (),
) -> tuple[str, tuple[str, ...]]:
    """Check a host name or literal IP and resolve it.

    Args:
        host: a host name, a literal IPv4 address in any ``inet_aton`` form, or an IPv6 address
            (without brackets).
        resolve: host name to addresses; only called for names, never for literal IPs.
        allow_loopback: let 127.0.0.0/8 and ::1 through (for tests against a local server).
        allowed_domains: if not empty, the host must be one of these domains or a subdomain.

    Returns:
        ``(normalized_host, addresses)``: every address is allowed.

    Raises:
        InvalidInput: ``invalid_host``, ``blocked_host``, ``domain_not_allowed``, ``unresolvable_host``.
        BlockedAddress: (an ``InvalidInput``) one of the addresses is not public.
        RetryableError: the resolver failed temporarily.
    """
    literal: IPAddress | None = None
    if ":" in host:
        try:
            literal = ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidInput(
                f"The URL's host {host!r} is not a valid IPv6 address", code="invalid_host"
            ) from None
        if literal.scope_id:
            raise InvalidInput(
                f"The URL's host {host!r} has an IPv6 zone, which is not allowed", code="invalid_host"
            )
        name = str(literal)
    else:
        name = normalize_host(host)
        try:
            literal = parse_ipv4_loose(name)
        except ValueError as exc:
            raise InvalidInput(f"The URL's host is not valid: {exc}", code="invalid_host") from None
        if literal is not None:
            name = str(literal)
    if name in BLOCKED_HOSTNAMES:
        raise InvalidInput(
            f"The URL's host {name!r} is the cloud metadata server, which cannot be downloaded from",
            code="blocked_host",
        )
    if not domain_allowed(name, allowed_domains):
        raise InvalidInput(
            f"Downloads from {name!r} are not allowed; allowed domains: {', '.join(allowed_domains)}",
            code="domain_not_allowed",
        )
    addresses = [str(literal)] if literal is not None else resolve(name)
    if not addresses:
        raise InvalidInput(
            f"The URL's host {name!r} does not resolve to any address", code="unresolvable_host"
        )
    for address in addresses:
        guard_address(address, allow_loopback=allow_loopback, host=name)
    return name, tuple(addresses)


def _split(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"The URL is longer than {MAX_URL_LENGTH} characters", code="invalid_url")
    # urlsplit silently drops tabs and newlines, and some clients read "\" as "/": both can make
    # two parsers see two different hosts, so neither is allowed.
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url) or "\\" in url:
        raise InvalidInput(
            "The URL contains spaces, control characters or backslashes; percent-encode them",
            code="invalid_url",
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidInput(f"The URL is not valid: {exc}", code="invalid_url") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"{scheme}://" if scheme else "no scheme"
        raise InvalidInput(
            f"Only http:// and https:// URLs can be downloaded, not {shown}", code="unsupported_scheme"
        )
    if "@" in parts.netloc:
        raise InvalidInput(
            "The URL contains a user name or password; credentials in URLs are not allowed",
            code="credentials_in_url",
        )
    if not parts.hostname:
        raise InvalidInput("The URL has no host name", code="missing_host")
    return parts


def check_url_syntax(url: str) -> str:
    """The URL's scheme, host and credential checks, without resolving it; returns it stripped.

    Cheap enough for input validation: nothing is looked up.

    Raises:
        InvalidInput: ``invalid_url``, ``unsupported_scheme``, ``credentials_in_url``, ``missing_host``.
    """
    url = url.strip()
    parts = _split(url)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise InvalidInput("The URL's port is not a number from 1 to 65535", code="invalid_url")
    return url


def check_url(
    url: str,
    *,
    resolve: Resolver = default_resolve,
    allow_loopback: bool = False,
    allowed_domains: Sequence[str] = (),
) -> CheckedUrl:
    """Check that ``url`` may be downloaded: see the module docstring for the rules.

    Args:
        url: what the client sent.
        resolve: host name to IP addresses (tests pass a dict lookup; the default uses getaddrinfo).
        allow_loopback: let loopback addresses through (tests against a local server only).
        allowed_domains: if not empty, only these domains and their subdomains.

    Raises:
        InvalidInput: with code ``invalid_url``, ``unsupported_scheme``, ``credentials_in_url``,
            ``missing_host``, ``invalid_host``, ``blocked_host``, ``domain_not_allowed``,
            ``unresolvable_host``, or ``blocked_address`` (a :class:`BlockedAddress`, which says which
            address and why).
        RetryableError: DNS failed temporarily.
    """
    url = check_url_syntax(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    assert parts.hostname is not None  # checked by _split
    port = parts.port or (443 if scheme == "https" else 80)
    host, addresses = check_host(
        parts.hostname, resolve=resolve, allow_loopback=allow_loopback, allowed_domains=allowed_domains
    )
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


__all__ = [
    "BlockedAddress",
    "CheckedUrl",
    "Resolver",
    "address_category",
    "check_host",
    "check_url",
    "check_url_syntax",
    "default_resolve",
    "domain_allowed",
    "guard_address",
    "normalize_host",
    "parse_ipv4_loose",
]


def precheck(inputs: Any, config: Any) -> None:
    """The functions' check of a video job before anything is downloaded (``SPEC.precheck``).

    Raises:
        InvalidInput: for a URL that must not be fetched, with the reason.
    """
    url = getattr(inputs, "url", None)
    if url is not None:
        check_url(url, allow_loopback=config.allow_loopback, allowed_domains=config.allowed_domains)
