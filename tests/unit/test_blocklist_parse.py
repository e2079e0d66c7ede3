"""Blocklist parser: formats, normalisation, chunking, hashing, limits."""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from bangui_daemon.blocklist.parse import (
    MAX_LINE_CHARS,
    BlocklistParser,
    ParseResult,
    TooManyEntries,
    entry_key,
    key_to_text,
    parse_blocklist,
)
from bangui_daemon.errors import InvalidArgument


def normalise_entry(text: str) -> str | None:
    """An entry's stored form, as the parser keys it (None: not an entry)."""
    key = entry_key(text.strip(" \t\r\n\v\f"))
    return None if key is None else key_to_text(key)


DATA = Path(__file__).resolve().parent.parent / "data" / "blocklists"

# Written by reading mixed.txt line by line, not by running the parser.
MIXED_EXPECTED = [
    "1.10.16.0/20",
    "2.56.0.0/14",
    "2.57.122.0/24",
    "5.42.92.0/24",
    "11.0.0.1",
    "11.0.0.2",
    "11.0.0.3",
    "11.0.0.4",
    "11.0.0.5",
    "11.0.0.6",
    "11.0.0.7",
    "31.13.64.0/18",
    "45.33.12.7",
    "45.33.12.8",
    "91.240.118.172",
    "185.220.101.4",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "2001:67c:28a4::1",
    "2001:db8::/32",
    "2001:db8:1:2::/64",
    "2a01:4f8::1",
    "2a01:4f8:c0c:1::/64",
    "2a06:e881:1::/48",
]
MIXED_LINES = 56
# 2 JSON records without a usable cidr, 9 garbage lines, 3 lines of the PNG blob.
MIXED_INVALID = 14

SAME_NETWORKS = {
    "1.10.16.0/20",
    "2.57.122.0/24",
    "5.42.92.0/24",
    "31.13.64.0/18",
    "2a06:e881:1::/48",
    "2a01:4f8:c0c:1::/64",
}


def _read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _parse(data: bytes, **kwargs: int) -> ParseResult:
    return parse_blocklist([data], **kwargs)


def test_corpus_file_still_has_its_hazards() -> None:
    data = _read("mixed.txt")
    assert data.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in data
    assert b"\x00" in data
    assert b"\n\n" in data or b"\r\n\r\n" in data


def test_mixed_corpus_matches_hand_written_expectation() -> None:
    result = _parse(_read("mixed.txt"), min_count=2)
    assert result.entries == MIXED_EXPECTED
    assert result.invalid == MIXED_INVALID
    assert result.below_min_count == 1  # 193.32.162.5<TAB>1
    assert result.lines == MIXED_LINES
    assert len(result.invalid_sample) == 5
    assert result.invalid_sample[:2] == ['{"sblid":"SBL000003"}', '{"cidr":"not-a-network"}']


def test_default_min_count_keeps_every_ipsum_entry() -> None:
    result = _parse(_read("mixed.txt"))
    assert result.below_min_count == 0
    assert set(result.entries) == {*MIXED_EXPECTED, "193.32.162.5"}


def test_invalid_samples_are_short_and_printable() -> None:
    blob = b"\x00\x1b[31m" + bytes(range(11, 256)) * 20 + b"\n" + "\u00e9\u00e8\n".encode()
    result = _parse(blob)
    assert result.invalid == 2
    for sample in result.invalid_sample:
        assert sample.isprintable()
        assert sample.isascii()
        assert len(sample) <= 4 * 40 + 3
    assert result.invalid_sample[0].startswith("\\x00\\x1b[31m")
    assert result.invalid_sample[0].endswith("...")
    assert result.invalid_sample[1] == "\\xc3\\xa9\\xc3\\xa8"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_chunk_boundaries_do_not_matter(size: int) -> None:
    data = _read("mixed.txt")
    whole = _parse(data, min_count=2)
    assert parse_blocklist(_chunks(data, size), min_count=2) == whole


def test_random_chunking_of_every_corpus_file() -> None:
    rng = random.Random(7)
    for path in sorted(DATA.iterdir()):
        data = path.read_bytes()
        whole = _parse(data)
        for _ in range(20):
            cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data), 12)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            assert parse_blocklist(pieces) == whole, path.name


def test_parser_accepts_bytearray_and_memoryview() -> None:
    data = b"11.1.1.1\n11.1.1.2\n"
    assert parse_blocklist([bytearray(data[:5]), memoryview(data)[5:]]).entries == [
        "11.1.1.1",
        "11.1.1.2",
    ]


@pytest.mark.parametrize("name", ["drop.txt", "drop.json", "sample.netset"])
def test_formats_of_one_list_give_the_same_entries(name: str) -> None:
    result = _parse(_read(name))
    assert set(result.entries) == SAME_NETWORKS
    assert result.invalid == 0


def test_hash_is_stable_across_format_order_comments_and_duplicates() -> None:
    hashes = {
        _parse(_read(name)).content_hash for name in ("drop.txt", "drop.json", "sample.netset")
    }
    plain = "\n".join(sorted(SAME_NETWORKS, reverse=True)).encode()
    hashes.add(_parse(b"# reordered\n" + plain + b"\n" + plain).content_hash)
    assert len(hashes) == 1


def test_hash_changes_when_an_entry_changes() -> None:
    one = _parse(b"11.1.1.1\n11.1.1.2\n").content_hash
    other = _parse(b"11.1.1.1\n11.1.1.3\n").content_hash
    assert one != other


def test_hash_is_sha256_of_the_normalised_entries() -> None:
    result = _parse(b"11.1.1.2\n11.1.1.1/32\n2a01:4f8::1/128\n")
    expected = hashlib.sha256(b"11.1.1.1\n11.1.1.2\n2a01:4f8::1").hexdigest()
    assert result.content_hash == expected


def test_empty_input() -> None:
    result = parse_blocklist([])
    assert result.entries == []
    assert result.lines == 0
    assert result.content_hash == hashlib.sha256(b"").hexdigest()


def test_ipsum_min_count() -> None:
    result = _parse(_read("ipsum.txt"), min_count=3)
    assert result.entries == ["45.148.10.81", "91.240.118.172", "185.220.101.4"]
    assert result.below_min_count == 3
    assert result.invalid == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4/32", "1.2.3.4"),
        ("1.2.3.4/24", "1.2.3.0/24"),
        ("1.2.3.4/0", "0.0.0.0/0"),
        ("1.2.3.4/255.255.0.0", "1.2.0.0/16"),
        ("1.2.3.4/08", "1.0.0.0/8"),
        ("2A01:4F8::0001", "2a01:4f8::1"),
        ("2a01:4f8::1/128", "2a01:4f8::1"),
        ("2a01:4f8::1/32", "2a01:4f8::/32"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::ffff:1.2.3.4/120", "1.2.3.0/24"),
        ("::ffff:1.2.3.4/128", "1.2.3.4"),
        (" 1.2.3.4\r\n", "1.2.3.4"),
        ("01.2.3.4", None),
        ("1.2.3.256", None),
        ("1.2.3.4/33", None),
        ("fe80::1%eth0", None),
        ("\u0661.2.3.4", None),  # ARABIC-INDIC DIGIT ONE
        ("example.com", None),
        ("", None),
    ],
)
def test_normalise_entry(text: str, expected: str | None) -> None:
    assert normalise_entry(text) == expected


def test_fast_path_agrees_with_ipaddress() -> None:
    rng = random.Random(3)
    for _ in range(5000):
        octets = ".".join(str(rng.randrange(256)) for _ in range(4))
        prefix = rng.choice([None, rng.randrange(33)])
        text = octets if prefix is None else f"{octets}/{prefix}"
        network = ipaddress.ip_network(text, strict=False)
        reference = str(network.network_address if network.prefixlen == 32 else network)
        assert normalise_entry(text) == reference


def test_too_many_entries_counts_distinct_entries() -> None:
    assert len(_parse(b"11.1.1.1\n11.1.1.1\n11.1.1.2\n", max_entries=2).entries) == 2
    with pytest.raises(TooManyEntries) as caught:
        _parse(b"11.1.1.1\n11.1.1.2\n11.1.1.3\n", max_entries=2)
    assert isinstance(caught.value, InvalidArgument)
    assert isinstance(caught.value, ValueError)
    assert caught.value.limit == 2
    assert "11.1.1" not in str(caught.value)


def test_too_many_entries_stops_reading_early() -> None:
    consumed = 0

    def endless() -> Iterator[bytes]:
        nonlocal consumed
        for n in range(1_000_000):
            consumed += 1
            yield f"11.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}\n".encode()

    with pytest.raises(TooManyEntries):
        parse_blocklist(endless(), max_entries=10)
    assert consumed == 11


def test_too_many_entries_within_one_big_chunk() -> None:
    data = "".join(f"11.0.{n >> 8}.{n & 255}\n" for n in range(20_000)).encode()
    with pytest.raises(TooManyEntries):
        _parse(data, max_entries=5_000)


def test_overlong_line_is_one_invalid_line_in_any_chunking() -> None:
    data = b"11.1.1.1\n" + b"A" * (MAX_LINE_CHARS * 3) + b"\n11.1.1.2\n"
    for result in (
        _parse(data),
        parse_blocklist(_chunks(data, 1)),
        parse_blocklist(_chunks(data, 5000)),
    ):
        assert result.entries == ["11.1.1.1", "11.1.1.2"]
        assert result.invalid == 1
        assert result.lines == 3
        assert result.invalid_sample == ["A" * 40 + "..."]


def test_bom_only_counts_at_the_start() -> None:
    result = _parse(b"\xef\xbb\xbf11.1.1.1\n\xef\xbb\xbf11.1.1.2\n")
    assert result.entries == ["11.1.1.1"]
    assert result.invalid == 1


def test_random_garbage_never_crashes() -> None:
    rng = random.Random(11)
    for _ in range(300):
        blob = rng.randbytes(rng.randrange(1, 400))
        result = parse_blocklist(_chunks(blob, rng.randrange(1, 50)))
        assert result.invalid <= result.lines
        assert len(result.invalid_sample) <= 5


def test_json_edge_cases() -> None:
    data = (
        b'{"cidr": 5}\n'
        b"[1, 2]\n"
        b"{not json}\n"
        b"{"
        + b'"a":[' * 1000
        + b"\n"
        + b'{"cidr": "11.2.0.0/16", "sblid": "x"}\n'
        + b'{"type": "metadata", "records": 1}\n'
    )
    result = _parse(data)
    assert result.entries == ["11.2.0.0/16"]
    assert result.invalid == 4


def test_parser_object_is_single_use() -> None:
    parser = BlocklistParser()
    parser.feed(b"11.1.1.1")
    assert parser.finish().entries == ["11.1.1.1"]
    with pytest.raises(RuntimeError):
        parser.feed(b"x")
    with pytest.raises(RuntimeError):
        parser.finish()


def test_bad_limits_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        BlocklistParser(min_count=-1)
    with pytest.raises(InvalidArgument):
        BlocklistParser(max_entries=-1)
