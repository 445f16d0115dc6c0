"""The HTTP API (under /api/) and the page (at /), over one warm `Library`.

FastAPI runs the plain `def` endpoints in its thread pool. A Library answers one call at a
time, so searches and file look-ups go through a pool of its readers (readers.py) and run
side by side; the rest go to the Library itself.
Answers are shaped like the CLI's --json; every error is `{"error": message, "status": N}`.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from clipsearch import (
    DecodeError,
    Filters,
    Library,
    MissingModelError,
    ModelNotIndexedError,
    SearchResult,
    __version__,
    crowd,
)
from clipsearch import Query as SearchQuery
from clipsearch.remote import LIBRARY_HEADER, library_tag

from .config import ServeConfig
from .fast import FastSearch, Inline
from .jobs import IndexJobs
from .readers import Readers
from .security import Guard
from .thumbnails import SIZES, ThumbnailError, cached_thumbnail

STATIC = files("clipsearch.server") / "static"
LABELS = Query(description="a label; repeat for each")
CACHE_FOREVER = "private, max-age=31536000, immutable"


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class JSON(Response):
    """JSON that keeps any file name: undecodable bytes travel as \\udcXX escapes, as in the
    CLI's --json (json.loads + os.fsencode give the exact name back)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


def create_app(lib: Library, config: ServeConfig | None = None, jobs: Any = None) -> Guard:
    """`jobs`: where index runs start and report (default: IndexJobs, runs of this process;
    the other serving processes of `--workers` pass the link to the one that owns them)."""
    config = config or ServeConfig()
    read_only = config.read_only or lib.readonly
    library = library_tag(lib.path)
    app = FastAPI(title="clipsearch", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", default_response_class=JSON)

    def default_is_indexed(model_id: str) -> None:
        # A library served before its first run had no default: take the one the run used.
        if lib.default_model.model_id not in lib.indexed_models:
            lib.set_default_model(model_id)

    # Runs use the warm library's model (its default, or the one `serve --model` named).
    options = {**config.library_options, **lib.default_model.to_spec()}
    if jobs is None:
        jobs = IndexJobs(lib.path, options, on_finish=default_is_indexed)
    app.state.jobs = jobs
    app.state.lib = lib
    readers = Readers(lib, config.readers)
    app.state.readers = readers

    def error_json(exc: ApiError) -> JSON:
        return JSON({"error": exc.message, "status": exc.status, **exc.extra}, exc.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSON:
        return error_json(exc)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSON:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                             for e in exc.errors())
        return JSON({"error": problems, "status": 400}, 400)

    def page(offset: int, limit: int) -> None:
        if not 1 <= limit <= config.max_limit:
            raise ApiError(400, f"limit must be between 1 and {config.max_limit}")
        if not 0 <= offset <= config.max_offset:
            raise ApiError(400, f"offset must be between 0 and {config.max_offset}")

    def within(folder: str | None) -> str | None:
        if folder in (None, ""):
            return None
        if not os.path.isabs(folder) or "\0" in folder:
            raise ApiError(400, f"'in' must be an absolute folder path, not {folder!r}")
        return folder

    def answer(results: list[SearchResult], offset: int, limit: int, **head: Any) -> dict:
        shown = results[offset: offset + limit]
        # good_match / reason: the grading of text queries (docs/search.md), None otherwise
        return {**head, "offset": offset, "limit": limit, "more": len(results) > offset + limit,
                "good_match": getattr(results, "good_match", None),
                "reason": getattr(results, "reason", None),
                "results": [_result(r) for r in shown]}

    def searching(call, *args: Any, **kwargs: Any) -> list[SearchResult]:
        try:
            return call(*args, **kwargs)
        except ModelNotIndexedError as exc:
            raise ApiError(400, str(exc), available=exc.available) from exc
        except MissingModelError as exc:
            raise ApiError(400, str(exc)) from exc
        except DecodeError as exc:
            raise ApiError(400, f"not a readable image: {exc}",
                           reason=getattr(exc, "reason", None)) from exc
        except LookupError as exc:
            raise ApiError(404, str(exc)) from exc
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc

    async def upload(request: Request) -> bytes:
        """The request body, refused past the limit before it is all read."""
        limit = config.max_upload_bytes
        too_big = ApiError(413, "the upload is larger than the limit of " + (
            f"{limit // 2**20} MB" if limit % 2**20 == 0 else f"{limit} bytes"))
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        if not body:
            raise ApiError(400, "no image in the request body: send the image's bytes")
        return bytes(body)

    def with_upload(data: bytes, call, **kwargs: Any):
        fd, tmp = tempfile.mkstemp(prefix="clipsearch-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return searching(call, tmp, **kwargs)
        except ApiError as exc:  # the temporary file's name means nothing to the client
            exc.message = exc.message.replace(tmp, "the upload")
            raise
        finally:
            os.unlink(tmp)

    def with_reader(call, data: bytes, method: str, **kwargs: Any):
        with readers.one() as reader:
            return call(data, getattr(reader, method), **kwargs)

    # -- search --------------------------------------------------------------------------
    @app.get("/api/search", summary="Text search, combined queries, metadata filters")
    def search(q: str | None = Query(None, description="what to look for (plain text)"),
               expr: str | None = Query(None, description="a combined query (docs/search.md)"
                                        ": text and id:N terms, e.g. 'a dog' + 'snow' - leash"),
               limit: int = 20, offset: int = 0,
               folder: str | None = Query(None, alias="in"), model: str | None = None,
               after: str | None = None, before: str | None = None,
               camera: str | None = None, orientation: str | None = None,
               min_size: str | None = None,
               type: Annotated[list[str] | None, Query(description="jpeg, png, ...")] = None,
               ) -> JSON:
        return run_search(q, expr, limit, offset, folder, model, after, before, camera,
                          orientation, min_size, type)

    def run_search(q: str | None, expr: str | None, limit: int = 20, offset: int = 0,
                   folder: str | None = None, model: str | None = None,
                   after: str | None = None, before: str | None = None,
                   camera: str | None = None, orientation: str | None = None,
                   min_size: str | None = None, type: list[str] | None = None) -> JSON:
        if q is not None and expr is not None:
            raise ApiError(400, "give q (plain text) or expr (a combined query), not both")
        text = q if q is not None else expr
        if text is not None and len(text) > config.max_query_chars:
            raise ApiError(400, f"the query is longer than {config.max_query_chars} characters")
        page(offset, limit)
        wanted = (after, before, camera, orientation, min_size, type)
        try:
            filters = (Filters(after=after, before=before, camera=camera,
                               orientation=orientation, min_size=min_size,
                               types=tuple(type or ())) if any(wanted) else None)
            query = (SearchQuery.text(q) if q is not None  # plain text: never parsed
                     else SearchQuery.parse(expr) if expr is not None else None)
        except ValueError as exc:  # a malformed query (it marks the bad part) or filter
            raise ApiError(400, str(exc)) from exc
        if query is not None and any(t.kind == "image" for t in query.terms):
            # A request never reaches a file by its path: indexed files by id:N only.
            raise ApiError(400, "image terms by path are not accepted over HTTP: name an "
                           "indexed photo as id:N")
        if query is None and filters is None:
            raise ApiError(400, "give q, expr or a filter (after, before, camera, ...)")
        with readers.one() as reader:
            hits = searching(reader.query, query, limit=offset + limit + 1,
                             within=within(folder), model=model, filters=filters)
        # Which library answered: `clipsearch query` checks it before trusting the answer.
        return JSON(answer(hits, offset, limit, query=text), headers={LIBRARY_HEADER: library})

    # The hot path without FastAPI's per-request parameter solving (~0.6 ms) and the
    # router's layers: plain q/limit/offset/in/model requests (fast.py; alone, on the event
    # loop's thread); every other one goes on to the route above.
    app.add_middleware(FastSearch, run_search=run_search, inline=Inline(lambda: jobs.running),
                       error=ApiError, on_error=error_json,
                       left_out=frozenset({"/api/index/events"}))

    @app.get("/api/duplicates", summary="Groups of near-duplicate photos and exact copies")
    def duplicates(threshold: float | None = None, model: str | None = None) -> JSON:
        groups = searching(lib.duplicates, threshold=threshold, model=model)
        return JSON({"groups": [{**g.to_dict(), "members": [_file_row(m.to_dict())
                                                            for m in g.members]}
                                for g in groups]})

    @app.post("/api/search/image", summary="Search by an uploaded image (the request body)")
    async def search_image(request: Request, limit: int = 20, offset: int = 0,
                           folder: str | None = Query(None, alias="in"),
                           model: str | None = None) -> JSON:
        page(offset, limit)
        data = await upload(request)
        hits = await run_in_threadpool(with_reader, with_upload, data, "query_image",
                                       limit=offset + limit + 1, within=within(folder),
                                       model=model)
        return JSON(answer(hits, offset, limit, query={"image": len(data)}))

    @app.get("/api/similar/{file_id}", summary="More like this indexed file")
    def similar(file_id: str, limit: int = 20, offset: int = 0,
                folder: str | None = Query(None, alias="in"), model: str | None = None) -> JSON:
        page(offset, limit)
        with readers.one() as reader:
            hits = searching(reader.query_similar, file_of(file_id)["file_id"],
                             limit=offset + limit + 1, within=within(folder), model=model)
        return JSON(answer(hits, offset, limit, query={"similar": int(file_id)}))

    @app.post("/api/classify", summary="Zero-shot labels for an uploaded image")
    async def classify(request: Request, label: Annotated[list[str], LABELS],
                       model: str | None = None) -> JSON:
        if len(label) > 100 or any(len(x) > config.max_query_chars for x in label):
            raise ApiError(400, "at most 100 labels, each at most "
                           f"{config.max_query_chars} characters")
        data = await upload(request)
        scores = await run_in_threadpool(with_upload, data, lib.classify, labels=label,
                                         model=model)
        return JSON({"labels": [s.to_dict() for s in scores]})

    # -- library -------------------------------------------------------------------------
    @app.get("/api/status", summary="Roots, counts, models, the index run")
    def status() -> JSON:
        st = lib.status().to_dict()
        return JSON({**st, "read_only": read_only, "index": jobs.state,
                     "serving": {"pid": os.getpid(), "workers": config.workers,
                                 "requests": crowd.in_progress()}})

    @app.get("/api/roots", summary="The folders this library indexes")
    def roots() -> JSON:
        return JSON({"roots": lib.roots})

    @app.post("/api/index", summary="Start an index run of every root, or of one root")
    async def index(request: Request, root: str | None = None) -> JSON:
        if read_only:
            raise ApiError(403, "this server is read-only: index runs are off")
        if root is not None and root not in lib.roots:
            raise ApiError(400, f"{root!r} is not a root of this library",
                           roots=lib.roots)
        try:
            # In a thread: another serving process asks the owner of index runs and waits.
            return JSON(await run_in_threadpool(jobs.start, [root] if root else None), 202)
        except RuntimeError as exc:
            raise ApiError(409, str(exc)) from exc

    @app.get("/api/index/events", summary="The index run's progress (Server-Sent Events)")
    async def events(request: Request) -> StreamingResponse:
        async def stream():
            seen = -1
            quiet = 0.0
            while not app.state.stopping and not await request.is_disconnected():
                if jobs.version != seen:
                    seen = jobs.version
                    data = JSON(None).render(jobs.state).decode()
                    yield f"event: index\ndata: {data}\n\n"
                    quiet = 0.0
                elif quiet > 15:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(0.25)
                quiet += 0.25

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    # -- files ---------------------------------------------------------------------------
    def file_of(file_id: str) -> dict:
        if not file_id.isascii() or not file_id.isdigit():  # ../../etc/passwd and the like
            raise ApiError(404, f"no file with id {file_id!r} in this library")
        try:
            with readers.one() as reader:
                return reader.file_info(int(file_id))
        except LookupError as exc:
            raise ApiError(404, str(exc)) from exc

    @app.get("/api/file/{file_id}/info", summary="One file's catalog row")
    def file_info(file_id: str) -> JSON:
        return JSON(_file_row(file_of(file_id)))

    @app.get("/api/thumbnail/{file_id}", summary="A JPEG thumbnail, cached by content hash")
    def thumbnail(request: Request, file_id: str, size: int = 256) -> Response:
        if size not in SIZES:
            raise ApiError(400, f"size must be one of {', '.join(map(str, SIZES))}")
        row = file_of(file_id)
        etag = f'"{row["content_hash"]}-{size}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        # Changed since it was indexed: its hash is stale, so the thumbnail is not cached.
        st = os.stat(row["path"])
        fresh = (st.st_size, st.st_mtime_ns) == (row["size"], row["mtime_ns"])
        try:
            data = cached_thumbnail(lib.path, row["path"], row["content_hash"] if fresh else None,
                                    size, writable=not lib.readonly)
        except ThumbnailError as exc:
            raise ApiError(422, str(exc)) from exc
        return Response(data, media_type="image/jpeg",
                        headers={"ETag": etag, "Cache-Control": CACHE_FOREVER})

    @app.get("/api/file/{file_id}", summary="The original file's bytes")
    def original(file_id: str) -> FileResponse:
        row = file_of(file_id)
        kind = mimetypes.guess_type(os.fsencode(row["path"]).decode("utf-8", "replace"))[0]
        # nosniff + sandbox: a file is shown as the image it claims to be, never run.
        return FileResponse(row["path"], media_type=kind or "application/octet-stream",
                            headers={"X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "sandbox",
                                     "Cache-Control": "private, no-cache"},
                            content_disposition_type="inline",
                            filename=Path(row["path"]).name)

    # -- the page ------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(),
                            headers={"Cache-Control": "no-cache",
                                     "Content-Security-Policy": _PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.state.stopping = False
    app.state.read_only = read_only
    if config.cors:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization"])
    return Guard(app, config)


# Only the page's own files: no CDN, no inline script.
_PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")


def _result(r: SearchResult) -> dict:
    # vars(r), not r.to_dict(): its fields are plain values, so the shallow copy is the same
    # dict, and dataclasses.asdict's deep copy cost ~12 us a result (~0.12 ms a search).
    return {**vars(r), "thumbnail": f"/api/thumbnail/{r.file_id}?size=256",
            "file": f"/api/file/{r.file_id}"}


def _file_row(row: dict) -> dict:
    return {**row, "thumbnail": f"/api/thumbnail/{row['file_id']}?size=256",
            "file": f"/api/file/{row['file_id']}"}
