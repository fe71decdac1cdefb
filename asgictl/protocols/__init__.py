"""Wire protocols: how bytes on a connection become ASGI events, and back.

Nothing here imports the worker or the supervisor; a protocol is handed a
:class:`~asgictl.protocols.state.ServerState` and does its job with that.
"""
