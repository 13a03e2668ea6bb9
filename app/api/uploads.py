"""Multipart uploads streamed straight into the artifact store.

Starlette would first spool a whole request body to the system temp directory and
only then run the endpoint, so a size limit could only be applied after the bytes
had arrived. This parser writes the file part into the store as it arrives, counting
and hashing, and answers 413 the moment the limit is passed, removing what it wrote.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.body_limits import FRAMING_ALLOWANCE, declared_length
from app.errors import AppError, InvalidInput
from app.ids import new_id
from app.services.datasets import Upload, upload_too_large
from app.storage import Storage

# The most bytes of one form field, and of one part's headers.
MAX_FIELD_BYTES = 64 * 1024


def multipart_body(
    file_description: str,
    *,
    file_field: str = "file",
    many: bool = False,
    required: Sequence[str] = (),
    **fields: dict[str, Any],
) -> dict[str, Any]:
    """The OpenAPI request body of an upload endpoint: one file, or (`many`) several,
    and the text `fields`, of which `required` (beside the file) must be sent.
    (A multipart body here also tells app/body_limits.py that the route takes uploads.)"""
    unknown = set(required) - set(fields)
    if unknown:
        raise ValueError(f"required names fields the body does not have: {sorted(unknown)}")
    binary = {"type": "string", "format": "binary"}
    file_schema: dict[str, Any] = (
        {"type": "array", "items": binary, "minItems": 1, "description": file_description}
        if many
        else {**binary, "description": file_description}
    )
    properties: dict[str, Any] = {file_field: file_schema, **fields}
    schema = {"type": "object", "required": [file_field, *required], "properties": properties}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


F = TypeVar("F", bound=BaseModel)


@dataclass
class StreamedForm(Generic[F]):
    fields: F
    upload: Upload
    filename: str | None

    def discard(self) -> None:
        """Remove the uploaded file (the request failed after it was stored)."""
        self.upload.path.unlink(missing_ok=True)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_field: bytes = b""
    header_value: bytes = b""
    buffer: bytearray = field(default_factory=bytearray)


class _Collector:
    def __init__(self, storage: Storage, max_bytes: int, file_field: str) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.upload: Upload | None = None
        self.filename: str | None = None
        self.part = _Part()
        self.out: IO[bytes] | None = None
        self.path = storage.tmp_dir() / f"upload-{new_id('up')}"
        self.digest = hashlib.sha256()
        self.size = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda d, s, e: self._add("header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("header_value", d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        value = getattr(self.part, attr) + data
        if len(value) > MAX_FIELD_BYTES:
            raise InvalidInput(
                f"A part header of the form is longer than {MAX_FIELD_BYTES} bytes.",
                param=self.file_field,
            )
        setattr(self.part, attr, value)

    def part_begin(self) -> None:
        self.part = _Part()

    def header_end(self) -> None:
        self.part.headers.append((self.part.header_field.lower(), self.part.header_value))
        self.part.header_field, self.part.header_value = b"", b""

    def headers_finished(self) -> None:
        disposition = dict(self.part.headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        self.part.filename = (
            None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        )
        if self.part.name == self.file_field and self.part.filename is not None:
            if self.out is not None:
                raise InvalidInput(
                    f"Send one `{self.file_field}` part only.", param=self.file_field
                )
            self.out = self.path.open("xb")
            self.filename = self.part.filename

    def part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.name == self.file_field and self.out is not None:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise upload_too_large(self.max_bytes)
            self.digest.update(chunk)
            self.out.write(chunk)
            return
        self.part.buffer += chunk
        if len(self.part.buffer) > MAX_FIELD_BYTES:
            raise InvalidInput(
                f"Form field `{self.part.name}` is longer than {MAX_FIELD_BYTES} bytes.",
                param=self.part.name or None,
            )

    def part_end(self) -> None:
        if self.part.name == self.file_field and self.out is not None and not self.out.closed:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            self.upload = Upload(self.path, self.size, self.digest.hexdigest())
        elif self.part.filename is None and self.part.name:
            try:
                self.fields[self.part.name] = self.part.buffer.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"Form field `{self.part.name}` is not valid UTF-8 text.",
                    param=self.part.name,
                ) from None

    def discard(self) -> None:
        if self.out is not None:
            self.out.close()
        self.path.unlink(missing_ok=True)


async def stream_form(
    request: Request, storage: Storage, max_bytes: int, schema: type[F], file_field: str = "file"
) -> StreamedForm[F]:
    """Parse a multipart body, writing its file part into the store's temp directory and
    validating the other fields as `schema` (a 422 naming the field removes the file)."""
    boundary = _multipart_boundary(request, file_field)
    # app/body_limits.py holds every upload to GRAFT_MAX_UPLOAD_BYTES; max_bytes may be less.
    declared = declared_length(request.headers)
    if declared is not None and declared > max_bytes + FRAMING_ALLOWANCE:
        raise upload_too_large(max_bytes)
    collector = _Collector(storage, max_bytes, file_field)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ParseError as exc:
        collector.discard()
        raise AppError(
            f"The multipart body is malformed ({exc}); send multipart/form-data with a "
            f"`{file_field}` part, as curl -F or any HTTP library's file upload does.",
            code="invalid_multipart",
            status_code=400,
        ) from exc
    except BaseException:
        collector.discard()
        raise
    if collector.upload is None:
        collector.discard()
        raise InvalidInput(f"Missing required field `{file_field}`.", param=file_field)
    try:
        fields = validate_fields(schema, collector.fields)
    except RequestValidationError:
        collector.discard()
        raise
    return StreamedForm(fields, collector.upload, collector.filename)


def validate_fields(schema: type[F], fields: dict[str, Any]) -> F:
    """The form's text fields as `schema`; an invalid one is a 422 naming it."""
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def _multipart_boundary(request: Request, file_field: str) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidInput(
            f"Send multipart/form-data with a `{file_field}` part.", param=file_field
        )
    return bytes(boundary)


@dataclass
class FilesForm(Generic[F]):
    fields: F
    files: list[UploadFile]
    form: FormData

    async def close(self) -> None:
        await self.form.close()


async def read_files_form(
    request: Request, schema: type[F], *, file_field: str, max_files: int
) -> FilesForm[F]:
    """Parse a multipart body of small files (Starlette's parser: they are spooled to
    temporary files) with `schema`'s text fields. Call it after authentication, so a
    client without a key never makes the server read a body."""
    _multipart_boundary(request, file_field)
    try:
        form = await request.form(
            max_files=max_files,
            max_fields=len(schema.model_fields) + 1,
            max_part_size=MAX_FIELD_BYTES,
        )
    except StarletteHTTPException as exc:
        if exc.status_code != 400:  # a body over its limit (413) stays as it is
            raise
        detail = str(exc.detail)
        if detail.startswith("Too many files"):
            detail = f"send at most {max_files} `{file_field}` parts per request."
        raise InvalidInput(f"The form could not be read: {detail}", param=file_field) from exc
    files: list[UploadFile] = []
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name != file_field:
            fields[name] = value
        elif isinstance(value, UploadFile):
            files.append(value)
        else:
            await form.close()
            raise InvalidInput(
                f"Send each `{file_field}` as a file part (with a filename).", param=file_field
            )
    try:
        return FilesForm(validate_fields(schema, fields), files, form)
    except RequestValidationError:
        await form.close()
        raise
