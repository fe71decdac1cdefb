"""One worker: the :class:`~asgictl.worker.server.Server` that serves an app on
listening sockets, and what it is made of.

* ``server.py``: the Server (start, serve, graceful shutdown) and the runtime the master
  imports before forking;
* ``loader.py``: importing the app (``module:attr``, factories, ``--env-file``) and
  adapting ASGI2 and WSGI apps; ``wsgi/``: the WSGI adapter (a package: the adapter,
  the environ and ``wsgi.input``, the response, the thread's bridge to the loop);
* ``lifespan.py``: the ASGI lifespan protocol (startup before serving, shutdown after);
* ``sockets.py``, ``tls.py``, ``loops.py``: binding (``asgictl serve``), the SSL
  context, the event loop.

Imports config, logs, pubsub and protocols, never the supervisor: ``asgictl serve``
runs a Server in the current process; under ``asgictl start`` the master forks and
``supervisor/child.py`` runs one in each worker.
"""
