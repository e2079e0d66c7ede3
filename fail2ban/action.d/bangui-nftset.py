"""bangui-nftset: a fail2ban Python action that keeps a jail's bans in nftables sets.

fail2ban runs a command action once per address (one ``nft`` process, ~10 ms each);
this action runs inside fail2ban, so ``ban()``/``unban()`` only queue the change in
memory (microseconds) and a worker thread applies everything queued in one atomic
``nft -f -`` transaction, at most ``batchdelay`` seconds after the first queued entry.
fail2ban stays the authority: it still decides every ban, unban, expiry and restore.

Kernel layout, in table ``inet <table>`` (shared by every jail using the action):

- ``<addr4>``/``<addr6>``: hash sets with the banned single addresses. nft 1.0.x reads
  every element of every *interval* set into its cache on each run (~2 s per command
  with 100,000 elements, on any table), a hash set's elements never: addresses stay
  cheap however many there are.
- ``<net4>``/``<net6>``: interval sets with the banned networks (CIDR entries). Only the
  outermost networks go in: CIDRs either nest or are disjoint, so the union is exact,
  and nested entries (which the kernel refuses as overlapping) never reach it. No
  auto-merge: merged intervals would make the unban of an inner network cut a hole in
  an outer one that fail2ban still bans.
- ``<chain>``: a base chain on the input hook with one ``saddr @set <verdict>`` rule
  per set.

The in-memory sets are authoritative: a batch only adds what is absent and deletes what
is present, so duplicates and unbans of unknown entries never fail it. A failed batch
changes nothing (one transaction); it is logged and retried as a rebuild of this jail's
chain and sets from memory (which also repairs a ruleset flushed behind our back). Only
one ``nft`` runs at a time in the whole fail2ban process.

Jail usage (options are optional; defaults shown for a jail named JAIL)::

    action = bangui-nftset.py[table=bangui, chain=JAIL-input, addr4=JAIL-addr4,
                              net4=JAIL-net4, addr6=JAIL-addr6, net6=JAIL-net6,
                              priority=-1, verdict=drop, batchdelay=0.05]
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import Any

from fail2ban.server.action import ActionBase

# Interval-set deletes cost nft 1.0.6 time in proportion to the set size per element
# (measured: 1 delete from 100k ~2.5 s, 16 from 10k ~0.44 s), while flushing the set and
# re-adding the survivors costs about one load (100k ~1.7 s, 10k ~0.43 s). Rewrite the
# network set when (deletes x elements) reaches this. Address (hash) sets always delete
# in place: 10,000 deletes from 100,000 took 0.08 s against 0.6 s for a rewrite.
NET_REWRITE_COST = 50_000

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}")
_VERDICTS = ("drop", "reject")
_FLUSH = ("*", 0, False, None)
_BACKOFF_MAX = 30.0


def _shared() -> Any:
    """Process-wide state: the one-nft-at-a-time lock and who uses which table.

    fail2ban loads this file once per jail (1.0 re-executes it into one module object,
    1.1 makes a new module each time), so module globals are not shared reliably; an
    entry in ``sys.modules`` is.
    """
    key = "_bangui_nftset_shared"
    state = sys.modules.get(key)
    if state is None:
        fresh = types.ModuleType(key)
        fresh.lock = threading.RLock()  # type: ignore[attr-defined]
        fresh.users = {}  # type: ignore[attr-defined]
        state = sys.modules.setdefault(key, fresh)
    return state


class NftError(Exception):
    """An ``nft`` run failed; nothing of its transaction was applied."""


@dataclass(frozen=True)
class Layout:
    """Names and rule options of one jail's objects in the kernel."""

    table: str
    chain: str
    addr4: str
    net4: str
    addr6: str
    net6: str
    priority: int
    verdict: str

    def sets(self) -> list[tuple[str, str]]:
        return [
            (self.addr4, "type ipv4_addr;"),
            (self.net4, "type ipv4_addr; flags interval;"),
            (self.addr6, "type ipv6_addr;"),
            (self.net6, "type ipv6_addr; flags interval;"),
        ]

    def teardown(self) -> list[str]:
        """Delete this jail's chain and sets, whether they exist or not."""
        t = f"inet {self.table}"
        lines = [f"add table {t}", f"add chain {t} {self.chain}"]
        lines += [f"flush chain {t} {self.chain}", f"delete chain {t} {self.chain}"]
        for name, decl in self.sets():
            lines += [f"add set {t} {name} {{ {decl} }}", f"delete set {t} {name}"]
        return lines

    def create(self) -> list[str]:
        t = f"inet {self.table}"
        lines = [
            f"add table {t}",
            (
                f"add chain {t} {self.chain} {{ type filter hook input priority {self.priority};"
                " policy accept; }"
            ),
        ]
        lines += [f"add set {t} {name} {{ {decl} }}" for name, decl in self.sets()]
        for family, sets in (("ip", (self.addr4, self.net4)), ("ip6", (self.addr6, self.net6))):
            lines += [f"add rule {t} {self.chain} {family} saddr @{s} {self.verdict}" for s in sets]
        return lines


def parse_layout(jail: str, opts: dict[str, str]) -> Layout:
    """The layout from the action's options; ValueError names the bad option."""
    known = {"table", "chain", "addr4", "net4", "addr6", "net6", "priority", "verdict"}
    known |= {"batchdelay", "nft", "timeout"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"bangui-nftset: unknown option(s) {', '.join(unknown)}")
    names = {
        "table": "bangui",
        "chain": f"{jail}-input",
        "addr4": f"{jail}-addr4",
        "net4": f"{jail}-net4",
        "addr6": f"{jail}-addr6",
        "net6": f"{jail}-net6",
    }
    for key, default in names.items():
        value = str(opts.get(key, default)).strip()
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"bangui-nftset: {key}={value!r} is not a usable nft name "
                "(a letter, then letters, digits, '_' or '-'; at most 128)"
            )
        names[key] = value
    set_names = [names[k] for k in ("addr4", "net4", "addr6", "net6")]
    if len(set(set_names)) != 4:
        raise ValueError("bangui-nftset: addr4, net4, addr6 and net6 must differ")
    try:
        priority = int(str(opts.get("priority", "-1")).strip())
    except ValueError:
        raise ValueError("bangui-nftset: priority must be an integer") from None
    if not -(2**31) <= priority < 2**31:
        raise ValueError("bangui-nftset: priority is out of range")
    verdict = str(opts.get("verdict", "drop")).strip()
    if verdict not in _VERDICTS:
        raise ValueError(f"bangui-nftset: verdict must be one of {', '.join(_VERDICTS)}")
    return Layout(priority=priority, verdict=verdict, **names)


def _number(opts: dict[str, str], key: str, default: float, low: float, high: float) -> float:
    try:
        value = float(str(opts.get(key, default)).strip())
    except ValueError:
        raise ValueError(f"bangui-nftset: {key} must be a number") from None
    if not low <= value <= high:
        raise ValueError(f"bangui-nftset: {key} must be within {low:g}..{high:g}")
    return value


def parse_entry(text: str) -> tuple[int, bool, Any]:
    """(family 4/6, is a network, key) for an address or CIDR; ValueError otherwise.

    Keys: an address's canonical text; a network's (first address as int, prefix).
    """
    if "/" in text:
        net = ipaddress.ip_network(text, strict=False)
        if net.prefixlen < net.max_prefixlen:
            return net.version, True, (int(net.network_address), net.prefixlen)
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = net.network_address
    else:
        addr = ipaddress.ip_address(text)
    if getattr(addr, "scope_id", None):
        raise ValueError("an address with a scope id cannot be banned")
    return addr.version, False, str(addr)


def outermost(nets: set[tuple[int, int]], bits: int) -> set[tuple[int, int]]:
    """The networks not inside another one: their union equals the union of all."""
    out: set[tuple[int, int]] = set()
    end = -1
    for start, prefix in sorted(nets):  # an outer network sorts before its inner ones
        if start > end:
            out.add((start, prefix))
            end = start + (1 << (bits - prefix)) - 1
    return out


class _Family:
    """What fail2ban bans in one address family, and which networks the kernel holds."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.bits = 32 if version == 4 else 128
        self.addrs: set[str] = set()
        self.nets: set[tuple[int, int]] = set()
        self.applied_nets: set[tuple[int, int]] = set()
        self.was: dict[str, bool] = {}  # presence before this batch, per touched address
        self.nets_touched = False

    def net_text(self, net: tuple[int, int]) -> str:
        first = (
            ipaddress.IPv4Address(net[0]) if self.version == 4 else ipaddress.IPv6Address(net[0])
        )
        return f"{first}/{net[1]}"

    def change(self, ban: bool, is_net: bool, key: Any) -> None:
        if is_net:
            (self.nets.add if ban else self.nets.discard)(key)
            self.nets_touched = True
            return
        if key not in self.was:
            self.was[key] = key in self.addrs
        (self.addrs.add if ban else self.addrs.discard)(key)

    def clear(self) -> None:
        self.addrs.clear()
        self.nets.clear()
        self.was.clear()


def _elements(op: str, table: str, name: str, items: list[str]) -> list[str]:
    return [f"{op} element inet {table} {name} {{ {', '.join(items)} }}"] if items else []


class NftSetAction(ActionBase):  # type: ignore[misc]
    """Batched nftables sets for one jail (see the module docstring)."""

    def __init__(self, jail: Any, name: str, **opts: str) -> None:
        super().__init__(jail, name)
        self._jailname = str(jail.name)
        self._configure(opts)
        self._families = {4: _Family(4), 6: _Family(6)}
        self._cond = threading.Condition()
        self._pending: list[tuple[str, int, bool, Any]] = []
        self._first_at = 0.0
        self._rebuild = False
        self._retired: list[str] = []  # teardown lines of a layout replaced by reload()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._user = f"{self._jailname}/{name}"
        self._started = False

    def _configure(self, opts: dict[str, str]) -> None:
        self._layout = parse_layout(self._jailname, opts)
        self._delay = _number(opts, "batchdelay", 0.05, 0.0, 1.0)
        self._timeout = _number(opts, "timeout", 120.0, 1.0, 3600.0)
        self._nft_cmd = str(opts.get("nft", "nft")).strip() or "nft"

    # ------------------------------------------------------------ fail2ban API
    def start(self) -> None:
        """Create this jail's chain and sets (the first jail of a table replaces it whole:
        a crashed fail2ban's leftovers go), then start the batch worker."""
        shared = _shared()
        layout = self._layout
        with shared.lock:
            users = shared.users.setdefault(layout.table, set())
            wipe = not users
            users.add(self._user)
            self._started = True
            lines = (
                [f"add table inet {layout.table}", f"delete table inet {layout.table}"]
                if wipe
                else layout.teardown()
            )
            try:
                self._run_nft([*lines, *layout.create()])
            except NftError:
                with self._cond:
                    self._rebuild = True  # the worker keeps trying
                raise
            finally:
                self._start_worker()

    def stop(self) -> None:
        """Stop the worker and delete this jail's objects (the table with its last user)."""
        if not self._started:
            return  # fail2ban stops actions it never started (e.g. dropped by a reload)
        self._started = False
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(self._timeout + 5)
        shared = _shared()
        layout = self._layout
        with shared.lock:
            users = shared.users.get(layout.table, set())
            users.discard(self._user)
            if users:
                lines = layout.teardown()
            else:
                shared.users.pop(layout.table, None)
                lines = [f"add table inet {layout.table}", f"delete table inet {layout.table}"]
            self._run_nft([*self._retired, *lines])

    def ban(self, aInfo: Any) -> None:  # noqa: N803 (fail2ban's name)
        self._queue("+", aInfo)

    def unban(self, aInfo: Any) -> None:  # noqa: N803
        self._queue("-", aInfo)

    def flush(self) -> bool:
        """Unban everything in one transaction; True tells fail2ban not to unban one by one."""
        with self._cond:
            self._pending.append(_FLUSH)
            self._wake()
        return True

    def reload(self, **opts: str) -> None:
        """``fail2ban-client reload``: keep the bans; rebuild if the layout changed."""
        new = parse_layout(self._jailname, opts)
        shared = _shared()
        with shared.lock, self._cond:
            old = self._layout
            self._configure(opts)
            if new == old:
                return
            users = shared.users.get(old.table, set())
            users.discard(self._user)
            if users or new.table == old.table:
                self._retired += old.teardown()
            else:
                shared.users.pop(old.table, None)
                self._retired += [f"add table inet {old.table}", f"delete table inet {old.table}"]
            shared.users.setdefault(new.table, set()).add(self._user)
            self._rebuild = True
            self._cond.notify_all()

    def clearAllParams(self) -> None:  # noqa: N802 (fail2ban's name)
        """Called by fail2ban before reload(), which gets every option again: nothing to do."""

    # --------------------------------------------------------------- internals
    def _queue(self, op: str, info: Any) -> None:
        text = str(info["ip"])
        try:
            version, is_net, key = parse_entry(text)
        except ValueError as exc:
            self._logSys.warning(
                "[%s] %s: not banning %r in nftables: %s", self._jailname, self._name, text, exc
            )
            return
        with self._cond:
            self._pending.append((op, version, is_net, key))
            self._wake()

    def _wake(self) -> None:
        """Called with the condition held after queueing."""
        if len(self._pending) == 1:
            self._first_at = time.monotonic()
            self._cond.notify_all()

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._work, name=f"f2b/nftset.{self._jailname}", daemon=True
            )
            self._worker.start()

    def _run_nft(self, lines: list[str]) -> None:
        """Run one transaction; the shared lock keeps it the only nft of this process."""
        script = "\n".join(lines) + "\n"
        with _shared().lock:
            try:
                proc = subprocess.run(
                    [self._nft_cmd, "-f", "-"],
                    input=script,
                    capture_output=True,
                    text=True,
                    timeout=self._timeout,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise NftError(f"{self._nft_cmd}: {exc}") from exc
        if proc.returncode != 0:
            message = " | ".join(proc.stderr.strip().splitlines()[:6])
            raise NftError(f"nft exited with {proc.returncode}: {message}")

    def _work(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not (self._stopping or self._pending or self._rebuild):
                    self._cond.wait()
                while self._pending and not self._stopping:
                    left = self._first_at + self._delay - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._stopping:
                    return
                ops, self._pending = self._pending, []
                rebuild, retired = self._rebuild, self._retired
                self._rebuild, self._retired = False, []
                layout = self._layout
            lines, nets = self._plan(ops, layout, rebuild, retired)
            if not lines:
                continue
            started = time.monotonic()
            try:
                self._run_nft(lines)
            except NftError as exc:
                failures += 1
                wait = min(0.5 * 2 ** (failures - 1), _BACKOFF_MAX)
                self._logSys.error(
                    "[%s] %s: nftables batch failed (attempt %d), rebuilding in %.1f s: %s",
                    self._jailname,
                    self._name,
                    failures,
                    wait,
                    exc,
                )
                with self._cond:
                    self._rebuild = True
                    self._retired = retired + self._retired
                    if not self._stopping:
                        self._cond.wait(wait)
                continue
            if failures:
                self._logSys.notice(
                    "[%s] %s: nftables sets rebuilt after %d failed attempt(s)",
                    self._jailname,
                    self._name,
                    failures,
                )
            failures = 0
            for family, applied in nets.items():
                self._families[family].applied_nets = applied
            self._logSys.debug(
                "[%s] %s: %d change(s) applied in %.3f s",
                self._jailname,
                self._name,
                len(ops),
                time.monotonic() - started,
            )

    def _plan(
        self,
        ops: list[tuple[str, int, bool, Any]],
        layout: Layout,
        rebuild: bool,
        retired: list[str],
    ) -> tuple[list[str], dict[int, set[tuple[int, int]]]]:
        """Apply `ops` to memory; return the transaction and the network sets it leaves.

        A batch with a flush rewrites every set; after a failure (``rebuild``) the
        chain and sets are recreated too, from memory.
        """
        full = rebuild
        for op, version, is_net, key in ops:
            if op == "*":
                full = True
                for family in self._families.values():
                    family.clear()
            else:
                self._families[version].change(op == "+", is_net, key)
        t = layout.table
        lines: list[str] = [*retired, *layout.teardown(), *layout.create()] if rebuild else []
        nets: dict[int, set[tuple[int, int]]] = {}
        for version, family in self._families.items():
            addr_set, net_set = (
                (layout.addr4, layout.net4) if version == 4 else (layout.addr6, layout.net6)
            )
            if full:
                if not rebuild:
                    lines += [f"flush set inet {t} {addr_set}", f"flush set inet {t} {net_set}"]
                lines += _elements("add", t, addr_set, sorted(family.addrs))
                outer = outermost(family.nets, family.bits)
                lines += _elements("add", t, net_set, [family.net_text(n) for n in sorted(outer)])
                nets[version] = outer
            else:
                was = family.was
                lines += _elements(
                    "delete",
                    t,
                    addr_set,
                    [a for a, b in was.items() if b and a not in family.addrs],
                )
                lines += _elements(
                    "add", t, addr_set, [a for a, b in was.items() if not b and a in family.addrs]
                )
                if family.nets_touched:
                    outer = outermost(family.nets, family.bits)
                    applied = family.applied_nets
                    gone = applied - outer
                    if gone and len(gone) * len(applied) >= NET_REWRITE_COST:
                        lines.append(f"flush set inet {t} {net_set}")
                        new = outer
                    else:
                        lines += _elements(
                            "delete", t, net_set, [family.net_text(n) for n in sorted(gone)]
                        )
                        new = outer - applied
                    lines += _elements("add", t, net_set, [family.net_text(n) for n in sorted(new)])
                    nets[version] = outer
            family.was = {}
            family.nets_touched = False
        return lines, nets


Action = NftSetAction
