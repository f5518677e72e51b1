"""The floor: one FastAPI route returning a small JSON body, the cheapest way the framework allows
(a prebuilt orjson `Response`, as ForYou's handlers do), no middleware. Served by run.py with the same
uvicorn options as `foryou serve`: uvloop + httptools, access log off.

    uvicorn --app-dir benchmarks floor_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from starlette.responses import Response

app = FastAPI()
_BODY = orjson.dumps({"status": "ok"})


@app.get("/ping")
async def ping() -> Response:
    return Response(_BODY, media_type="application/json")
