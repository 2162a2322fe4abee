"""The value rules of a service configuration that are more than a type check (docs/service.md §2).

Each rule is a pure function: it returns the accepted (normalised) value or raises
:class:`~servomexlib.errors.ServomexValidationError` with a message that reads well after the
key it is about (the loader adds file, table path and line). No rule opens anything; only
:func:`canonical_port` looks at the file system, to resolve a device path that exists.

* ``${VAR}`` / ``${VAR:-default}`` (:func:`expand_env`): the value of ``VAR`` in the given
  environment; with ``:-`` the default replaces an unset *or empty* variable, as in the shell.
  ``$$`` is a literal ``$``. ``$NAME`` without braces is refused rather than left as is (a
  password with a ``$`` in it is written ``$$``): a service must not keep a string its author
  meant to be substituted. Any other ``$`` is literal.
* Ports (:func:`canonical_port`): two spellings of one port are one port. Device paths are
  normalised (``/dev/../dev/ttyUSB0``) and, when they exist, resolved through symlinks (so a
  ``/dev/serial/by-id/…`` link and its ``/dev/ttyUSB0`` target collide); COM names compare
  case-blind; ``sim://`` URLs compare by name when named (every open of ``sim://name`` in a
  process is the same simulated line, whatever its query) and by their sorted query when
  unnamed; ``tcp://`` and ``modbus-tcp://`` by lower-case host and port (502 by default for
  ``modbus-tcp://``), ignoring a trailing ``/``.
* ``listen`` (:func:`parse_listen`): ``HOST:PORT`` with PORT 1-65535, IPv6 in brackets.
* ``rotate`` (:func:`parse_rotate`): a time (``30s``, ``30min``, ``12h``, ``1d``) or a size
  (``500MB``; kB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024). ``m`` alone is refused: minutes
  or megabytes is exactly the kind of guess a service must not make.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import ErrorContext, ServomexValidationError

__all__ = [
    "ListenAddress",
    "Rotation",
    "canonical_port",
    "check_dsn",
    "check_mqtt_url",
    "check_name",
    "check_topic_prefix",
    "default_spool_dir",
    "expand_env",
    "parse_listen",
    "parse_rotate",
    "redact_url",
    "suggest",
]


def _invalid(message: str, port: str | None = None) -> ServomexValidationError:
    return ServomexValidationError(message, context=ErrorContext(port=port) if port else None)


# ------------------------------------------------------------------------------ ${VAR}

_DOLLAR = re.compile(r"\$(\$|\{[^}]*\}|\{|[A-Za-z_][A-Za-z0-9_]*)?")
_SUBST = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with every ``${VAR}`` / ``${VAR:-default}`` replaced and ``$$`` made ``$``.

    Raises:
        ServomexValidationError: an unset variable without default, ``$NAME`` without braces,
            an unclosed ``${`` or a malformed ``${…}``; one message naming all of them.
    """
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token is None:
            return "$"  # a lone $ (before a space, a digit, the end): literal
        if token == "$":
            return "$"
        if token == "{":
            errors.append("'${' is not closed by '}'")
            return ""
        if not token.startswith("{"):
            errors.append(f"'${token}' is not substituted: write '${{{token}}}', or '$$' for a $")
            return ""
        inner = _SUBST.match(token[1:-1])
        if inner is None:
            errors.append(f"bad substitution '${token}': expected ${{NAME}} or ${{NAME:-default}}")
            return ""
        name, default = inner.group(1), inner.group(2)
        value = environ.get(name)
        if default is not None and not value:
            return default
        if value is None:
            errors.append(
                f"environment variable {name} is not set (and '${{{name}}}' has no default)"
            )
            return ""
        return value

    result = _DOLLAR.sub(replace, text)
    if errors:
        raise _invalid("; ".join(errors))
    return result


# ------------------------------------------------------------------------------ ports

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COM = re.compile(r"^(?:\\\\\.\\)?COM([0-9]+)$", re.IGNORECASE)
_DEFAULT_TCP_PORTS = {"modbus-tcp": 502}


def _host_port(text: str, scheme: str) -> str:
    parts = urllib.parse.urlsplit(text)
    try:
        number = parts.port
    except ValueError as exc:
        raise _invalid(f"bad TCP port in {text!r}: {exc}", text) from None
    host = parts.hostname
    number = number if number is not None else _DEFAULT_TCP_PORTS.get(scheme)
    if not host or number is None:
        raise _invalid(f"expected {scheme}://host:port, got {text!r}", text)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{number}"


def canonical_port(port: str) -> str:
    """One spelling per port, to tell whether two buses name the same one (module docstring).

    Raises:
        ServomexValidationError: an empty port or a ``tcp://`` URL without host or port.
    """
    text = port.strip()
    if not text:
        raise _invalid("port must not be empty")
    match = _SCHEME.match(text)
    if match is None:
        com = _COM.match(text)
        if com is not None:
            return f"COM{int(com.group(1))}"
        path = os.path.normpath(text)
        return os.path.realpath(path) if os.path.exists(path) else path
    scheme = match.group(1).lower()
    if scheme == "sim":
        parts = urllib.parse.urlsplit(text)
        if parts.netloc:
            return f"sim://{parts.netloc}"
        pairs = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        query = urllib.parse.urlencode(pairs, safe=",:")
        return f"sim://?{query}" if query else "sim://"
    if scheme in ("tcp", "modbus-tcp"):
        return _host_port(text, scheme)
    return scheme + text[len(match.group(1)) :]


# ------------------------------------------------------------------------------ listen


@dataclasses.dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where the HTTP listener binds: exactly this host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_LISTEN = re.compile(r"^(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([^\s:\[\]]+)):([0-9]+)$")


def parse_listen(text: str) -> ListenAddress:
    """``HOST:PORT`` (``127.0.0.1:9464``, ``[::1]:9464``, ``0.0.0.0:9464``) as a ListenAddress.

    Raises:
        ServomexValidationError: no port, a port outside 1-65535, an IPv6 host without
            brackets, blanks.
    """
    match = _LISTEN.match(text)
    if match is None:
        hint = " (an IPv6 host goes in brackets: [::1]:9464)" if text.count(":") > 1 else ""
        raise _invalid(f"{text!r} is not HOST:PORT{hint}")
    host = match.group(1) or match.group(2)
    number = int(match.group(3))
    if not 1 <= number <= 65535:
        raise _invalid(f"port {number} is out of range 1-65535")
    return ListenAddress(host, number)


# ------------------------------------------------------------------------------ rotate


@dataclasses.dataclass(frozen=True, slots=True)
class Rotation:
    """When a file sink starts a new file: after ``seconds`` or at ``bytes`` (one is set);
    ``text`` is the value as written (``"1d"``). The fields are the sinks' ``rotate_seconds``
    and ``rotate_bytes`` arguments."""

    text: str
    seconds: float | None = None
    bytes: int | None = None


_ROTATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*$")
_TIME_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_rotate(text: str) -> Rotation:
    """A rotation: ``30min``/``12h``/``1d`` (time) or ``500MB``/``1GB``/``512MiB`` (size).

    Raises:
        ServomexValidationError: no number, an unknown or ambiguous unit, zero.
    """
    match = _ROTATE.match(text)
    units = "s, min, h, d or kB, MB, GB, KiB, MiB, GiB"
    if match is None:
        raise _invalid(f"{text!r} is not a rotation: a number and a unit ({units})")
    number, unit = float(match.group(1)), match.group(2)
    if number <= 0:
        raise _invalid(f"rotation {text!r} must be greater than zero")
    if unit in _TIME_UNITS:
        return Rotation(text, seconds=number * _TIME_UNITS[unit])
    if unit.lower() in _SIZE_UNITS:
        return Rotation(text, bytes=round(number * _SIZE_UNITS[unit.lower()]))
    if unit.lower() == "m":
        raise _invalid(f"rotation {text!r} is ambiguous: write 'min' for minutes or 'MB'")
    raise _invalid(f"rotation {text!r} has an unknown unit {unit!r} (use {units})")


# ------------------------------------------------------------------------------ names, URLs


def check_name(name: str, what: str) -> str:
    """A site or analyser name: used in MQTT topics, metric labels and the ``device`` column.

    Raises:
        ServomexValidationError: empty, surrounding blanks, ``/ + #``, a leading ``$``,
            control characters.
    """
    if not name:
        raise _invalid(f"{what} must not be empty")
    if name != name.strip():
        raise _invalid(f"{what} {name!r} has leading or trailing blanks")
    bad = sorted({c for c in name if c in "/+#" or not c.isprintable()})
    if bad:
        raise _invalid(f"{what} {name!r} contains {bad!r} (not allowed in an MQTT topic level)")
    if name.startswith("$"):
        raise _invalid(f"{what} {name!r} starts with '$' (reserved in MQTT topics)")
    return name


def check_mqtt_url(url: str) -> str:
    """``mqtt://[user:password@]host[:port]`` or ``mqtts://…``.

    Raises:
        ServomexValidationError: another scheme, no host, a bad port, a path or query.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("mqtt", "mqtts"):
        raise _invalid(f"url must start with mqtt:// or mqtts://, got {redact_url(url)!r}")
    try:
        parts.port  # noqa: B018 — validates the port
    except ValueError:
        raise _invalid(f"bad port in {redact_url(url)!r}") from None
    if not parts.hostname:
        raise _invalid(f"url {redact_url(url)!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _invalid(f"url {redact_url(url)!r} takes only user, password, host and port")
    return url


def check_dsn(dsn: str) -> str:
    """A PostgreSQL DSN: ``postgresql://…`` / ``postgres://…`` or ``key=value …``.

    Raises:
        ServomexValidationError: empty, another URL scheme, or neither form.
    """
    text = dsn.strip()
    if not text:
        raise _invalid("dsn must not be empty")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise _invalid(f"dsn must be postgresql://… (or key=value pairs), not {scheme}://")
    elif "=" not in text:
        raise _invalid("dsn must be postgresql://user@host/db or key=value pairs")
    return dsn


def redact_url(url: str) -> str:
    """``url`` with the password replaced by ``***`` (for messages and reports)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'baudrate'?)`` for the closest known key, else the known keys."""
    names = sorted(str(k) for k in known)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(names)})" if names else ""


def check_topic_prefix(prefix: str) -> str:
    """An MQTT topic prefix (``servomex``, ``plant/gas``): each level a valid name.

    Raises:
        ServomexValidationError: an empty level (``a//b``, a leading or trailing ``/``),
            ``+``, ``#``, a leading ``$``.
    """
    for level in prefix.split("/"):
        check_name(level, f"prefix level in {prefix!r}")
    return prefix


def default_spool_dir(environ: Mapping[str, str]) -> Path:
    """``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; its first entry), else the user
    state directory of ``servomex``."""
    state = environ.get("STATE_DIRECTORY", "")
    first = state.split(":")[0]
    if first:
        return Path(first)
    import platformdirs

    return Path(platformdirs.user_state_dir("servomex"))
