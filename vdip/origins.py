"""Web origins an application lets send its events from a browser (CORS on the ingest routes).

An origin is ``scheme://host[:port]`` as a browser sends it in the ``Origin`` header (RFC 6454):
http or https, a host name or IP address, an optional port, nothing after (but a "/"). It is stored lowercase
with the scheme's default port left out, so it compares equal to what browsers send.
"""

import re

MAX_ORIGINS = 100
_ORIGIN = re.compile(
    r"^(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)(:(?P<port>[0-9]{1,5}))?/?$"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_origin(text: str) -> str | None:
    """The origin ``text`` names, in the form browsers send; None if it is not one."""
    found = _ORIGIN.match(text.strip().lower())
    if found is None:
        return None
    scheme, host, port = found["scheme"], found["host"], found["port"]
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    elif port is not None and not 0 < int(port) <= 65535:
        return None
    return f"{scheme}://{host}" + (f":{port}" if port else "")
