"""A FastAPI app with its own prometheus_client metrics, for the multiprocess test.

/hit counts in a Counter and answers the worker's pid; every worker adds 1 to a
``livesum`` Gauge during its lifespan startup (live workers: the files of a dead one must
be marked dead, or it would still count).
"""

import contextlib
import os

from fastapi import FastAPI
from prometheus_client import Counter, Gauge

HITS = Counter("myapp_hits", "Requests to /hit.", ["route"])
LIVE = Gauge("myapp_live_workers", "Worker processes that started the app.", multiprocess_mode="livesum")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    LIVE.inc()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/hit")
async def hit() -> dict:
    HITS.labels(route="hit").inc()
    return {"pid": os.getpid(), "multiproc_dir": os.environ.get("PROMETHEUS_MULTIPROC_DIR")}
