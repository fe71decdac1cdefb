"""The HPACK coders that remember repeated blocks give exactly hpack's bytes and fields,
whatever happens to the dynamic table in between (entries added, evicted, resized)."""

from __future__ import annotations

import hpack
import pytest

from asgictl.protocols.http2.hpack_cache import MAX_FIELDS, MAX_FIELDS_SIZE, CachingDecoder, CachingEncoder

pytestmark = pytest.mark.unit


def _heads() -> list[list[tuple[bytes, bytes]]]:
    """Response heads that repeat, with new fields (which enter the table and evict older
    ones) and a field never indexed in between."""
    heads = []
    for n in range(200):
        head = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")]
        head.append((b"date", b"Mon, 30 Nov 2026 12:00:%02d GMT" % (n // 10)))
        if n % 7 == 0:
            head.append((b"x-trace", b"%d" % n + b"t" * 200))
        if n % 11 == 0:
            head.append((b"set-cookie", b"a=%d" % n))
        heads.append(head)
    return heads


def test_encoder_gives_hpacks_bytes_and_remembers_what_repeats() -> None:
    plain, caching = hpack.Encoder(), CachingEncoder()
    decoder = hpack.Decoder()
    for n, head in enumerate(_heads()):
        if n == 120:  # the peer's SETTINGS_HEADER_TABLE_SIZE changes: evictions, a size update
            plain.header_table_size = caching.header_table_size = 256
        block = caching.encode(list(head))
        assert block == plain.encode(list(head))
        assert decoder.decode(block, raw=True) == head
    assert caching.blocks  # the last heads repeated: remembered


def test_a_block_that_adds_to_the_table_is_not_remembered() -> None:
    encoder = CachingEncoder()
    encoder.encode([(b"x-new", b"1")])
    assert not encoder.blocks
    encoder.encode([(b"x-new", b"1")])  # now a table reference
    assert list(encoder.blocks) == [((b"x-new", b"1"),)]


def test_decoder_gives_hpacks_fields_for_every_block() -> None:
    encoder = hpack.Encoder()
    plain, caching = hpack.Decoder(), CachingDecoder(65536)
    for n, head in enumerate(_heads()):
        if n == 120:
            encoder.header_table_size = 256  # a size update in the next block
        block = encoder.encode(head)
        fields = caching.decode(block, raw=True)
        assert fields == plain.decode(block, raw=True) == head
        fields.append((b"x-changed-by-the-caller", b"1"))  # each call gets its own list
    assert caching.blocks


def test_decoder_applies_a_lowered_header_list_limit_to_remembered_blocks() -> None:
    encoder, decoder = hpack.Encoder(), CachingDecoder(65536)
    head = [(b"x-a", b"a" * 100)]
    decoder.decode(encoder.encode(head), raw=True)
    block = encoder.encode(head)  # a table reference now: remembered
    assert decoder.decode(block, raw=True) == head
    decoder.max_header_list_size = 50
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)


def test_what_is_remembered_stays_small() -> None:
    """Blocks of many fields are coded every time, and so are heads of large fields (a
    decoded block's values are the table's own: that size is held anyway)."""
    many = [(b"x-%d" % n, b"1") for n in range(MAX_FIELDS + 1)]
    large = [(b"x-large", b"v" * (MAX_FIELDS_SIZE // 3))] * 4  # one table entry, referenced
    for head in (many, large):
        encoder, decoder = CachingEncoder(), CachingDecoder(1 << 20)
        for _ in range(3):  # the first time adds to the tables, then references only
            decoder.decode(encoder.encode(list(head)), raw=True)
        assert encoder.changes == encoder.header_table.changes  # the tables stayed put
        assert not encoder.blocks
        assert bool(decoder.blocks) == (head is large)
