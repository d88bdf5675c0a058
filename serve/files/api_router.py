"""/v1/files: the openai SDK's `files.create/list/retrieve/delete/content`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tuneloop.serve.files import serving
from tuneloop.serve.files.protocol import FileDeleted, FileList, FileObject

router = APIRouter()


@router.post("/v1/files")
async def create(request: Request) -> FileObject:
    return await serving.create_file(request)


@router.get("/v1/files")
async def list_(request: Request, purpose: str | None = None, limit: int = 100) -> FileList:
    return await serving.list_files(request, purpose, limit)


@router.get("/v1/files/{file_id}")
async def retrieve(request: Request, file_id: str) -> FileObject:
    return await serving.retrieve_file(request, file_id)


@router.delete("/v1/files/{file_id}")
async def delete(request: Request, file_id: str) -> FileDeleted:
    return await serving.delete_file(request, file_id)


@router.get("/v1/files/{file_id}/content")
async def content(request: Request, file_id: str) -> Response:
    return await serving.file_content(request, file_id)
