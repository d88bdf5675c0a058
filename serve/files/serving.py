"""Files for fine-tuning: validated on upload with the training data layer, stored in the artifact store.

An upload is read with a bound (TUNELOOP_FILES_MAX_BYTES), every line checked as the training job
will check it (chat `messages`, prompt/completion, or `text` for unsupervised training), and refused
with a 400 naming each bad line by its number; only a file that passed is stored, under
`<store>/files/<id>`, and recorded in the registry with the key that uploaded it. Another key
gets the same 404 for it as for a file that does not exist.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path

from fastapi import Request, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from tuneloop.platform import settings
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.data.formats import DataError, read_examples
from tuneloop.platform.errors import NotFoundError
from tuneloop.platform.registry import Registry, finetuning
from tuneloop.platform.registry.tables import File
from tuneloop.serve.auth.fine_tuning import fine_tuner, owner_filter
from tuneloop.serve.errors import OpenAIError, bad_request
from tuneloop.serve.files.protocol import PURPOSES, FileDeleted, FileList, FileObject
from tuneloop.serve.request.limits import read_body

MULTIPART_OVERHEAD = 64 * 1024  # the form's other fields and part headers, beside the file itself


def file_path(store: ArtifactStore, file_id: str) -> str:
    return f"{store.root.rstrip('/')}/files/{file_id}"


def file_not_found(file_id: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(
        404, f"No such File object: {file_id}", param=param or "file_id", code="file_not_found"
    )


def as_object(row: File) -> FileObject:
    detail = row.detail or {}
    shown = f"{detail['format']}, {detail['examples']} examples" if "format" in detail else None
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        purpose=row.purpose,
        status_details=shown,
    )


async def create_file(request: Request) -> FileObject:
    principal = await fine_tuner(request)
    replica = request.app.state.replica
    limit = settings.TUNELOOP_FILES_MAX_BYTES.get()
    raw = await read_body(request, limit + MULTIPART_OVERHEAD)
    purpose, filename, data = await _form(request, raw)
    if purpose not in PURPOSES:
        raise bad_request(
            f"purpose {purpose!r} is not supported here; supported: {', '.join(PURPOSES)}", param="purpose"
        )
    if len(data) > limit:
        raise OpenAIError(
            413,
            f"The file is over {limit} bytes (TUNELOOP_FILES_MAX_BYTES).",
            param="file",
            code="file_too_large",
        )
    registry, store = replica.registry, replica.store
    owner = principal.key_id
    most = settings.TUNELOOP_FILES_MAX_PER_KEY.get()
    if await asyncio.to_thread(finetuning.count_files, registry, owner) >= most:
        raise OpenAIError(
            429,
            f"This key keeps {most} files already (TUNELOOP_FILES_MAX_PER_KEY); delete some first.",
            type="rate_limit_error",
            code="too_many_files",
        )
    file_id = f"file-{secrets.token_hex(12)}"
    detail = await asyncio.to_thread(validate, data, filename)
    row = File(
        id=file_id,
        key_id=owner,
        filename=filename,
        purpose=purpose,
        bytes=len(data),
        uri=store.fs.unstrip_protocol(file_path(store, file_id)),
        detail=detail,
    )
    await asyncio.to_thread(store_file, registry, store, row, data)
    return as_object(row)


def validate(data: bytes, filename: str) -> dict[str, object]:
    """Check every line as training will; a DataError becomes a 400 naming the lines by number.

    The files API takes JSONL, and training reads an uploaded file as JSONL, so it is checked as JSONL
    whatever its name says (the client's name never picks a reader or a path)."""
    with tempfile.TemporaryDirectory(prefix="tuneloop-upload-") as tmp:
        path = Path(tmp) / "upload.jsonl"
        path.write_bytes(data)
        try:
            examples = read_examples(path)
        except DataError as exc:
            message = str(exc).replace(str(path), filename)
            raise bad_request(message, param="file", code="invalid_file") from None
    return {"format": examples[0].format, "examples": len(examples)}


def store_file(registry: Registry, store: ArtifactStore, row: File, data: bytes) -> None:
    """Write the bytes, then the row: a row never names a file that is not there."""
    path = file_path(store, row.id)
    store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    store.fs.pipe_file(path, data)
    try:
        finetuning.add_file(registry, row)
    except BaseException:
        store.fs.rm(path)
        raise


async def _form(request: Request, raw: bytes) -> tuple[str, str, bytes]:
    """(purpose, filename, bytes) of a multipart upload, or a 400 naming what is missing."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("Upload the file as multipart/form-data (files.create does).", param="file")

    async def body() -> AsyncGenerator[bytes, None]:
        yield raw

    parser = MultiPartParser(request.headers, body(), max_files=1, max_fields=8, max_part_size=64 * 1024)
    parser.spool_max_size = len(raw) + 1  # the body is in memory already: keep the part there too
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise bad_request(f"Malformed multipart body: {exc.message}", param="file") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise bad_request("Missing `file` (the JSONL file to upload).", param="file")
    if not isinstance(purpose, str):
        raise bad_request("Missing `purpose` (`fine-tune`).", param="purpose")
    data = await upload.read()
    await form.close()
    return purpose, upload_name(upload.filename), data


def upload_name(given: str | None) -> str:
    """The name an upload is listed under: the last part of the client's, cut to 200 characters."""
    name = Path(given or "upload.jsonl").name[:200] or "upload.jsonl"
    if name in (".", ".."):
        raise bad_request(f"The file's name {name!r} is not a file name.", param="file")
    return name


async def list_files(request: Request, purpose: str | None, limit: int) -> FileList:
    principal = await fine_tuner(request)
    if not 1 <= limit <= 10_000:
        raise bad_request("limit must be between 1 and 10000", param="limit")
    registry = request.app.state.replica.registry
    rows = await asyncio.to_thread(
        finetuning.list_files, registry, owner_filter(principal), purpose, limit + 1
    )
    return FileList(data=[as_object(r) for r in rows[:limit]], has_more=len(rows) > limit)


async def find(request: Request, file_id: str, param: str | None = None) -> File:
    """A file the caller may see, or the 404 every other id gets."""
    principal = await fine_tuner(request)
    try:
        return await asyncio.to_thread(
            finetuning.get_file, request.app.state.replica.registry, file_id, owner_filter(principal)
        )
    except NotFoundError:
        raise file_not_found(file_id, param) from None


async def retrieve_file(request: Request, file_id: str) -> FileObject:
    return as_object(await find(request, file_id))


async def delete_file(request: Request, file_id: str) -> FileDeleted:
    principal = await fine_tuner(request)
    replica = request.app.state.replica
    try:
        row = await asyncio.to_thread(
            finetuning.delete_file, replica.registry, file_id, owner_filter(principal)
        )
    except NotFoundError:
        raise file_not_found(file_id) from None
    path = file_path(replica.store, row.id)
    if await asyncio.to_thread(replica.store.fs.exists, path):
        await asyncio.to_thread(replica.store.fs.rm, path)
    return FileDeleted(id=row.id)


async def file_content(request: Request, file_id: str) -> Response:
    row = await find(request, file_id)
    store = request.app.state.replica.store
    data = await asyncio.to_thread(store.fs.cat_file, file_path(store, row.id))
    kind = "text/csv" if row.filename.endswith(".csv") else "application/jsonl"
    return Response(content=data, media_type=kind)
