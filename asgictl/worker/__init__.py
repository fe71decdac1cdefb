"""One worker process: app loading, lifespan, serving on listening sockets, shutdown.

Imports protocols and config only; the supervisor drives a worker through
:class:`~asgictl.worker.server.Server`.
"""
