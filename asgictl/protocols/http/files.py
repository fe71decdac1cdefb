"""File regions to the client (``http.response.pathsend``, ``http.response.zerocopysend``):
how their bytes leave, for every HTTP version.

- :func:`send_region` (HTTP/1.1): ``os.sendfile`` to the socket while the transport holds
  nothing unsent (plain TCP and Unix sockets); TLS, a transport with buffered bytes, or
  a file ``sendfile`` refuses fall back to :func:`copy_region`.
- :func:`copy_region` (the fallback, and every HTTP/2 stream): reads of the file handed
  to a ``write`` of the host's (the transport, or the stream's DATA within the peer's
  windows), with the host's flow control between reads.

Regions up to ``FILE_INLINE`` are read (or sent) on the event loop's thread. Larger ones
go a window at a time, on the loop while the window is in the page cache (a
non-blocking ``RWF_NOWAIT`` probe of its last byte says so), else through the default
executor, so that a disk read never stalls the loop.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

    from asgictl.protocols.http.framing import ResponseFraming

FILE_INLINE = 256 * 1024
FILE_WINDOW = 1024 * 1024
#: What one read of the copying path takes from a file.
FILE_PIECE = 256 * 1024

#: os.sendfile errors that mean "not for this file or socket", before any byte was sent.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK})
#: os.sendfile errors that mean the client has gone.
_GONE = frozenset({errno.EPIPE, errno.ECONNRESET})
_PROBE = bytearray(1)


class Sink(Protocol):
    """What :func:`copy_region` writes through: a CycleHost's flow control."""

    loop: asyncio.AbstractEventLoop
    write_paused: bool

    def is_closing(self) -> bool: ...

    async def drain(self) -> None: ...


async def send_region(conn: ResponseFraming, fd: int, offset: int, count: int) -> int:
    """Write ``count`` bytes of the open file ``fd`` from ``offset`` to ``conn``'s
    transport, after everything written before; returns the bytes sent (fewer only if
    the connection closed meanwhile or the file ended)."""
    transport = conn.transport
    sock = None if conn.state.is_ssl else transport.get_extra_info("socket")
    if sock is not None and transport.get_extra_info("sslcontext") is None:
        sent = await _sendfile(conn, sock.fileno(), fd, offset, count)
        if sent is not None:
            return sent
    return await copy_region(conn, fd, offset, count, transport.write)  # type: ignore[arg-type]


async def copy_region(sink: Sink, fd: int, offset: int, count: int, write: Callable[[bytes], object]) -> int:
    """Read the region and hand it to ``write`` piece by piece, waiting on the sink's
    flow control between pieces; returns the bytes written."""
    loop = sink.loop
    sent = 0
    while sent < count and not sink.is_closing():
        size = min(count - sent, FILE_PIECE)
        if count <= FILE_INLINE or _cached(fd, offset + sent, size):
            data = os.pread(fd, size, offset + sent)
        else:
            data = await loop.run_in_executor(None, os.pread, fd, size, offset + sent)
        if not data or sink.is_closing():
            break
        write(data)
        sent += len(data)
        if sink.write_paused:
            await sink.drain()
    return sent


async def _sendfile(conn: ResponseFraming, sock_fd: int, fd: int, offset: int, count: int) -> int | None:
    """os.sendfile to the socket; None when it cannot be used at all (nothing sent)."""
    transport = conn.transport
    loop = conn.loop
    # The transport may close the socket's fd while this waits, and the number be
    # reused by another connection: the executor's calls and the waits for room
    # use a duplicate, which keeps this socket open until it is closed here.
    own_fd = -1
    watched = False
    sent = 0
    try:
        while sent < count and not transport.is_closing():
            if transport.get_write_buffer_size():
                # Bytes queued in the transport must leave first; a sendfile now
                # would overtake them.
                if sent == 0:
                    return None
                return sent + await copy_region(conn, fd, offset + sent, count - sent, transport.write)  # type: ignore[arg-type]
            size = min(count - sent, FILE_WINDOW)
            try:
                if count <= FILE_INLINE or _cached(fd, offset + sent, size):
                    n = os.sendfile(sock_fd, fd, offset + sent, size)
                else:
                    if own_fd < 0:
                        own_fd = os.dup(sock_fd)
                    n = await loop.run_in_executor(None, os.sendfile, own_fd, fd, offset + sent, size)
            except BlockingIOError:
                n = -1
            except OSError as exc:
                if sent == 0 and exc.errno in _NO_SENDFILE:
                    return None  # e.g. a pipe or a /proc file: read it instead
                if exc.errno in _GONE:
                    transport.abort()  # the client went away
                    break
                raise
            if n == 0:
                break  # the file is shorter than announced
            if n > 0:
                sent += n
                if n == size:
                    continue  # the socket took the whole window: there may be room
            # The socket buffer is full: wait until it is writable (connection_lost
            # wakes the same waiter, through release_drain).
            if own_fd < 0:
                own_fd = os.dup(sock_fd)
            if not watched:
                loop.add_writer(own_fd, conn.release_drain)
                watched = True
            waiter = conn.drain_waiter = loop.create_future()
            await waiter
    finally:
        if watched:
            loop.remove_writer(own_fd)
        if own_fd >= 0:
            os.close(own_fd)
    return sent


def _cached(fd: int, offset: int, size: int) -> bool:
    """Whether the last byte of the file region is in the page cache: a read that may
    not wait for the disk (RWF_NOWAIT) tells, without blocking. Readahead makes the
    rest of a sequentially read window as likely to be there."""
    try:
        return os.preadv(fd, [_PROBE], offset + size - 1, os.RWF_NOWAIT) == 1
    except (OSError, AttributeError):  # not cached (EAGAIN), or no RWF_NOWAIT here
        return False
