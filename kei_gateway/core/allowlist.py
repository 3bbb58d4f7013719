"""Allow-lists: is an address inside a list of networks? (Pure.)"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["Network", "address_allowed"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_allowed(address: str, networks: Iterable[Network]) -> bool:
    """True when *address* (IPv4, IPv6, or IPv4-mapped IPv6) lies in one of *networks*.

    Anything that is not an IP address (a UNIX socket path, garbage) is not allowed.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)
