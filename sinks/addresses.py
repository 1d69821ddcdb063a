"""SSRF protection for webhooks: which addresses a webhook may connect to, checked where it counts.

The check runs on the addresses a host name *resolves to*, inside the HTTP client's resolver,
and the connection is then made to an address that was checked: a URL written as a
decimal (``http://2130706433/``), an IPv4-mapped IPv6 literal, or a name whose DNS answers a
private address is judged by where it would really connect. A name with any refused address is
refused whole. IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64
``64:ff9b::/96``, 6to4, Teredo) are judged by that address too.
"""

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from vdip.errors import AddressRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64 or ip in NAT64_LOCAL or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _own_refusal(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip in CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def refusal(ip: IPAddress, allowed: Sequence[Network] = ()) -> str | None:
    """Why a webhook may not connect to ``ip`` (None: it may). ``allowed`` networks always may."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if inner is not None:
        reason = refusal(inner, allowed)
        return f"{reason} (carried in {ip})" if reason else None
    return _own_refusal(ip)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for webhooks: resolves a name, then refuses it whole if any of its
    addresses is refused; the connection goes to an address it returned (checked)."""

    def __init__(self, allowed: Sequence[Network], resolve_timeout_s: float) -> None:
        self.allowed = list(allowed)
        self.resolve_timeout_s = resolve_timeout_s

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM), self.resolve_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot resolve {host}: {exc!r}") from exc
        found: list[ResolveResult] = []
        for info_family, _, proto, _, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            reason = refusal(ip, self.allowed)
            if reason:
                raise AddressRefused(f"{host} resolves to {ip}, {reason}: webhooks may not connect there")
            found.append(
                ResolveResult(
                    hostname=host,
                    host=str(ip),
                    port=port,
                    family=info_family,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        return found

    async def close(self) -> None:
        pass


KEEPALIVE_EXPIRY_S = 5.0  # idle connections closed after this


@functools.lru_cache(maxsize=4096)
def parsed(url: str) -> tuple[yarl.URL, IPAddress | None]:
    """A webhook URL, parsed once, and the address it names if its host is an IP address."""
    parsed_url = yarl.URL(url)
    try:
        literal = ipaddress.ip_address((parsed_url.host or "").split("%")[0])
    except ValueError:
        return parsed_url, None  # a name: the resolver judges it
    return parsed_url, literal


class WebhookClient:
    """The HTTP client of webhooks: aiohttp (about a tenth of httpx's CPU per request here),
    connecting only to allowed addresses, never following redirects nor proxies from the
    environment. A URL naming an IP address is judged before the request (aiohttp does not
    resolve those); a name is judged by what it resolves to (``GuardedResolver``)."""

    def __init__(self, allowed: Sequence[Network], timeout_s: float) -> None:
        self.allowed = list(allowed)
        # No bound on connections: the dispatcher bounds requests per endpoint itself, and every
        # request in flight needs a connection of its own.
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allowed, timeout_s),
            use_dns_cache=False,
            limit=0,
            keepalive_timeout=KEEPALIVE_EXPIRY_S,
        )
        # No cookies: one receiver's would go back with every webhook to its host, whichever rule's.
        # Answers are read and dropped, never decompressed. One deadline a request, ``post``'s.
        self.timeout_s = timeout_s
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
        """POST ``body``; the status and the ``Retry-After`` header. Raises ``AddressRefused``,
        ``aiohttp.ClientError`` when there is no answer, or ``TimeoutError`` when it is not
        complete ``timeout_s`` after the call, whatever the phase (aiohttp's own timeouts are per
        phase: a receiver dripping its answer a byte at a time would never trip them)."""
        target, literal = parsed(url)
        host = target.host or ""
        if literal is not None:
            reason = refusal(literal, self.allowed)
            if reason:
                raise AddressRefused(f"{host} is {reason}: webhooks may not connect there")
        try:
            request = self.session.post(target, data=body, headers=headers, allow_redirects=False)
            async with asyncio.timeout(self.timeout_s), request as response:
                await response.read()  # so that the connection can serve the next request
                return response.status, response.headers.get("retry-after")
        except aiohttp.InvalidUrlClientError as exc:  # e.g. a legacy IPv4 form (2130706433, 127.1)
            raise AddressRefused(f"{host}: {exc}: webhooks may not connect there") from exc

    async def __aenter__(self) -> "WebhookClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()
