"""SSRF protection for webhooks: which addresses a webhook may connect to, checked where it counts.

The check runs on the addresses a host name *resolves to*, inside the HTTP client's network
backend, and the connection is then made to the address that was checked: a URL written as a
decimal (``http://2130706433/``), an IPv4-mapped IPv6 literal, or a name whose DNS answers a
private address is judged by where it would really connect. A name with any refused address is
refused whole. IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64
``64:ff9b::/96``, 6to4, Teredo) are judged by that address too.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx

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


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving names itself and connecting only to allowed addresses."""

    def __init__(self, allowed: Sequence[Network], resolve_timeout_s: float) -> None:
        self.allowed = list(allowed)
        self.resolve_timeout_s = resolve_timeout_s
        self.inner = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.resolve_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        found: list[IPAddress] = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if ip not in found:
                found.append(ip)
        return found

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port)
        for ip in addresses:
            reason = refusal(ip, self.allowed)
            if reason:
                raise AddressRefused(f"{host} resolves to {ip}, {reason}: webhooks may not connect there")
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for ip in addresses:
            try:
                return await self.inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("webhooks may not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


KEEPALIVE_CONNECTIONS = 1024  # idle connections kept open, over all endpoints
KEEPALIVE_EXPIRY_S = 5.0  # httpx's default


def guarded_client(allowed: Sequence[Network], timeout_s: float) -> httpx.AsyncClient:
    """An HTTP client for webhooks: guarded addresses, no redirects, no proxies from the environment."""
    transport = httpx.AsyncHTTPTransport(retries=0)
    # httpx has no public way to pass httpcore a network backend: swap its pool for one that has ours.
    # No bound on connections (httpcore's own is 10 in all): the dispatcher bounds requests per
    # endpoint itself, and every request in flight needs a connection of its own.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=None,
        max_keepalive_connections=KEEPALIVE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
        network_backend=GuardedBackend(allowed, timeout_s),
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False)
