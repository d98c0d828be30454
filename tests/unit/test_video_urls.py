"""The SSRF guard's decisions, with DNS answers supplied by the tests (no lookup leaves the process)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from core.errors import InvalidInput, RetryableError
from pipelines.video.urls import (
    BlockedAddress,
    address_category,
    check_url,
    default_resolve,
    domain_allowed,
    guard_address,
    parse_ipv4_loose,
)


def resolver(table: dict[str, list[str]]) -> Callable[[str], list[str]]:
    """A resolver answering from ``table`` (unknown names resolve to nothing)."""

    def resolve(host: str) -> list[str]:
        return list(table.get(host, []))

    return resolve


def no_dns(host: str) -> list[str]:
    raise AssertionError(f"a literal IP must not be looked up, but {host!r} was")


PUBLIC = resolver({"videos.example.com": ["93.184.216.34"], "v6.example.com": ["2606:2800:220:1::248"]})


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "unsupported_scheme"),
        ("ftp://videos.example.com/a.mp4", "unsupported_scheme"),
        ("gopher://videos.example.com:70/_x", "unsupported_scheme"),
        ("javascript:alert(1)", "unsupported_scheme"),
        ("videos.example.com/a.mp4", "unsupported_scheme"),
        ("http:///a.mp4", "missing_host"),
        ("http://:80/a.mp4", "missing_host"),
        ("https://user:secret@videos.example.com/a.mp4", "credentials_in_url"),
        ("https://user@videos.example.com/a.mp4", "credentials_in_url"),
        ("http://videos.example.com:99999/", "invalid_url"),
        ("http://videos.example.com:0/", "invalid_url"),
        ("http://videos.example.com\\@evil.test/", "invalid_url"),
        ("http://videos.exa\tmple.com/", "invalid_url"),
        ("http://videos.example.com/a b.mp4", "invalid_url"),
        ("http://" + "a" * 5000 + ".com/", "invalid_url"),
        ("http://1.2.3.4.5/", "invalid_host"),
        ("http://1.2.3.256/", "invalid_host"),
        ("http://%31%32%37.0.0.1/", "invalid_host"),
        ("http://[fe80::1%25eth0]/", "invalid_host"),
        ("http://metadata.google.internal/computeMetadata/v1/", "blocked_host"),
        ("http://METADATA.google.internal./computeMetadata/v1/", "blocked_host"),
        ("http://metadata/computeMetadata/v1/", "blocked_host"),
        ("http://nowhere.example.com/a.mp4", "unresolvable_host"),
    ],
)
def test_bad_urls_are_rejected_with_a_specific_code(url: str, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url(url, resolve=PUBLIC)
    assert caught.value.code == code
    assert caught.value.message  # says what is wrong


@pytest.mark.parametrize(
    ("url", "address", "category"),
    [
        ("http://127.0.0.1/", "127.0.0.1", "loopback"),
        ("http://127.8.9.10:8080/x", "127.8.9.10", "loopback"),
        ("http://2130706433/", "127.0.0.1", "loopback"),  # decimal
        ("http://0x7f.1/", "127.0.0.1", "loopback"),  # hex + short form
        ("http://0x7f000001/", "127.0.0.1", "loopback"),
        ("http://0177.0.0.1/", "127.0.0.1", "loopback"),  # octal
        ("http://017700000001/", "127.0.0.1", "loopback"),
        ("http://127.1/", "127.0.0.1", "loopback"),
        ("http://[::1]/", "::1", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "loopback"),  # IPv4-mapped
        ("http://169.254.169.254/computeMetadata/v1/", "169.254.169.254", "link_local"),
        ("http://2852039166/latest/meta-data/", "169.254.169.254", "link_local"),
        ("http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe", "link_local"),
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe", "link_local"),  # NAT64
        ("http://[fe80::1]/", "fe80::1", "link_local"),
        ("http://10.0.0.5/", "10.0.0.5", "private"),
        ("http://172.16.3.4/", "172.16.3.4", "private"),
        ("http://172.31.255.255/", "172.31.255.255", "private"),
        ("http://192.168.1.1/", "192.168.1.1", "private"),
        ("http://3232235777/", "192.168.1.1", "private"),
        ("http://[fc00::1]/", "fc00::1", "private"),
        ("http://[fd12:3456::1]/", "fd12:3456::1", "private"),
        ("http://[2002:c0a8:101::]/", "2002:c0a8:101::", "private"),  # 6to4 of 192.168.1.1
        ("http://100.64.0.1/", "100.64.0.1", "shared"),
        ("http://100.127.255.254/", "100.127.255.254", "shared"),
        ("http://0.0.0.0/", "0.0.0.0", "unspecified"),
        ("http://0/", "0.0.0.0", "unspecified"),
        ("http://[::]/", "::", "unspecified"),
        ("http://224.0.0.1/", "224.0.0.1", "multicast"),
        ("http://[ff02::1]/", "ff02::1", "multicast"),
        ("http://255.255.255.255/", "255.255.255.255", "broadcast"),
        ("http://240.0.0.1/", "240.0.0.1", "reserved"),
        ("http://192.0.2.10/", "192.0.2.10", "reserved"),  # documentation
        ("http://198.18.0.1/", "198.18.0.1", "reserved"),  # benchmarking
        ("http://[2001:db8::1]/", "2001:db8::1", "reserved"),
        ("http://[::7f00:1]/", "::7f00:1", "reserved"),  # deprecated IPv4-compatible
    ],
)
def test_literal_addresses_that_are_not_public_are_blocked(url: str, address: str, category: str) -> None:
    with pytest.raises(BlockedAddress) as caught:
        check_url(url, resolve=no_dns)
    error = caught.value
    assert error.code == "blocked_address"
    assert error.category == category
    assert error.address == address
    assert address in error.message


@pytest.mark.parametrize(
    ("answers", "category"),
    [
        (["10.1.2.3"], "private"),
        (["169.254.169.254"], "link_local"),
        (["127.0.0.1"], "loopback"),
        (["::1"], "loopback"),
        (["fd00::7"], "private"),
        (["100.100.100.100"], "shared"),
        (["fe80::1%eth0"], "link_local"),
        # Every address must be public, not just the first: a client may connect to any of them.
        (["93.184.216.34", "10.0.0.9"], "private"),
        (["2606:2800:220:1::248", "::ffff:192.168.0.1"], "private"),
    ],
)
def test_a_name_resolving_to_a_non_public_address_is_blocked(answers: list[str], category: str) -> None:
    with pytest.raises(BlockedAddress) as caught:
        check_url(
            "https://innocent.example.net/video.mp4", resolve=resolver({"innocent.example.net": answers})
        )
    assert caught.value.category == category
    assert "innocent.example.net" in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/a.mp4",
        "http://localhost:8080/a.mp4",
        "http://2130706433/a.mp4",
        "http://[::1]:8080/a.mp4",
    ],
)
def test_loopback_only_when_allowed(url: str) -> None:
    resolve = resolver({"localhost": ["127.0.0.1", "::1"]})
    with pytest.raises(BlockedAddress):
        check_url(url, resolve=resolve)
    checked = check_url(url, resolve=resolve, allow_loopback=True)
    assert checked.scheme == "http"
    assert all(ipaddress.ip_address(a).is_loopback for a in checked.addresses)


def test_allowing_loopback_allows_nothing_else() -> None:
    with pytest.raises(BlockedAddress) as caught:
        check_url("http://169.254.169.254/", resolve=no_dns, allow_loopback=True)
    assert caught.value.category == "link_local"
    with pytest.raises(BlockedAddress):
        check_url("http://10.0.0.1/", resolve=no_dns, allow_loopback=True)


@pytest.mark.parametrize(
    ("url", "host", "port", "addresses"),
    [
        ("https://videos.example.com/watch?v=1", "videos.example.com", 443, ("93.184.216.34",)),
        ("http://VIDEOS.Example.com.:8080/a", "videos.example.com", 8080, ("93.184.216.34",)),
        ("  https://v6.example.com/a  ", "v6.example.com", 443, ("2606:2800:220:1::248",)),
        ("http://8.8.8.8/a.mp4", "8.8.8.8", 80, ("8.8.8.8",)),
        ("http://134744072/a.mp4", "8.8.8.8", 80, ("8.8.8.8",)),  # 8.8.8.8 in decimal is still public
        (
            "http://[2607:f8b0:4004:800::200e]/a",
            "2607:f8b0:4004:800::200e",
            80,
            ("2607:f8b0:4004:800::200e",),
        ),
        ("http://[::ffff:8.8.8.8]/a", "::ffff:808:808", 80, ("::ffff:808:808",)),
    ],
)
def test_public_urls_pass(url: str, host: str, port: int, addresses: tuple[str, ...]) -> None:
    checked = check_url(url, resolve=PUBLIC)
    assert (checked.host, checked.port, checked.addresses) == (host, port, addresses)
    assert checked.url == url.strip()


def test_unicode_host_names_are_checked_in_their_idna_form() -> None:
    resolve = resolver({"xn--bcher-kva.example": ["93.184.216.34"]})
    checked = check_url(
        "https://bücher.example/v.mp4", resolve=resolve, allowed_domains=["xn--bcher-kva.example"]
    )
    assert checked.host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("youtube.com", True),
        ("www.youtube.com", True),
        ("m.youtube.com", True),
        ("vimeo.com", True),
        ("player.vimeo.com", True),
        ("notyoutube.com", False),
        ("youtube.com.evil.test", False),
        ("evil.test", False),
    ],
)
def test_allowed_domains_match_the_domain_and_its_subdomains(host: str, allowed: bool) -> None:
    domains = ["youtube.com", ".Vimeo.com."]
    assert domain_allowed(host, domains) is allowed
    resolve = resolver({host: ["93.184.216.34"]})
    if allowed:
        assert check_url(f"https://{host}/v", resolve=resolve, allowed_domains=domains).host == host
    else:
        with pytest.raises(InvalidInput) as caught:
            check_url(f"https://{host}/v", resolve=resolve, allowed_domains=domains)
        assert caught.value.code == "domain_not_allowed"


def test_disallowed_domains_are_refused_before_any_lookup() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url("https://evil.test/v", resolve=no_dns, allowed_domains=["youtube.com"])
    assert caught.value.code == "domain_not_allowed"


def test_an_empty_allow_list_allows_any_public_host() -> None:
    assert domain_allowed("anything.example", [])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", None),
        ("1e3", None),
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F.0.0.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0x", "0.0.0.0"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_ipv4_is_parsed_as_inet_aton_does(host: str, expected: str | None) -> None:
    parsed = parse_ipv4_loose(host)
    assert (str(parsed) if parsed else None) == expected
    if expected is not None and host != "0x":  # "0x" is 0 for WHATWG, a name for glibc: refused either way
        # The same answer as the C library's parser, which getaddrinfo and curl use.
        assert socket.inet_ntoa(socket.inet_aton(host)) == expected


@pytest.mark.parametrize("host", ["4294967296", "1.2.3.4.5", "08.1.1.1", "1.256.1.1", "0xg.1", "a.0x10"])
def test_hosts_ending_in_a_number_must_be_valid_addresses(host: str) -> None:
    # WHATWG: a host whose last label is a number is an IPv4 address or an error, never a name.
    with pytest.raises(ValueError):
        parse_ipv4_loose(host)
    with pytest.raises(InvalidInput) as caught:
        check_url(f"http://{host}/", resolve=no_dns)
    assert caught.value.code == "invalid_host"


@pytest.mark.parametrize(
    ("ip", "category"),
    [
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:1.1.1.1", None),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link_local"),
        ("fe80::abcd", "link_local"),
        ("172.15.255.255", None),
        ("172.32.0.0", None),
    ],
)
def test_address_category(ip: str, category: str | None) -> None:
    assert address_category(ipaddress.ip_address(ip)) == category


def test_guard_address_is_the_connection_time_check() -> None:
    guard_address("93.184.216.34", allow_loopback=False)
    guard_address("127.0.0.1", allow_loopback=True)
    guard_address("::1", allow_loopback=True)
    for ip in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::ffff:10.0.0.1", "0.0.0.0"):
        with pytest.raises(BlockedAddress):
            guard_address(ip, allow_loopback=False)
    with pytest.raises(BlockedAddress) as caught:
        guard_address("not-an-ip", allow_loopback=True)
    assert caught.value.category == "invalid"


def test_default_resolve_lists_unique_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_getaddrinfo(
        host: str, port: object, *args: object, **kwargs: object
    ) -> list[tuple[object, ...]]:
        assert host == "videos.example.com"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:220:1::248", 0, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert default_resolve("videos.example.com") == ["93.184.216.34", "2606:2800:220:1::248"]


@pytest.mark.parametrize(
    ("errno", "expected"),
    [(socket.EAI_NONAME, "empty"), (socket.EAI_AGAIN, "retry")],
)
def test_default_resolve_errors(monkeypatch: pytest.MonkeyPatch, errno: int, expected: str) -> None:
    def failing(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(errno, "lookup failed")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    if expected == "empty":
        assert default_resolve("gone.example") == []
        with pytest.raises(InvalidInput) as caught:
            check_url("http://gone.example/")
        assert caught.value.code == "unresolvable_host"
    else:
        with pytest.raises(RetryableError) as retry:
            check_url("http://flaky.example/")
        assert retry.value.code == "dns_unavailable"
