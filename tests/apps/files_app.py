"""An ASGI app answering with files through the pathsend and zerocopysend extensions.

- ``/pathsend?path=P``                         the file P (``http.response.pathsend``)
- ``/zerocopy?path=P&offset=O&count=C``        C bytes of P from O (``http.response.zerocopysend``)
"""

from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    headers = [(b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["path"] == "/pathsend":
        await send({"type": "http.response.pathsend", "path": query["path"]})
    else:
        with open(query["path"], "rb") as fh:
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": fh,
                    "offset": int(query["offset"]),
                    "count": int(query["count"]),
                }
            )
