"""Many analysers across many ports: :class:`ServomexManager`.

Usage: docs/quickstart-async.md ("Several analysers on one bus").

Theory of operation
-------------------
An RS485 line is a multidrop bus: several analysers (slave addresses) share one port and only
one transaction may be on the wire at a time. The manager therefore keeps **one Modbus line
per port** — one transport, one anymodbus bus, one lock, one record of the last byte on the
wire — and gives every analyser on that port a client bound to it. The 50 ms pre-request
silence lives in the line, so it holds across a change of slave address (the analyser drops
requests that follow *any* traffic too closely, not just traffic to itself).

Operations run one task per port group: different ports concurrently, the analysers of one
port one after another under the port's group lock, taken once per group so that one cycle of
a port is not interleaved with another caller's cycle. Direct calls on two Analyzers that share
a port also serialise — on the line's transaction lock — instead of failing.

Port strings are canonicalised so that ``COM3``, ``com3`` and ``\\\\.\\COM3`` are one port, and
a symlink such as ``/dev/serial/by-id/…`` is the device it points to.

Managed analysers are identified lazily
---------------------------------------
The Analyzers the manager builds are never entered, but each is identified once, **before its
first sweep**, inside its port's group lock and through the Analyzer (so ``info`` is cached):
the Analyzer is built with ``identify_lazily=True``. Identify lists the populated slots (a
slot holding ``||||||`` with a blank unit is empty, docs/protocol.md, §4.7) and later sweeps
cover only those, so empty slots never appear as ``0.0``/``?`` readings. If identify fails, that
analyser's sweep fails for this cycle with the identify error — a failed ``DeviceResult`` in
:meth:`ServomexManager.poll`, dropped with a warning by :meth:`ServomexManager.poll_samples` —
and identify is tried again on the next cycle. There is deliberately no fallback sweep of all
ten slots: that is what reported empty slots as readings. A pre-built Analyzer added with
``add(name, analyzer)`` is the caller's and is swept as the caller set it up.

Closing (``remove``, ``close``) is shielded from cancellation, so a cancelled owner still
releases every port the manager opened.

Device failures and bugs
------------------------
A per-device failure is a :class:`~servomexlib.errors.ServomexError` (a timeout, a lost port,
an exception reply …): it becomes that analyser's failed ``DeviceResult`` (``poll``,
``execute_each``) or a WARNING and a skipped analyser (``poll_samples``), and the other
analysers carry on. Anything else — a ``TypeError`` in a user's ``execute_each`` operation, a
bug in the library — is not a device failure and is never folded into a result: it propagates
out of the call with its own traceback (the other port groups are cancelled; a lone failure is
raised bare, several as an exception group).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Self

import anyio

from .clients.modbus import ModbusClient, ModbusLine
from .devices.analyzer import Analyzer
from .devices.models import ErrorPolicy, Frame, ProtocolKind, Sample
from .errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexValidationError,
    unwrap_group,
)
from .settings import SerialSettings
from .transport.ports import resolve_transport
from .validation import check_address

if TYPE_CHECKING:
    from .clients.continuous import ContinuousStatistics
    from .clients.modbus import ModbusStatistics
    from .transport.base import Transport

__all__ = ["DeviceResult", "ServomexManager", "port_key"]

_log = logging.getLogger("servomexlib.manager")

_MODBUS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)
_COM = re.compile(r"^(?:\\\\\.\\)?(com\d+)$", re.IGNORECASE)


def port_key(port: str | Transport) -> str:
    """The canonical key of a port: which ``add`` calls share one line.

    Windows COM names drop a leading ``\\\\.\\`` and are uppercased; POSIX paths resolve
    symlinks when the path exists; ``tcp://`` keys lowercase scheme and host; ``sim://`` keys
    are the string as given; a Transport object keys as ``transport:<id>``.
    """
    if not isinstance(port, str):
        return f"transport:{id(port)}"
    com = _COM.match(port)
    if com:
        return com.group(1).upper()
    lowered = port.lower()
    if lowered.startswith("tcp://"):
        return lowered
    if lowered.startswith("sim://"):
        return port
    if os.path.exists(port):
        return os.path.realpath(port)
    return port


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceResult[T]:
    """One analyser's outcome: a value or an error, never both."""

    value: T | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        if self.value is not None and self.error is not None:
            raise ServomexValidationError("a DeviceResult holds a value or an error, not both")

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def success(cls, value: T) -> DeviceResult[T]:
        return cls(value=value)

    @classmethod
    def failure(cls, error: BaseException) -> DeviceResult[T]:
        return cls(error=error)


@dataclasses.dataclass(slots=True, eq=False)
class _Port:
    """A port group: the analysers that must take turns."""

    key: str
    label: str
    protocol: ProtocolKind | None
    line: ModbusLine | None  # None for a pre-built Analyzer's solo group
    owned: bool  # the manager opened the transport and closes it with the last user
    names: list[str] = dataclasses.field(default_factory=list)
    lock: anyio.Lock = dataclasses.field(default_factory=anyio.Lock)


@dataclasses.dataclass(slots=True, eq=False)
class _Member:
    name: str
    analyzer: Analyzer
    port: _Port
    managed: bool  # the manager built the Analyzer (and its client)


class ServomexManager:
    """Several Modbus analysers on one or more ports (RS485 multidrop).

    Use as an async context manager; ``close()`` releases every port the manager opened.

    Args:
        error_policy: how :meth:`execute_each` reports failures: ``RAISE`` an ExceptionGroup
            after every analyser finished, or ``RETURN`` the per-device results.
    """

    def __init__(self, *, error_policy: ErrorPolicy = ErrorPolicy.RAISE) -> None:
        self._error_policy = ErrorPolicy(error_policy)
        self._members: dict[str, _Member] = {}
        self._ports: dict[str, _Port] = {}
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._members)} analysers"
        return f"<ServomexManager {state} on {len(self._ports)} port(s)>"

    # ------------------------------------------------------------------ properties

    @property
    def names(self) -> tuple[str, ...]:
        """Analyser names in insertion order."""
        return tuple(self._members)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def error_policy(self) -> ErrorPolicy:
        return self._error_policy

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            await self.close()
        except BaseExceptionGroup as group:
            if exc_type is None:
                raise
            # Already leaving because of an error: that one matters more.
            _log.warning("manager: errors while closing after a failure: %r", group)

    def _require_open(self) -> None:
        if self._closed:
            raise ServomexConnectionError("manager is closed")

    async def add(
        self,
        name: str,
        source: str | Transport | Analyzer,
        *,
        protocol: ProtocolKind | str = ProtocolKind.MODBUS_RTU,
        address: int = 1,
        serial_settings: SerialSettings | None = None,
        timeout: float = 1.0,
    ) -> Analyzer:
        """Add an analyser and return its (never entered) :class:`Analyzer`.

        An analyser built here (str or Transport source) is identified lazily, before its
        first sweep, so sweeps cover only its populated slots (see the module docstring).

        Args:
            name: unique label; becomes the Analyzer's ``device``.
            source: a port string (the manager opens, shares and closes it), a Transport
                (bound, not closed by the manager) or a pre-built Analyzer (tracked only).
            protocol: ``MODBUS_RTU`` or ``MODBUS_ASCII`` (string values accepted); the first
                analyser on a port fixes its protocol.
            address: slave address 1-247.
            serial_settings: used when the manager opens a serial or TCP port.
            timeout: default per-transaction response timeout.

        Raises:
            ServomexConnectionError: the manager is closed, or the port cannot be opened.
            ServomexValidationError: duplicate name, continuous/AUTO protocol, protocol clash
                on a shared port, bad address.
        """
        self._require_open()
        if not isinstance(name, str) or not name:
            raise ServomexValidationError(f"manager: name must be a non-empty string, got {name!r}")
        if name in self._members:
            raise ServomexValidationError(f"manager: name {name!r} already in use")
        if isinstance(source, Analyzer):
            solo = _Port(
                key=f"solo:{name}", label=source.device, protocol=None, line=None, owned=False
            )
            self._ports[solo.key] = solo
            solo.names.append(name)
            self._members[name] = _Member(name, source, solo, managed=False)
            return source
        kind = self._check_protocol(protocol, source)
        key = port_key(source)
        ctx = ErrorContext(
            port=key, protocol=kind, address=address if isinstance(address, int) else None
        )
        shared = self._ports.get(key)
        if shared is not None and shared.protocol is not kind:
            spoken = shared.protocol.value if shared.protocol else "?"
            raise ServomexValidationError(
                f"manager: port {key} already speaks {spoken}, cannot add {name!r} as {kind.value}",
                context=ctx,
            )
        check_address(address, ctx)
        for other in self._members.values():
            if other.port is shared and other.analyzer.client.address == address:
                raise ServomexValidationError(
                    f"manager: address {address} on {key} is already used by {other.name!r}",
                    context=ctx,
                )
        port = shared
        if port is None:
            transport = await resolve_transport(source, serial_settings)
            try:
                line = ModbusLine(transport, framing=kind)
            except BaseException:
                if isinstance(source, str):
                    await transport.aclose()
                raise
            port = _Port(
                key=key,
                label=transport.label,
                protocol=kind,
                line=line,
                owned=isinstance(source, str),
            )
            self._ports[key] = port
        assert port.line is not None
        try:
            client = ModbusClient(
                port.line, framing=kind, address=address, timeout=timeout, device=name
            )
        except BaseException:
            if not port.names:
                await self._release_port(port)
            raise
        # Never entered; identified before its first sweep (see the module docstring).
        analyzer = Analyzer(client, device=name, identify_lazily=True)
        port.names.append(name)
        self._members[name] = _Member(name, analyzer, port, managed=True)
        return analyzer

    @staticmethod
    def _check_protocol(protocol: ProtocolKind | str, source: object) -> ProtocolKind:
        try:
            kind = ProtocolKind(protocol)
        except ValueError:
            raise ServomexValidationError(
                f"manager: unknown protocol {protocol!r}; expected modbus_rtu or modbus_ascii"
            ) from None
        if kind not in _MODBUS:
            raise ServomexValidationError(
                f"manager: {kind.value} is not supported; the manager is for Modbus multidrop "
                "lines (modbus_rtu or modbus_ascii)",
                context=ErrorContext(
                    port=source if isinstance(source, str) else None, protocol=kind
                ),
            )
        return kind

    async def remove(self, name: str) -> None:
        """Forget ``name``; the last analyser on a port the manager opened closes it.

        Raises:
            ServomexConnectionError: the manager is closed.
            ServomexValidationError: unknown name.
        """
        self._require_open()
        member = self._member(name)
        with anyio.CancelScope(shield=True):
            await self._drop(member)

    async def _drop(self, member: _Member) -> None:
        del self._members[member.name]
        port = member.port
        port.names.remove(member.name)
        try:
            if member.managed:
                await member.analyzer.client.aclose()
        finally:
            if not port.names:
                await self._release_port(port)

    async def _release_port(self, port: _Port) -> None:
        self._ports.pop(port.key, None)
        if port.owned and port.line is not None:
            await port.line.aclose()

    async def close(self) -> None:
        """Release every analyser, last added first; close the ports the manager opened.

        Failures are collected and raised together as a ``BaseExceptionGroup`` once everything
        was attempted. Closing twice is a no-op.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        # Shielded: a cancelled owner must still release every port, not just the first.
        with anyio.CancelScope(shield=True):
            for member in reversed(list(self._members.values())):
                try:
                    await self._drop(member)
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise BaseExceptionGroup("manager.close: errors while releasing analysers", errors)

    # ------------------------------------------------------------------ access

    def _member(self, name: str) -> _Member:
        try:
            return self._members[name]
        except KeyError:
            known = ", ".join(map(repr, self._members)) or "none"
            raise ServomexValidationError(
                f"manager: unknown analyser {name!r} (known: {known})"
            ) from None

    def get(self, name: str) -> Analyzer:
        """The Analyzer called ``name``. Raises ServomexValidationError if unknown."""
        return self._member(name).analyzer

    def _select(self, names: Sequence[str] | None) -> list[_Member]:
        self._require_open()
        if names is None:
            return list(self._members.values())
        if isinstance(names, str):
            names = [names]
        return [self._member(n) for n in names]

    # ------------------------------------------------------------------ operations

    async def _run[T](
        self, members: list[_Member], op: Callable[[Analyzer], Awaitable[T]]
    ) -> dict[str, DeviceResult[T]]:
        """Run ``op`` on every member: one task per port group, members of a group in turn.

        A ServomexError is that member's failed result; any other exception propagates
        (unwrapped from the task group when it is the only one), cancelling the other groups.
        """
        groups: dict[str, list[_Member]] = {}
        for member in members:
            groups.setdefault(member.port.key, []).append(member)
        results: dict[str, DeviceResult[T]] = {}

        async def run_group(group: list[_Member]) -> None:
            async with group[0].port.lock:
                for member in group:
                    try:
                        value = await op(member.analyzer)
                    except ServomexError as exc:
                        results[member.name] = DeviceResult.failure(exc)
                    else:
                        results[member.name] = DeviceResult.success(value)

        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                for group in groups.values():
                    tg.start_soon(run_group, group)
        except BaseExceptionGroup as group:
            failure = unwrap_group(group)
            if failure is group:
                raise
        if failure is not None:
            # Raised outside the except block so the bare error keeps its own cause chain.
            raise failure
        return {m.name: results[m.name] for m in members}

    async def poll(
        self, names: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> Mapping[str, DeviceResult[Frame]]:
        """One sweep of every (or the named) analysers; always a complete mapping.

        A managed analyser not yet identified is identified first (in its port's lock); if
        that fails, its result is the identify error and the next call tries again.
        ``timeout`` is the per-transaction override (docs/protocol.md, §9.2): every transaction
        of the sweep, and each retry, waits at most that long. Ignores the error policy.
        """
        members = self._select(names)

        async def op(anz: Analyzer) -> Frame:
            return await anz.poll(timeout=timeout)

        return await self._run(members, op)

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[Sample]:
        """Samples of one sweep of every analyser; failing analysers are skipped with a warning.

        Only populated slots appear (managed analysers are identified before their first sweep;
        one whose identify fails is skipped for this cycle). Never raises for device errors
        (ServomexError), so a manager is a robust ``PollSource`` for record(); anything else
        propagates.
        """
        results = await self.poll(names, timeout=timeout)
        samples: list[Sample] = []
        for name, result in results.items():
            if result.value is not None:
                samples.extend(result.value.as_samples(name))
            else:
                _log.warning("manager: %s failed: %s", name, result.error)
        return samples

    async def execute_each[T](
        self, op: Callable[[Analyzer], Awaitable[T]], names: Sequence[str] | None = None
    ) -> dict[str, DeviceResult[T]]:
        """Run ``op(analyzer)`` on every (or the named) analysers.

        A ServomexError raised by ``op`` is that analyser's failure; any other exception
        (a bug in ``op``) is not caught: it propagates bare and cancels the rest.

        Returns:
            name → DeviceResult under ``ErrorPolicy.RETURN``.

        Raises:
            ExceptionGroup: under ``ErrorPolicy.RAISE`` when any analyser failed, after all of
                them finished: ``"manager.execute_each: one or more analysers failed"``.
        """
        results = await self._run(self._select(names), op)
        if self._error_policy is ErrorPolicy.RAISE:
            errors = [r.error for r in results.values() if r.error is not None]
            if errors:
                raise ExceptionGroup(
                    "manager.execute_each: one or more analysers failed",
                    [e for e in errors if isinstance(e, Exception)],
                )
        return results

    def statistics(self) -> Mapping[str, ContinuousStatistics | ModbusStatistics]:
        """Per-analyser client counters (Modbus statistics), keyed by name."""
        return {name: m.analyzer.statistics() for name, m in self._members.items()}
