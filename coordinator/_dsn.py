"""Connection strings, and keeping their passwords out of every output.

A DSN is never shown as given. :func:`redact_dsn` rebuilds it from the parts
that say where it points (user, hosts, ports, database and the harmless
parameters) and puts ``***`` wherever a password or any other value was.

asyncpg reads a URL with :func:`urllib.parse.urlparse` and splits the
authority at its first ``@``: an unescaped ``/``, ``?``, ``#`` or ``@`` in a
password moves the rest of the password into the host, port or database
name, where an error message would show it. Such a URL has an ``@`` where
none can be, so :func:`dsn_problem` refuses it (with the fix) before it is
used, and :func:`redact_dsn` shows nothing of it but its scheme.
"""

from __future__ import annotations

import re

__all__ = ["dsn_problem", "redact_dsn"]

_SCHEMES = ("postgresql", "postgres")
#: Parameters that say where a DSN points or how; every other value is hidden.
_SHOWN = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "user",
        "dbname",
        "database",
        "target_session_attrs",
        "sslmode",
        "connect_timeout",
        "application_name",
    }
)
#: ``key = value`` of a libpq keyword/value string; a value is quoted or a run of non-blanks.
_KEYWORD_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)\s*")
_HIDDEN_URL = "{scheme}://*** (the rest hidden: percent-encode / ? # @ in the password)"


def redact_dsn(dsn: str) -> str:
    """``dsn`` with only where it points: no password or other secret; safe to log and print."""
    if "://" in dsn:
        return _redact_url(dsn)
    return _redact_keywords(dsn)


def dsn_problem(dsn: str) -> str | None:
    """Why asyncpg would misread ``dsn``, as the fix to make; None when it reads it right."""
    scheme, found, rest = dsn.partition("://")
    if not found or scheme not in _SCHEMES:
        return (
            "the DSN must be a URL, postgresql://user@host:5432/dbname (asyncpg reads no "
            "key=value strings); put the password in PGPASSWORD or a passfile"
        )
    if _misplaced_at(rest):
        return (
            "the DSN has an @ after its host, or more than one before it: an unescaped / ? # "
            "or @ in the password? Percent-encode them (%2F %3F %23 %40), or leave the password "
            "out of the DSN and set PGPASSWORD"
        )
    return None


def _misplaced_at(rest: str) -> bool:
    """Whether an ``@`` sits anywhere but once at the end of the authority."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest.count("@", 0, end) > 1 or "@" in rest[end:]


def _redact_url(dsn: str) -> str:
    scheme, _, rest = dsn.partition("://")
    if _misplaced_at(rest):
        return _HIDDEN_URL.format(scheme=scheme)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    tail = tail.partition("#")[0]
    path, _, query = tail.partition("?")
    userinfo, at, hosts = authority.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{scheme}://" + (f"{user}{':***' if colon else ''}@" if at else "") + hosts + path
    if query:
        shown += "?" + "&".join(_shown_pair(*pair.partition("=")[::2]) for pair in query.split("&"))
    return shown


def _shown_pair(key: str, value: str) -> str:
    return f"{key}={value if key.lower() in _SHOWN else '***'}"


def _redact_keywords(dsn: str) -> str:
    pairs = []
    position = 0
    while position < len(dsn.rstrip()):
        match = _KEYWORD_PAIR.match(dsn, position)
        if match is None or match.end() == position:
            return "<unparseable DSN>"
        key, value = match.groups()
        pairs.append(f"{key}={value if key.lower() in _SHOWN else '***'}")
        position = match.end()
    return " ".join(pairs)
