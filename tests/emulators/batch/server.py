"""The Batch REST API over HTTP (aiohttp), as azure-batch 15.x's BatchClient calls it.

Operations: pools create/get/enable autoscale/evaluate autoscale; jobs create/get/list/
update/disable/enable/terminate/delete/task counts; tasks create/create collection
(``addtaskcollection``)/list/get; task files list/properties/download. Test controls under
``/_test/`` inject faults and count requests (tests/emulators/batch/faults.py). Requests need
an ``api-version`` and, unless the server was started without a key, a valid SharedKey
signature (``AzureNamedKeyCredential``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web

from tests.emulators.batch.auth import check_shared_key
from tests.emulators.batch.entities import MAX_COLLECTION_BYTES, Json
from tests.emulators.batch.errors import BatchServiceError, missing_property, not_found
from tests.emulators.batch.faults import HttpFault
from tests.emulators.batch.odata import compile_filter, select
from tests.emulators.batch.service import BatchService

logger = logging.getLogger(__name__)

API_VERSION = "2025-06-01"
DEFAULT_MAX_RESULTS = 1000
JSON_TYPE = "application/json;odata=minimalmetadata"
SERVICE_KEY: web.AppKey[BatchService] = web.AppKey("service", BatchService)
CREDENTIALS_KEY: web.AppKey[tuple[str, str | None]] = web.AppKey("credentials", tuple)

TEST_PREFIX = "/_test/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _rfc1123(stamp: str | float | None = None) -> str:
    if isinstance(stamp, float):
        moment = datetime.fromtimestamp(stamp, UTC)
    elif isinstance(stamp, str):
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    else:
        moment = datetime.now(UTC)
    return format_datetime(moment, usegmt=True)


def _entity_headers(entity: Json) -> dict[str, str]:
    return {
        "ETag": str(entity.get("eTag", "")),
        "Last-Modified": _rfc1123(str(entity["lastModified"])),
        "DataServiceId": str(entity.get("url", "")),
    }


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": JSON_TYPE, **(headers or {})},
    )


def _empty(status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers={"Content-Length": "0", **(headers or {})})


async def _read_json(request: web.Request, *, limit: int | None = None) -> object:
    raw = await request.read()
    if limit is not None and len(raw) > limit:
        raise BatchServiceError(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
            {"MaxLimit": str(limit)},
        )
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BatchServiceError(
            400, "InvalidRequestBody", f"The request body is not valid JSON: {exc}"
        ) from exc


def _object(body: object) -> Json:
    if not isinstance(body, dict):
        raise BatchServiceError(
            400, "InvalidRequestBody", "The request body must be a JSON object."
        )
    return body


@web.middleware
async def _batch_protocol(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = str(uuid.uuid4())
    if request.path.startswith(TEST_PREFIX):
        return await handler(request)
    faults = _service(request).faults
    route = request.match_info.route.resource
    faults.requests[f"{request.method} {route.canonical if route else request.path}"] += 1
    try:
        fault = faults.take_http(request.method, request.path)
        if fault is not None and fault.body is not None:
            # Not the service's answer at all (a proxy's or captive portal's page).
            return web.Response(status=fault.status, text=fault.body, content_type="text/html")
        if fault is not None and fault.answer is not None:
            # JSON, but not of the shape the service gives for this call.
            return web.Response(
                status=fault.status, text=fault.answer, headers={"Content-Type": JSON_TYPE}
            )
        if fault is not None:
            raise _injected(fault)
        if request.query.get("api-version") is None:
            raise BatchServiceError(
                400,
                "MissingRequiredQueryParameter",
                "A query parameter that's mandatory for this request is not specified.",
                {"QueryParameterName": "api-version"},
            )
        account, key = request.app[CREDENTIALS_KEY]
        if key is not None:
            check_shared_key(request.method, request.raw_path, request.headers, account, key)
        response = await handler(request)
    except BatchServiceError as exc:
        response = _json(exc.status, exc.body(request_id))
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(exc.retry_after_s)
    except asyncio.CancelledError:
        raise
    except web.HTTPException:
        raise
    except Exception as exc:
        # A bug in this server: answer like the service would, and keep the traceback in the log.
        logger.exception("batch request %s %s failed", request.method, request.path)
        error = BatchServiceError(
            500, "InternalError", f"Server encountered an internal error: {exc!r}"
        )
        response = _json(500, error.body(request_id))
    response.headers["request-id"] = request_id
    client_request_id = request.headers.get("client-request-id")
    if client_request_id:
        response.headers["client-request-id"] = client_request_id
    return response


def _injected(fault: HttpFault) -> BatchServiceError:
    codes = {429: "TooManyRequests", 500: "InternalError", 503: "ServerBusy"}
    error = BatchServiceError(
        fault.status, codes.get(fault.status, "InjectedFault"), "Injected by a test fault."
    )
    if fault.retry_after_s is not None:
        error.retry_after_s = fault.retry_after_s
    return error


def _service(request: web.Request) -> BatchService:
    return request.app[SERVICE_KEY]


def _page(request: web.Request, entities: list[Json]) -> web.Response:
    """One page of a list operation, with ``odata.nextLink`` while more remain."""
    matches = compile_filter(request.query.get("$filter"))
    selected = [e for e in entities if matches(e)]
    try:
        start = int(request.query.get("$skiptoken", "0"))
        size = int(request.query.get("maxresults", str(DEFAULT_MAX_RESULTS)))
    except ValueError as exc:
        raise BatchServiceError(400, "InvalidQueryParameterValue", str(exc)) from exc
    size = max(1, min(size, DEFAULT_MAX_RESULTS))
    chunk = selected[start : start + size]
    body: Json = {
        "odata.metadata": f"{_service(request).base_url}/$metadata",
        "value": [select(e, request.query.get("$select")) for e in chunk],
    }
    if start + size < len(selected):
        params = {k: v for k, v in request.query.items() if k != "$skiptoken"}
        params["$skiptoken"] = str(start + size)
        body["odata.nextLink"] = (
            f"{_service(request).base_url}{request.path}?{urlencode(params, quote_via=quote)}"
        )
    return _json(200, body)


# -- pools ---------------------------------------------------------------------------------


async def create_pool(request: web.Request) -> web.StreamResponse:
    pool = _service(request).create_pool(_object(await _read_json(request)))
    headers = _entity_headers(pool.body)
    headers["Location"] = str(pool.body["url"])
    return _empty(201, headers)


async def get_pool(request: web.Request) -> web.StreamResponse:
    pool = _service(request).pool(request.match_info["pool_id"])
    return _json(200, select(pool.body, request.query.get("$select")), _entity_headers(pool.body))


async def enable_autoscale(request: web.Request) -> web.StreamResponse:
    body = _object(await _read_json(request))
    pool = _service(request).enable_autoscale(request.match_info["pool_id"], body)
    return _empty(200, _entity_headers(pool.body))


async def evaluate_autoscale(request: web.Request) -> web.StreamResponse:
    body = _object(await _read_json(request))
    service = _service(request)
    run = service.evaluate_autoscale(request.match_info["pool_id"], body)
    pool = service.pool(request.match_info["pool_id"])
    return _json(200, run, _entity_headers(pool.body))


# -- jobs ----------------------------------------------------------------------------------


async def create_job(request: web.Request) -> web.StreamResponse:
    job = _service(request).create_job(_object(await _read_json(request)))
    headers = _entity_headers(job.body)
    headers["Location"] = str(job.body["url"])
    return _empty(201, headers)


async def list_jobs(request: web.Request) -> web.StreamResponse:
    return _page(request, _service(request).list_jobs())


async def get_job(request: web.Request) -> web.StreamResponse:
    job = _service(request).job(request.match_info["job_id"])
    return _json(200, select(job.body, request.query.get("$select")), _entity_headers(job.body))


async def update_job(request: web.Request) -> web.StreamResponse:
    job = _service(request).update_job(
        request.match_info["job_id"], _object(await _read_json(request))
    )
    return _empty(200, _entity_headers(job.body))


async def terminate_job(request: web.Request) -> web.StreamResponse:
    body = _object(await _read_json(request))
    reason = body.get("terminateReason")
    service = _service(request)
    service.terminate_job(request.match_info["job_id"], reason if isinstance(reason, str) else None)
    return _empty(202, _entity_headers(service.job(request.match_info["job_id"]).body))


async def disable_job(request: web.Request) -> web.StreamResponse:
    body = _object(await _read_json(request))
    disable_tasks = body.get("disableTasks")
    if not isinstance(disable_tasks, str):
        raise missing_property("disableTasks")
    service = _service(request)
    service.disable_job(request.match_info["job_id"], disable_tasks)
    return _empty(202, _entity_headers(service.job(request.match_info["job_id"]).body))


async def enable_job(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    service.enable_job(request.match_info["job_id"])
    return _empty(202, _entity_headers(service.job(request.match_info["job_id"]).body))


async def delete_job(request: web.Request) -> web.StreamResponse:
    _service(request).delete_job(request.match_info["job_id"])
    return _empty(202)


async def job_task_counts(request: web.Request) -> web.StreamResponse:
    return _json(200, _service(request).task_counts(request.match_info["job_id"]))


# -- tasks ---------------------------------------------------------------------------------


async def create_task(request: web.Request) -> web.StreamResponse:
    body = _object(await _read_json(request))
    task = _service(request).add_task(request.match_info["job_id"], body)
    headers = _entity_headers(task.body)
    headers["Location"] = str(task.body["url"])
    return _empty(201, headers)


async def create_task_collection(request: web.Request) -> web.StreamResponse:
    limit = _service(request).faults.take_collection_size(request.content_length or 0)
    body = await _read_json(request, limit=limit if limit is not None else MAX_COLLECTION_BYTES)
    results = _service(request).add_task_collection(request.match_info["job_id"], body)
    return _json(200, {"value": results})


async def list_tasks(request: web.Request) -> web.StreamResponse:
    job = _service(request).job(request.match_info["job_id"])
    return _page(request, [t.body for t in job.tasks.values()])


async def get_task(request: web.Request) -> web.StreamResponse:
    task = _service(request).task(request.match_info["job_id"], request.match_info["task_id"])
    return _json(200, select(task.body, request.query.get("$select")), _entity_headers(task.body))


# -- task files ----------------------------------------------------------------------------


def _task_root(request: web.Request) -> Path:
    service = _service(request)
    task = service.task(request.match_info["job_id"], request.match_info["task_id"])
    return service.task_dir(task.job_id, task.id)


def _file_url(request: web.Request, relative: str) -> str:
    service = _service(request)
    return (
        f"{service.base_url}/jobs/{request.match_info['job_id']}/tasks/"
        f"{request.match_info['task_id']}/files/{quote(relative, safe='/')}"
    )


def _resolve(request: web.Request) -> tuple[Path, str]:
    root = _task_root(request).resolve()
    relative = request.match_info["file_path"]
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.exists():
        raise not_found("File", relative)
    return path, relative


def _file_properties(path: Path) -> Json:
    stat = path.stat()
    return {
        "creationTime": datetime.fromtimestamp(stat.st_ctime, UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "lastModified": datetime.fromtimestamp(stat.st_mtime, UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "contentLength": 0 if path.is_dir() else stat.st_size,
        "contentType": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        "fileMode": oct(stat.st_mode & 0o777)[2:].zfill(4),
    }


async def list_task_files(request: web.Request) -> web.StreamResponse:
    root = _task_root(request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    paths = sorted(root.rglob("*") if recursive else root.glob("*")) if root.exists() else []
    entities: list[Json] = []
    for path in paths:
        relative = path.relative_to(root).as_posix()
        entities.append(
            {
                "name": relative,
                "url": _file_url(request, relative),
                "isDirectory": path.is_dir(),
                "properties": _file_properties(path),
            }
        )
    return _page(request, entities)


def _file_headers(request: web.Request, path: Path, relative: str) -> dict[str, str]:
    props = _file_properties(path)
    return {
        "Content-Type": str(props["contentType"]),
        "Last-Modified": _rfc1123(path.stat().st_mtime),
        "ocp-creation-time": _rfc1123(path.stat().st_ctime),
        "ocp-batch-file-isdirectory": str(path.is_dir()),
        "ocp-batch-file-url": _file_url(request, relative),
        "ocp-batch-file-mode": str(props["fileMode"]),
    }


async def get_task_file_properties(request: web.Request) -> web.StreamResponse:
    path, relative = _resolve(request)
    headers = _file_headers(request, path, relative)
    # aiohttp sends no body for HEAD but derives Content-Length from the one given.
    data = b"" if path.is_dir() else await asyncio.to_thread(path.read_bytes)
    return web.Response(status=200, body=data, headers=headers)


async def download_task_file(request: web.Request) -> web.StreamResponse:
    path, relative = _resolve(request)
    if path.is_dir():
        raise BatchServiceError(409, "OperationInvalidForCurrentState", "The file is a directory.")
    data = await asyncio.to_thread(path.read_bytes)
    ocp_range = request.headers.get("ocp-range")
    if ocp_range and ocp_range.startswith("bytes="):
        first, _, last = ocp_range[len("bytes=") :].partition("-")
        start = int(first or 0)
        end = int(last) + 1 if last else len(data)
        data = data[start:end]
    headers = _file_headers(request, path, relative)
    return web.Response(status=200, body=data, headers=headers)


# -- test controls (not part of the Batch API; no signature needed) ------------------------


async def add_fault(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    try:
        _service(request).faults.add(request.match_info["kind"], _object(body))
    except (ValueError, KeyError, BatchServiceError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"ok": True})


async def reset_faults(request: web.Request) -> web.StreamResponse:
    _service(request).faults.reset()
    return web.json_response({"ok": True})


async def fault_stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(_service(request).faults.stats())


# -- application ---------------------------------------------------------------------------


def make_app(service: BatchService, *, account_key: str | None) -> web.Application:
    """The aiohttp application serving `service`; no signature checks when `account_key` is None."""
    # The service's own size limit (1 MB for a task collection) is checked per operation.
    app = web.Application(middlewares=[_batch_protocol], client_max_size=16 * 1024 * 1024)
    app[SERVICE_KEY] = service
    app[CREDENTIALS_KEY] = (service.account_name, account_key)
    router = app.router
    router.add_post("/pools", create_pool)
    router.add_get("/pools/{pool_id}", get_pool)
    router.add_post("/pools/{pool_id}/enableautoscale", enable_autoscale)
    router.add_post("/pools/{pool_id}/evaluateautoscale", evaluate_autoscale)
    router.add_post("/jobs", create_job)
    router.add_get("/jobs", list_jobs)
    router.add_get("/jobs/{job_id}", get_job)
    router.add_patch("/jobs/{job_id}", update_job)
    router.add_delete("/jobs/{job_id}", delete_job)
    router.add_post("/jobs/{job_id}/terminate", terminate_job)
    router.add_post("/jobs/{job_id}/disable", disable_job)
    router.add_post("/jobs/{job_id}/enable", enable_job)
    router.add_get("/jobs/{job_id}/taskcounts", job_task_counts)
    router.add_post("/jobs/{job_id}/tasks", create_task)
    router.add_get("/jobs/{job_id}/tasks", list_tasks)
    router.add_post("/jobs/{job_id}/addtaskcollection", create_task_collection)
    router.add_get("/jobs/{job_id}/tasks/{task_id}", get_task)
    router.add_get("/jobs/{job_id}/tasks/{task_id}/files", list_task_files)
    router.add_route(
        "HEAD", "/jobs/{job_id}/tasks/{task_id}/files/{file_path:.+}", get_task_file_properties
    )
    router.add_get(
        "/jobs/{job_id}/tasks/{task_id}/files/{file_path:.+}", download_task_file, allow_head=False
    )

    router.add_post(TEST_PREFIX + "faults/{kind}", add_fault)
    router.add_delete(TEST_PREFIX + "faults", reset_faults)
    router.add_get(TEST_PREFIX + "stats", fault_stats)

    async def stop_tasks(_app: web.Application) -> None:
        await service.shutdown()

    app.on_shutdown.append(stop_tasks)
    return app


async def serve(
    *,
    host: str,
    port: int,
    account_name: str,
    account_key: str | None,
    work_dir: Path,
    max_concurrency: int,
    ready: Callable[[int], None],
) -> None:
    """Serve until cancelled; calls `ready(port)` once listening (port 0 picks a free one)."""
    service = BatchService(
        account_name=account_name, work_dir=work_dir, base_url="", max_concurrency=max_concurrency
    )
    runner = web.AppRunner(make_app(service, account_key=account_key), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        service.base_url = f"http://{host}:{bound}"
        ready(bound)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
