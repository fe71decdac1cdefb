"""The ASGI lifespan protocol: startup before serving, shutdown after.

``--lifespan auto`` runs it and tolerates apps that do not speak it. An app that raises
before it has even asked for the startup event is taken not to support lifespan; one that
raises after that has failed its startup, which stops the server (where uvicorn's auto
mode would carry on with a half-started app).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgictl.logs import ROUTINE

logger = logging.getLogger("asgictl.error")


class Lifespan:
    def __init__(self, app: Any, mode: str, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = mode != "off"
        self.received_once = False
        self.startup_done: asyncio.Future[None] | None = None
        self.shutdown_done: asyncio.Future[None] | None = None
        #: Why startup failed, for the log and the exit; None on success.
        self.failure: str | None = None
        #: The server stopped before the startup ended (see :meth:`cancel_startup`).
        self.cancelled = False

    async def startup(self) -> bool:
        """Run the startup half. False means the server must not start."""
        if not self.supported:
            return True
        logger.info("Waiting for application startup.", extra=ROUTINE)
        loop = asyncio.get_running_loop()
        self.startup_done = loop.create_future()
        self.shutdown_done = loop.create_future()
        self.task = loop.create_task(self._main())
        await self.queue.put({"type": "lifespan.startup"})
        await self.startup_done
        if self.failure is not None:
            return False
        if self.supported:
            logger.info("Application startup complete.", extra=ROUTINE)
        return True

    async def cancel_startup(self, timeout: float) -> None:
        """Cancel a startup in progress: the server stops before it ever served.

        The app's lifespan coroutine gets CancelledError where it awaits; that is not a
        failure (nothing is logged) and no shutdown follows. Waits up to ``timeout``
        seconds for the coroutine to unwind.
        """
        task = self.task
        if task is None or task.done():
            return
        self.cancelled = True
        task.cancel()
        await asyncio.wait((task,), timeout=timeout)

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        logger.info("Waiting for application shutdown.", extra=ROUTINE)
        await self.queue.put({"type": "lifespan.shutdown"})
        assert self.shutdown_done is not None
        await self.shutdown_done
        if self.supported:
            logger.info("Application shutdown complete.", extra=ROUTINE)

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if self.cancelled and isinstance(exc, asyncio.CancelledError):
                raise
            if self.startup_done is not None and not self.startup_done.done():
                if self.received_once or self.mode == "on":
                    self.failure = f"{type(exc).__name__}: {exc}"
                    logger.error("Application startup failed.", exc_info=exc)
                else:
                    self.supported = False
                    logger.info("ASGI 'lifespan' protocol appears unsupported.")
            elif self.received_once:
                logger.error("Exception in 'lifespan' protocol", exc_info=exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            for fut in (self.startup_done, self.shutdown_done):
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def _receive(self) -> dict[str, Any]:
        self.received_once = True
        return await self.queue.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        assert self.startup_done is not None and self.shutdown_done is not None
        if kind == "lifespan.startup.complete":
            self._check(not self.startup_done.done(), kind)
            self.startup_done.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._check(not self.startup_done.done(), kind)
            self.failure = message.get("message") or "the app reported lifespan.startup.failed"
            logger.error("Application startup failed: %s", self.failure)
            self.startup_done.set_result(None)
        elif kind == "lifespan.shutdown.complete":
            self._check(self.startup_done.done() and not self.shutdown_done.done(), kind)
            self.shutdown_done.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            self._check(self.startup_done.done() and not self.shutdown_done.done(), kind)
            logger.error("Application shutdown failed: %s", message.get("message", ""))
            self.shutdown_done.set_result(None)
        else:
            raise RuntimeError(f"Unexpected ASGI lifespan message type {kind!r}.")

    @staticmethod
    def _check(ok: bool, kind: str) -> None:
        if not ok:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, in the wrong order.")
