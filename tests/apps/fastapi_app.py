"""A FastAPI app for the end-to-end tests: JSON, params, streaming, files, uploads, lifespan."""

import contextlib
import hashlib
import os

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    yield {"greeting": "hello from fastapi lifespan", "pid": os.getpid()}
    print("fastapi lifespan shutdown", flush=True)


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root():
    return {"framework": "fastapi", "ok": True}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, limit: int = 10):
    return {"item_id": item_id, "q": q, "limit": limit}


@app.get("/stream")
async def stream():
    async def numbers():
        for i in range(10):
            yield f"line {i}\n".encode()

    return StreamingResponse(numbers(), media_type="text/plain")


@app.get("/file")
async def file():
    return FileResponse(os.environ["TEST_FILE"], media_type="application/octet-stream")


@app.post("/upload")
async def upload(request: Request):
    size = 0
    digest = hashlib.sha256()
    async for chunk in request.stream():
        size += len(chunk)
        digest.update(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


@app.get("/state")
async def state(request: Request):
    return {"greeting": request.state.greeting, "pid": request.state.pid}
