"""An app that starts a non-daemon thread at import (bounded: it sleeps 600 s).

With ``--preload`` the thread lives in the master: the interpreter would wait for it at
exit, after the master's work is done.
"""

import threading
import time

threading.Thread(target=time.sleep, args=(600,), name="svthread-sleeper", daemon=False).start()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"threaded"})
