"""Property-based fuzzing of every D-Bus method over the real bus (issue 9).

hypothesis draws arguments a hostile or careless caller could send (what D-Bus can
carry: no NUL, no lone surrogates): megabyte and control-character strings, the
extreme integers of each type, large arrays, unknown keys and wrong variant types in
``a{sv}``, URLs that cannot work. One daemon (with its own fail2ban sandbox) serves
the whole module through one dbus-fast connection as root, so admin methods run too;
bans land in that sandbox only, and every URL drawn is on loopback (port 1: refused)
or a file, so nothing leaves the machine.

Each answer must be a return or an error the contract names, with a short message;
after each method the daemon must still answer Peer.Ping, must not have logged an
internal error, and its RSS must stay bounded. Cost: ~200 examples per method
(fewer for the slow ones), about a minute in all.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from dbus_fast import Variant
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.harness.daemon import DaemonProcess
from tests.integration.dbus_calls import BLOCKLISTS, CORE, GEO, HISTORY
from tests.integration.fast_client import FastClient

ERR = "org.bangui.Daemon1.Error."
CONTRACT_ERRORS = frozenset(
    ERR + name
    for name in (
        "InvalidArgument",
        "NotFound",
        "Fail2banUnavailable",
        "Busy",
        "Refused",
        "DownloadFailed",
    )
)
PROPERTIES = "org.freedesktop.DBus.Properties"
# dbus-fast answers these itself; its messages quote the names asked for, unbounded
# (no amplification: the caller sent them), so only their names are checked.
PROPERTY_ERRORS = frozenset(
    "org.freedesktop.DBus.Error." + name
    for name in (
        "UnknownInterface",
        "UnknownProperty",
        "InvalidArgs",
        "PropertyReadOnly",
        "NotSupported",
    )
)
MAX_MESSAGE_BYTES = 300
MAX_RSS_KIB = 150 * 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
U32_MAX = 2**32 - 1
MIB = 1 << 20

# ------------------------------------------------------------------ strategies
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # D-Bus strings are UTF-8: none can be sent
CHARS = st.characters(blacklist_categories=SURROGATES, blacklist_characters="\x00")
odd_text = st.text(CHARS, max_size=80)
control_text = st.text(st.sampled_from([chr(c) for c in range(1, 32)] + ["\x7f", "\u2028"]))


@st.composite
def huge_text(draw: st.DrawFn) -> str:
    """Up to 1 MiB characters: a short random piece repeated."""
    piece = draw(st.text(CHARS, min_size=1, max_size=4))
    size = draw(st.sampled_from([300, 65_536, MIB]))
    return piece * (size // len(piece))


def text(*meaningful: str) -> st.SearchStrategy[str]:
    """Half meaningful values (they reach deeper), half odd, control or huge text."""
    hostile = st.one_of(odd_text, control_text, huge_text())
    return st.one_of(st.sampled_from(meaningful), hostile) if meaningful else hostile


u32 = st.one_of(
    st.sampled_from([0, 1, 2, 999, 1000, 1001, 2**31, U32_MAX]),
    st.integers(0, 1100),
    st.integers(0, U32_MAX),
)
now = int(time.time())
int64 = st.one_of(
    st.sampled_from(
        [INT64_MIN, -1, 0, 1, 3599, 3600, now - 86400, now, 253_402_300_800, INT64_MAX]
    ),
    st.integers(0, now + 86400),
    st.integers(INT64_MIN, INT64_MAX),
)
addresses = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["::1", "127.0.0.1", "0.0.0.0", "45.1.2.3", "::ffff:45.1.2.3", "fe80::1%eth0"]),
    st.builds(lambda ip, prefix: f"{ip}/{prefix}", st.ip_addresses(v=4), st.integers(-1, 40)),
)
ip_text = st.one_of(addresses, addresses, text())
JAILS = ("sshd", "blocklist-import", "", "sshd", "SSHD", " sshd", "sshd\n")
TASKS = ("history_sync", "ban_watch", "geo_resolve", "geo_cache_cleanup", "history_purge")


def variants(key: str, url: st.SearchStrategy[str]) -> st.SearchStrategy[Variant]:
    """A value for an a{sv} key: mostly the wrong type, sometimes the right one."""
    strings = url if key == "url" else ip_text if key == "ip" else text("sshd", "ban", "DE")
    return st.one_of(
        strings.map(lambda v: Variant("s", v)),
        int64.map(lambda v: Variant("x", v)),
        u32.map(lambda v: Variant("u", v)),
        st.integers(-(2**31), 2**31 - 1).map(lambda v: Variant("i", v)),
        st.integers(0, 255).map(lambda v: Variant("y", v)),
        st.booleans().map(lambda v: Variant("b", v)),
        st.floats().map(lambda v: Variant("d", v)),
        st.lists(odd_text, max_size=5).map(lambda v: Variant("as", v)),
        st.just(Variant("v", Variant("s", "nested"))),
        st.just(Variant("a{sv}", {"k": Variant("s", "v")})),
    )


def dictionaries(keys: tuple[str, ...], url: st.SearchStrategy[str]) -> Any:
    key = st.one_of(st.sampled_from(keys), text())
    return st.lists(key.flatmap(lambda k: st.tuples(st.just(k), variants(k, url))), max_size=4).map(
        dict
    )


def loopback_urls(file_dir: Path) -> st.SearchStrategy[str]:
    """URLs that are refused, fail on loopback port 1, or name a file: none leaves the host."""
    path = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=30)
    ports = st.sampled_from(["1", "0", "99999", "", "-1", "x", "1:2"])

    def remote(url: str) -> bool:
        try:
            parts = urllib.parse.urlsplit(url.strip())
            host = parts.hostname
        except ValueError:
            return False
        if parts.scheme.lower() not in ("http", "https") or not host:
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True  # a name: would need DNS

    return st.one_of(
        st.builds(lambda p, q: f"http://127.0.0.1:{p}/{q}", ports, path),
        st.builds(lambda p, q: f"https://[::1]:{p}/{q}", ports, path),
        st.builds(lambda u, q: f"http://{u}@127.0.0.1:1/{q}", odd_text, path),
        st.builds(lambda q: f"file://{file_dir}/{q}", odd_text),
        st.builds(lambda q: f"file://{q}", odd_text),
        st.sampled_from(["file:///etc/shadow", f"file://{file_dir}", f"file://{file_dir}/../x"]),
        st.builds(
            lambda s, q: f"{s}:{q}", st.sampled_from(["ftp", "gopher", "data", "FiLe", "x"]), path
        ),
        text().filter(lambda t: not remote(t)),
    )


# --------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    iface: str
    member: str
    signature: str
    args: Callable[[Path], st.SearchStrategy[tuple[Any, ...]]]
    examples: int = 200
    allowed: frozenset[str] = CONTRACT_ERRORS
    short_messages: bool = True

    @property
    def id(self) -> str:
        return self.member if self.iface != PROPERTIES else f"Properties.{self.member}"


def no_args(_: Path) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.just(())


def history_filter(d: Path) -> Any:
    keys = ("since", "until", "jail", "ip", "origin", "country_code", "action")
    return dictionaries(keys, loopback_urls(d))


METHODS = [
    Method(CORE, "GetStatus", "", no_args, examples=20),
    Method(CORE, "ListJails", "", no_args, examples=20),
    Method(CORE, "ListTasks", "", no_args, examples=20),
    Method(CORE, "ListBans", "suu", lambda _: st.tuples(text(*JAILS), u32, u32)),
    Method(CORE, "BanIp", "ss", lambda _: st.tuples(text(*JAILS), ip_text)),
    Method(CORE, "UnbanIp", "ss", lambda _: st.tuples(text(*JAILS), ip_text)),
    Method(CORE, "RunTask", "s", lambda _: st.tuples(text(*TASKS)), examples=100),
    Method(HISTORY, "GetHistory", "a{sv}uu", lambda d: st.tuples(history_filter(d), u32, u32)),
    Method(HISTORY, "GetIpHistory", "s", lambda _: st.tuples(ip_text)),
    Method(HISTORY, "GetTimeline", "xx", lambda _: st.tuples(int64, int64)),
    Method(
        HISTORY,
        "GetTop",
        "sxu",
        lambda _: st.tuples(text("jail", "country", "asn", "ip"), int64, u32),
    ),
    Method(BLOCKLISTS, "ListSources", "", no_args, examples=20),
    Method(
        BLOCKLISTS,
        "AddSource",
        "ssb",
        lambda d: st.tuples(
            text("list", "a b", "x" * 100, "x" * 101), loopback_urls(d), st.booleans()
        ),
    ),
    Method(
        BLOCKLISTS,
        "UpdateSource",
        "ua{sv}",
        lambda d: st.tuples(
            st.one_of(st.integers(1, 5), u32),
            dictionaries(("name", "url", "enabled"), loopback_urls(d)),
        ),
    ),
    Method(BLOCKLISTS, "RemoveSource", "u", lambda _: st.tuples(u32), examples=100),
    Method(BLOCKLISTS, "ImportSource", "u", lambda _: st.tuples(st.one_of(st.integers(1, 8), u32))),
    Method(BLOCKLISTS, "PreviewSource", "s", lambda d: st.tuples(loopback_urls(d))),
    Method(BLOCKLISTS, "ImportAll", "", no_args, examples=10),
    Method(BLOCKLISTS, "ListImportRuns", "uuu", lambda _: st.tuples(u32, u32, u32)),
    Method(GEO, "LookupIp", "s", lambda _: st.tuples(ip_text)),
    Method(
        GEO,
        "LookupIps",
        "as",
        lambda _: st.tuples(
            st.one_of(
                st.lists(ip_text, max_size=20),
                st.builds(lambda ip, n: [ip] * n, addresses, st.sampled_from([10_000, 10_001])),
            )
        ),
        examples=100,
    ),
    Method(
        PROPERTIES,
        "Get",
        "ss",
        lambda _: st.tuples(text(CORE, GEO, HISTORY), text("Version", "State", "CacheEntries")),
        examples=100,
        allowed=PROPERTY_ERRORS,
        short_messages=False,
    ),
    Method(
        PROPERTIES,
        "GetAll",
        "s",
        lambda _: st.tuples(text(CORE, GEO)),
        examples=50,
        allowed=PROPERTY_ERRORS,
        short_messages=False,
    ),
    Method(
        PROPERTIES,
        "Set",
        "ssv",
        lambda _: st.tuples(text(CORE), text("State", "Version"), st.just(Variant("s", "x"))),
        examples=50,
        allowed=PROPERTY_ERRORS,
        short_messages=False,
    ),
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def shown(args: tuple[Any, ...]) -> str:
    """The arguments of a failing call, each cut short (some are 1 MiB)."""
    return repr(tuple(repr(a)[:120] for a in args))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.id)
def test_fuzz_method(method: Method, module_daemon: DaemonProcess, fast_client: FastClient) -> None:
    file_dir = module_daemon.work_dir / "lists"
    logged_before = len(module_daemon.log_records())

    @settings(
        max_examples=method.examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(method.args(file_dir))
    def call(args: tuple[Any, ...]) -> None:
        reply = fast_client.call(method.iface, method.member, method.signature, *args)
        event(reply.error or "return")  # pytest --hypothesis-show-statistics
        if reply.error is not None:
            assert reply.error in method.allowed, (reply.error, reply.message[:300], shown(args))
        if reply.error is not None and method.short_messages:
            size = len(reply.message.encode())
            assert size < MAX_MESSAGE_BYTES, (size, reply.message[:300], shown(args))

    call()
    assert module_daemon.running, module_daemon.output_lines[-30:]
    assert fast_client.ping()
    new = module_daemon.log_records()[logged_before:]
    failed = [r for r in new if r.get("event") == "dbus_method_failed"]
    assert not failed, failed[:3]
    assert rss_kib(module_daemon.pid) < MAX_RSS_KIB
