"""HPACK (RFC 7541) blocks remembered while the dynamic table stays the same.

Most header blocks of a busy connection repeat: a client sends the same request fields
again and again, the server answers with the same response fields, and once the fields
are in the dynamic tables both ends code them as table indexes. hpack's encoder and
decoder redo the whole block every time (per field: a table search or lookup, integer
coding, logging). :class:`CachingEncoder` and :class:`CachingDecoder` are hpack's, with
a small memory of the blocks that left the table untouched:

- coding a block depends only on the fields (or bytes) and the table's state, and a
  block that adds no entry and changes no size leaves that state as it found it, so
  the same input gives the same output for as long as nothing else changes the table;
- every entry added and every size set is counted (:class:`CountingTable`): when the
  count moves, the memory is forgotten;
- a block that adds entries (a literal with incremental indexing) or carries a table
  size update is never remembered: it is coded by hpack every time, as before.

The memory is bounded per connection (``MAX_BLOCKS`` blocks of at most
``MAX_BLOCK_SIZE`` bytes and ``MAX_FIELDS`` fields), and a remembered decoded block
passed the header list size limit that is still in force (the memory is forgotten when
the limit changes).
"""

from __future__ import annotations

from typing import Any

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

#: Blocks remembered per encoder or decoder (forgotten all at once past this).
MAX_BLOCKS = 8
#: Larger encoded blocks are not remembered, nor blocks of more fields, nor (encoder)
#: fields larger in all than MAX_FIELDS_SIZE: what a connection holds stays small.
MAX_BLOCK_SIZE = 1024
MAX_FIELDS = 64
MAX_FIELDS_SIZE = 8192


class CountingTable(HeaderTable):
    """hpack's header table, counting what may change its indexes (``changes``): the
    entries added, the sizes set."""

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, value)  # type: ignore[attr-defined]


class CachingEncoder(Encoder):
    """hpack's Encoder; a list of ``(name, value)`` byte pairs already coded with only
    table references and literals left out of the table gets the same bytes again.

    The pairs are plain tuples: hpack's ``NeverIndexedHeaderTuple`` compares equal to
    the plain tuple of the same field but is coded differently, so lists holding one
    must not be given (h2 makes them only when normalizing outbound headers, which the
    engine turns off)."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = CountingTable()
        self.blocks: dict[tuple[Any, ...], bytes] = {}
        self.changes = 0

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if table.resized or not huffman or type(headers) is not list:
            return super().encode(headers, huffman)  # a size update goes first: not kept
        blocks = self.blocks
        if table.changes != self.changes:
            blocks.clear()
            self.changes = table.changes
        key = tuple(headers)
        block = blocks.get(key)
        if block is None:
            block = super().encode(headers, huffman)
            if (
                table.changes == self.changes
                and len(block) <= MAX_BLOCK_SIZE
                and len(key) <= MAX_FIELDS
                and sum([len(name) + len(value) for name, value in key]) <= MAX_FIELDS_SIZE
            ):
                if len(blocks) >= MAX_BLOCKS:
                    blocks.clear()
                blocks[key] = block
        return block


class CachingDecoder(Decoder):
    """hpack's Decoder; a block already decoded without touching the table gives the
    same fields again (a new list each time: callers may change it)."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        self.header_table = CountingTable()
        self.blocks: dict[tuple[bytes, bool], list[Any]] = {}
        self.changes = 0
        self.limit = max_header_list_size

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table = self.header_table
        blocks = self.blocks
        if table.changes != self.changes or self.limit != self.max_header_list_size:
            blocks.clear()
            self.changes = table.changes
            self.limit = self.max_header_list_size
        if type(data) is not bytes or len(data) > MAX_BLOCK_SIZE:
            return super().decode(data, raw)
        key = (data, raw)
        fields = blocks.get(key)
        if fields is None:
            fields = super().decode(data, raw)
            if table.changes != self.changes or len(fields) > MAX_FIELDS:
                return fields
            if len(blocks) >= MAX_BLOCKS:
                blocks.clear()
            blocks[key] = fields
        return list(fields)
