"""The D-Bus edge against hostile or careless callers (issue 9, findings 2, 3, 6, 7).

Integers out of any meaningful range, megabyte strings, URLs with credentials and
URLs that can never work, sent with a dbus-fast client to the real daemon.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from dbus_fast import Variant

from tests.harness.daemon import DaemonProcess
from tests.integration.blocklist_server import ListServer
from tests.integration.dbus_calls import BLOCKLISTS, CORE, GEO, HISTORY
from tests.integration.fast_client import FastClient, Reply

ERR = "org.bangui.Daemon1.Error."
INVALID = ERR + "InvalidArgument"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
U32_MAX = 2**32 - 1
MIB = 1 << 20


@pytest.fixture
def daemon(module_daemon: DaemonProcess) -> DaemonProcess:
    """One daemon for the module: each test adds sources under names of its own."""
    return module_daemon


@pytest.fixture
def client(fast_client: FastClient) -> FastClient:
    return fast_client


def no_internal_errors(daemon: DaemonProcess) -> None:
    failed = [r for r in daemon.log_records() if r.get("event") == "dbus_method_failed"]
    assert not failed, failed


def sources(client: FastClient) -> list[dict[str, Any]]:
    reply = client.call(BLOCKLISTS, "ListSources")
    assert reply.error is None, reply
    return [{k: v.value for k, v in s.items()} for s in reply.body[0]]


# ------------------------------------------------------------- 2: integer ranges
@pytest.mark.parametrize(
    ("iface", "member", "signature", "args", "named"),
    [
        (HISTORY, "GetTimeline", "xx", (0, INT64_MAX), "bucket_seconds"),
        (HISTORY, "GetTimeline", "xx", (1_700_000_000, INT64_MAX), "bucket_seconds"),
        (HISTORY, "GetTimeline", "xx", (INT64_MAX, 3600), "since"),
        (HISTORY, "GetTimeline", "xx", (INT64_MIN, 3600), "since"),
        (HISTORY, "GetTimeline", "xx", (0, INT64_MIN), "bucket_seconds"),
        (HISTORY, "GetTop", "sxu", ("ip", INT64_MAX, 10), "since"),
        (HISTORY, "GetTop", "sxu", ("jail", 0, U32_MAX), "limit"),
        (HISTORY, "GetHistory", "a{sv}uu", ({}, U32_MAX, U32_MAX), "page_size"),
        (HISTORY, "GetHistory", "a{sv}uu", ({}, 0, 10), "page"),
        (HISTORY, "GetHistory", "a{sv}uu", ({"since": Variant("x", INT64_MAX)}, 1, 10), "since"),
        (HISTORY, "GetHistory", "a{sv}uu", ({"until": Variant("x", INT64_MIN)}, 1, 10), "until"),
        (BLOCKLISTS, "ListImportRuns", "uuu", (0, U32_MAX, U32_MAX), "page_size"),
        (BLOCKLISTS, "ListImportRuns", "uuu", (0, 0, 10), "page"),
        (CORE, "ListBans", "suu", ("", 0, U32_MAX), "limit"),
        (CORE, "ListBans", "suu", ("", 0, 0), "limit"),
        (HISTORY, "GetHistory", "a{sv}uu", ({}, 1, 0), "page_size"),
        (HISTORY, "GetHistory", "a{sv}uu", ({}, 1, 1001), "page_size"),
        (HISTORY, "GetTimeline", "xx", (0, 0), "bucket_seconds"),
        (HISTORY, "GetTimeline", "xx", (-1, 3600), "since"),
        (HISTORY, "GetTop", "sxu", ("ip", 0, 0), "limit"),
        (HISTORY, "GetTop", "sxu", ("ip", -1, 10), "since"),
    ],
)
def test_out_of_range_integers_are_invalid_arguments_naming_the_argument(
    daemon: DaemonProcess,
    client: FastClient,
    iface: str,
    member: str,
    signature: str,
    args: tuple[Any, ...],
    named: str,
) -> None:
    reply = client.call(iface, member, signature, *args)
    assert reply.error == INVALID, reply
    assert named in reply.message
    no_internal_errors(daemon)


def test_extreme_but_meaningful_integers_still_answer(
    daemon: DaemonProcess, client: FastClient
) -> None:
    now = int(time.time())
    reply = client.call(HISTORY, "GetTimeline", "xx", now - 3600, 86400 * 365 * 100)
    assert reply.error is None, reply
    assert [count for _start, count in reply.body[0]] == [0]
    reply = client.call(CORE, "ListBans", "suu", "", U32_MAX, 1000)
    assert reply.error is None, reply
    assert reply.body[0] == []
    reply = client.call(BLOCKLISTS, "ListImportRuns", "uuu", U32_MAX, U32_MAX, 1000)
    assert reply.error == ERR + "NotFound", reply


# ---------------------------------------------------------- 3: bounded messages
@pytest.mark.parametrize(
    ("iface", "member", "signature", "args", "error"),
    [
        (CORE, "RunTask", "s", ("A" * MIB,), ERR + "NotFound"),
        (GEO, "LookupIp", "s", ("B" * MIB,), INVALID),
        (GEO, "LookupIps", "as", (["::1", "C" * MIB],), INVALID),
        (HISTORY, "GetIpHistory", "s", ("D" * MIB,), INVALID),
        (HISTORY, "GetHistory", "a{sv}uu", ({"ip": Variant("s", "E" * MIB)}, 1, 10), INVALID),
        (HISTORY, "GetHistory", "a{sv}uu", ({"F" * MIB: Variant("s", "")}, 1, 10), INVALID),
        (CORE, "BanIp", "ss", ("G" * MIB, "45.1.2.3"), INVALID),
        (CORE, "UnbanIp", "ss", ("", "H" * MIB), INVALID),
    ],
)
def test_errors_quote_only_a_short_prefix_of_huge_arguments(
    daemon: DaemonProcess,
    client: FastClient,
    iface: str,
    member: str,
    signature: str,
    args: tuple[Any, ...],
    error: str,
) -> None:
    reply = client.call(iface, member, signature, *args)
    assert reply.error == error, reply.message[:300]
    assert len(reply.message.encode()) < 300, reply.message[:300]
    assert f"({MIB} chars)" in reply.message


def test_errors_escape_control_characters(daemon: DaemonProcess, client: FastClient) -> None:
    reply: Reply = client.call(CORE, "RunTask", "s", "\x1b[2J\r\nfake log line\x7f" * 20)
    assert reply.error == ERR + "NotFound"
    assert "\x1b" not in reply.message
    assert "\n" not in reply.message
    assert "\\x1b[2J\\r\\n" in reply.message
    assert len(reply.message.encode()) < 300


def test_errors_quote_non_ascii_as_ascii_escapes(daemon: DaemonProcess, client: FastClient) -> None:
    """ASCII only: bookworm's dbus-fast 1.84 would send a malformed reply otherwise."""
    reply = client.call(GEO, "LookupIp", "s", "été\U000e0001")
    assert reply.error == INVALID
    assert reply.message == "'\\xe9t\\xe9\\U000e0001' is not an IP address."
    assert client.ping()


# ------------------------------------------------------------ 6: no credentials
def test_credentials_in_source_urls_are_never_shown_but_still_used(
    daemon: DaemonProcess, client: FastClient, lists: ListServer
) -> None:
    lists.lists["c"] = b"45.11.0.1\n"
    secret = "s3cr%2Ft-pw"
    url = lists.url("/list/c").replace("http://", f"http://alice:{secret}@")
    reply = client.call(BLOCKLISTS, "AddSource", "ssb", "with-creds", url, False)
    assert reply.error is None, reply
    source_id = reply.body[0]
    missing = lists.url("/list/gone").replace("http://", f"http://bob:{secret}@")
    reply = client.call(BLOCKLISTS, "AddSource", "ssb", "creds-404", missing, False)
    assert reply.error is None, reply
    broken = reply.body[0]

    shown = {s["name"]: s["url"] for s in sources(client)}
    assert shown["with-creds"] == lists.url("/list/c").replace("http://", "http://***@")
    assert shown["creds-404"] == missing.replace(f"bob:{secret}@", "***@")

    copied = client.call(BLOCKLISTS, "AddSource", "ssb", "copied", shown["with-creds"], False)
    assert copied.error == INVALID  # the redacted form is not a URL to store
    assert "***" in copied.message

    reply = client.call(BLOCKLISTS, "ImportSource", "u", source_id)
    assert reply.error is None, reply
    assert reply.body[0]["status"].value == "completed"
    (headers,) = lists.hits("/list/c")
    sent = base64.b64decode(headers["Authorization"].split()[1]).decode()
    assert sent == "alice:s3cr/t-pw"  # the stored URL still carries them to the server

    reply = client.call(BLOCKLISTS, "ImportSource", "u", broken)
    assert reply.body[0]["status"].value == "failed"
    runs = client.call(BLOCKLISTS, "ListImportRuns", "uuu", 0, 1, 100)
    everything = [str(reply.body), str(runs.body), str(sources(client)), daemon.output]
    for text in everything:
        for secret_part in (secret, "s3cr/t", "alice:", "bob:"):
            assert secret_part not in text


# -------------------------------------------------- 7: refuse what cannot work
def test_sources_that_can_never_be_fetched_are_refused_at_once(
    daemon: DaemonProcess, client: FastClient, lists: ListServer
) -> None:
    file_dir = daemon.work_dir / "lists"
    inside = f"file://{file_dir}/mine.txt"
    reply = client.call(BLOCKLISTS, "AddSource", "ssb", "local", inside, False)
    assert reply.error is None, reply
    source_id = reply.body[0]
    for url in (
        "file:///etc/shadow",
        f"file://{file_dir}/../escape.txt",
        f"file://{file_dir}",
        "ftp://127.0.0.1/list",
        "gopher://127.0.0.1/list",
        "file://otherhost/etc/hosts",
    ):
        reply = client.call(BLOCKLISTS, "AddSource", "ssb", "bad", url, False)
        assert reply.error == INVALID, (url, reply)
        change = {"url": Variant("s", url)}
        reply = client.call(BLOCKLISTS, "UpdateSource", "ua{sv}", source_id, change)
        assert reply.error == INVALID, (url, reply)
    assert ("local", inside) in [(s["name"], s["url"]) for s in sources(client)]
    assert "bad" not in [s["name"] for s in sources(client)]


def test_download_failures_have_a_named_error_and_the_same_reason_on_import(
    daemon: DaemonProcess, client: FastClient, lists: ListServer
) -> None:
    version = client.call("org.freedesktop.DBus.Properties", "Get", "ss", CORE, "InterfaceVersion")
    assert version.body[0].value == "1.3"  # 1.1 source options, 1.2 DownloadFailed, 1.3 preview
    url = lists.url("/list/missing")
    preview = client.call(BLOCKLISTS, "PreviewSource", "s", url)
    assert preview.error == ERR + "DownloadFailed", preview
    assert "404" in preview.message
    reply = client.call(BLOCKLISTS, "AddSource", "ssb", "missing", url, False)
    result = client.call(BLOCKLISTS, "ImportSource", "u", reply.body[0]).body[0]
    assert result["status"].value == "failed"
    assert result["error"].value == preview.message

    refused = client.call(BLOCKLISTS, "PreviewSource", "s", "http://127.0.0.1:1/list")
    assert refused.error == ERR + "DownloadFailed", refused
    not_allowed = client.call(BLOCKLISTS, "PreviewSource", "s", "file:///etc/shadow")
    assert not_allowed.error == INVALID, not_allowed
