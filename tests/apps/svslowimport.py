"""An app whose import takes 60 s (a worker stuck importing until a stop cancels it)."""

import time

print("svslowimport: importing", flush=True)
time.sleep(60)


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"imported"})
