"""Serving PEP 3333 WSGI applications as ASGI 3 applications (``--interface wsgi``).

This package owns :class:`WSGIAdapter`, the bridge between the event loop and a blocking
WSGI app. It imports nothing else of asgictl. Its modules:

- ``adapter``: :class:`WSGIAdapter` itself, the ASGI app: the request's way to a thread
  (or inline), the pre-read body, the pool of threads and the lifespan;
- ``environ``: the WSGI ``environ`` built from an ASGI ``http`` scope, and
  ``wsgi.input`` (:class:`WSGIInput`);
- ``response``: ``start_response``/``write()``, ``wsgi.file_wrapper``
  (:class:`FileWrapper`) and the response iterable's messages on their way from the
  app's thread to the loop;
- ``bridge``: the ASGI and WSGI types, and the thread's way to the loop
  (:class:`~asgictl.worker.wsgi.bridge.LoopBridge`) for a request body read as it comes.

Where the app runs: in the adapter's own pool of ``threads`` threads (the default), or
with ``inline`` on the event loop's thread for requests whose body is all here.

The hand-off between the loop and a thread is the cost to keep small, so each request
crosses it once each way at most:

- a request body of up to ``PREREAD`` bytes (with a Content-Length) is read on the loop
  before the app runs, and ``wsgi.input`` is a plain in-memory file; a larger or chunked
  body streams: the thread pulls ``http.request`` messages only when the app reads more
  than is buffered;
- requests wait for a thread in a bounded queue (``queue_size``; one more gets 503);
- the thread never waits for the loop to write: it appends the response's messages to
  the request's outbox and wakes the loop (one wake-up serves every response finished
  meanwhile); it waits only when more than ``AHEAD`` bytes are not written yet
  (backpressure), or for a file to be sent before it closes it;
- a response whose Content-Length is reached is complete at once, so the loop writes head
  and body in one write; the iterable's ``close()`` follows in the thread.
"""

from asgictl.worker.wsgi.adapter import WSGIAdapter
from asgictl.worker.wsgi.environ import WSGIInput, build_environ
from asgictl.worker.wsgi.response import FileWrapper

__all__ = ["FileWrapper", "WSGIAdapter", "WSGIInput", "build_environ"]
