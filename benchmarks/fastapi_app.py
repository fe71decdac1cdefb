"""FastAPI application for the ``fastapi-json`` scenario (import as ``fastapi_app:app``).

A typical small JSON endpoint: a path parameter validated as an int, a query parameter
with a default, and a response model that FastAPI validates and serialises.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


class Item(BaseModel):
    """The response body of ``/items/{item_id}``."""

    item_id: int
    name: str
    tags: list[str]
    price: float
    in_stock: bool


@app.get("/items/{item_id}", response_model=Item)
async def read_item(item_id: int, q: str = "widget") -> Item:
    """Return a small item built from the path and query parameters."""
    return Item(item_id=item_id, name=q, tags=["bench", "asgi"], price=9.99, in_stock=True)
