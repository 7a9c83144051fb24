"""Bytes in and out of the lake's storage (a local folder or S3), atomically, with one-line errors.

Readers must never see half a file. Locally every object is written to a hidden temporary file in
the same folder (``.<name>.<random>.tmp``: no ``*.parquet`` glob matches it and pyarrow datasets
skip dot files), fsync'd and renamed over the final name, which POSIX makes atomic; the folder is
fsync'd after the rename. Files written together (:meth:`Storage.put_many`) share that work as a
group commit, about half the cost of one by one (BENCHMARKS.md). On S3 the complete object is
handed to the client in one write; with ``allow_delayed_open`` (set by :func:`s3_filesystem`; pass
it too when handing in a ready filesystem) pyarrow sends objects up to its part size (10 MiB; a
status snapshot is ~65 KB) as one PUT, which S3 applies atomically, and larger ones as a multipart
upload, which S3 shows only once complete. Storage errors become :class:`LakeError` with the cause
and the fix.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from citibikes.errors import first_line
from citibikes.lake.errors import LakeError

BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
URI_HINT = "set CITIBIKES_LAKE_URI to a folder, file:///folder or s3://bucket/prefix"


@dataclass(frozen=True)
class LakeLocation:
    """Where the lake is: ``scheme`` ``file`` or ``s3``, and the path inside the filesystem
    (an absolute folder, or ``bucket/prefix`` without slashes at either end)."""

    scheme: str
    path: str

    @property
    def bucket(self) -> str | None:
        return self.path.split("/", 1)[0] if self.scheme == "s3" else None

    @property
    def uri(self) -> str:
        return f"s3://{self.path}" if self.scheme == "s3" else self.path


def parse_lake_uri(uri: str) -> LakeLocation:
    """A local path, ``file:///path`` or ``s3://bucket/prefix``; anything else is a LakeError."""
    if not isinstance(uri, str) or not uri.strip():
        raise LakeError(f"the lake URI is empty; {URI_HINT}")
    uri = uri.strip()
    match = URI_SCHEME.match(uri)
    if match is None:
        return LakeLocation("file", str(Path(uri).expanduser().resolve()))
    scheme = match.group(1).lower()
    parts = urlsplit(uri)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LakeError(f"lake URI {uri!r} names host {parts.netloc!r}; write file:///absolute/path (three slashes)")
        return LakeLocation("file", str(Path(parts.path).resolve()))
    if scheme in ("s3", "s3a"):
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not bucket:
            raise LakeError(f"lake URI {uri!r} has no bucket; write s3://bucket/prefix")
        if not BUCKET_PATTERN.match(bucket):
            raise LakeError(
                f"lake URI {uri!r}: {bucket!r} is not a valid S3 bucket name; use 3-63 lowercase letters, digits, '.' or '-'"
            )
        return LakeLocation("s3", f"{bucket}/{prefix}" if prefix else bucket)
    raise LakeError(f"lake URI {uri!r} has unsupported scheme {scheme!r}; {URI_HINT}")


def s3_filesystem(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem; ``endpoint_url`` (``http://host:port``) selects an S3-compatible
    server with path-style addressing. Without keys the standard AWS environment variables,
    config files and instance roles apply."""
    options: dict[str, object] = {
        "region": region or "us-east-1",
        "connect_timeout": 5,
        "request_timeout": 60,
        "allow_delayed_open": True,  # single PUT for objects up to 10 MiB (see the module doc)
    }
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LakeError(
                f"S3 endpoint {endpoint_url!r} is not an http(s) URL; set CITIBIKES_S3_ENDPOINT_URL like http://127.0.0.1:7070"
            )
        options.update(scheme=parts.scheme, endpoint_override=parts.netloc)
    if (access_key is None) != (secret_key is None):
        raise LakeError("S3 access key and secret key must be given together; pass both or neither")
    if access_key is not None:
        options.update(access_key=access_key, secret_key=secret_key)
        if session_token:  # temporary credentials (roles, SSO) are useless without it
            options["session_token"] = session_token
    try:
        return pafs.S3FileSystem(**options)
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot set up the S3 client: {first_line(exc)}; check the S3 settings") from None



@dataclass
class Storage:
    """Keys (``a/b/c.parquet``, relative to the lake root) mapped onto a pyarrow filesystem."""

    filesystem: pafs.FileSystem
    location: LakeLocation
    endpoint: str | None = None

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, key: str = "") -> str:
        """The filesystem path of a key (what pyarrow's ``filesystem=`` arguments expect)."""
        return f"{self.location.path}/{key}" if key else self.location.path

    def uri(self, key: str = "") -> str:
        """The URI of a key as other tools (DuckDB, Athena) name it."""
        return f"{self.location.uri}/{key}" if key else self.location.uri

    def error(self, exc: BaseException, what: str) -> LakeError:
        """A storage client's error as a one-line LakeError naming cause and fix."""
        text, where, location = str(exc), self.endpoint or "S3", self.location
        if isinstance(exc, PermissionError) and location.scheme == "file":
            return LakeError(f"{what}: permission denied in {location.path}; make the folder writable or choose another lake URI")
        if location.scheme != "s3":
            return LakeError(f"{what}: {first_line(exc)}; check the lake folder {location.path}")
        if re.search(r"NETWORK_CONNECTION|curlCode|Could not connect|Couldn't connect|resolve host|timed out", text, re.I):
            return LakeError(
                f"{what}: S3 endpoint {where} is unreachable; start the S3 server or fix CITIBIKES_S3_ENDPOINT_URL"
            )
        if re.search(r"NO_SUCH_BUCKET|NoSuchBucket", text):
            return LakeError(f"{what}: bucket {location.bucket!r} does not exist at {where}; create it or fix the lake URI")
        if re.search(
            r"ACCESS_DENIED|AccessDenied|SIGNATURE_DOES_NOT_MATCH|InvalidAccessKeyId|INVALID_ACCESS_KEY|"
            r"UserNotFound|ExpiredToken|HTTP status 40[13]",
            text,
        ):
            return LakeError(f"{what}: S3 at {where} refused the credentials for bucket {location.bucket!r}; check "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the keys of the Airflow connection)")
        return LakeError(f"{what}: {first_line(exc)}; check the S3 settings and the server at {where}")

    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` as the whole object ``key``, replacing it atomically; returns the key."""
        return self.put_many([(key, data)])[0]

    def put_many(self, files: Sequence[tuple[str, bytes]]) -> list[str]:
        """:meth:`put` each ``(key, data)``, in order; locally as one group commit (see the module doc).

        Each file is replaced atomically; when one fails (a one-line LakeError naming it), those
        before it may be written, and nothing of it or those after it is (no temporary file is left).
        """
        if self.local:
            self._put_local(files)
        else:
            for key, data in files:
                try:
                    with self.filesystem.open_output_stream(self.path(key), compression=None) as out:
                        out.write(data)
                except OSError as exc:
                    raise self.error(exc, f"cannot write {self.uri(key)}") from None
        return [key for key, _ in files]

    def _put_local(self, files: Sequence[tuple[str, bytes]]) -> None:
        """The group commit: each file to a temporary file beside its path, all fsync'd, each renamed
        over its path in order, then each folder fsync'd once (the renames are durable on return).
        Writing every file before the first fsync lets the file system commit them together."""
        opened: list[tuple[str, Path, Path, BinaryIO]] = []  # key, temporary, path, open temporary file
        renamed = 0
        key = files[0][0] if files else ""  # the file being worked on, named by the error
        try:
            for key, data in files:
                path = Path(self.path(key))
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
                out = open(temporary, "wb")
                opened.append((key, temporary, path, out))
                out.write(data)
                out.flush()
            for key, _, _, out in opened:
                os.fsync(out.fileno())
                out.close()
            for key, temporary, path, _ in opened:
                os.replace(temporary, path)
                renamed += 1
            for folder, key in {path.parent: key for key, _, path, _ in opened}.items():
                fsync_folder(folder)
        except OSError as exc:
            raise self.error(exc, f"cannot write {self.uri(key)}") from None
        finally:
            for _, temporary, _, out in opened[renamed:]:
                out.close()
                temporary.unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            with self.filesystem.open_input_stream(self.path(key), compression=None) as source:
                return source.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if self.local and Path(self.path(key)).is_dir():
                raise LakeError(f"cannot read {self.uri(key)}: it is a folder, not a file; remove it") from None
            raise self.error(exc, f"cannot read {self.uri(key)}") from None

    def delete_tree(self, prefix: str) -> None:
        """Remove everything under ``prefix`` (a folder locally, all keys below it on S3); no error if absent."""
        try:
            self.filesystem.delete_dir(self.path(prefix))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self.error(exc, f"cannot delete {self.uri(prefix)}") from None

    def list(self, prefix: str) -> list[str]:
        """Keys of the data files below ``prefix`` (hidden temporary files excluded), sorted."""
        selector = pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
        try:
            infos = self.filesystem.get_file_info(selector)
        except OSError as exc:
            raise self.error(exc, f"cannot list {self.uri(prefix)}") from None
        root = self.location.path.rstrip("/") + "/"
        return sorted(
            info.path.removeprefix(root)
            for info in infos
            if info.type == pafs.FileType.File and not info.base_name.startswith(".")
        )

    def check_access(self) -> None:
        """Fail now, with the cause and the fix, if the lake cannot be used (not at the first write)."""
        if self.local:
            folder = Path(self.location.path)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise LakeError(f"lake folder {folder} is a file; remove it or choose another lake URI") from None
            except PermissionError:
                raise LakeError(f"cannot create lake folder {folder}: permission denied; choose a writable lake URI") from None
            except OSError as exc:
                raise LakeError(f"cannot create lake folder {folder}: {first_line(exc)}; choose another lake URI") from None
            if not os.access(folder, os.W_OK):
                raise LakeError(f"lake folder {folder} is not writable; fix its permissions or choose another lake URI")
            return
        try:
            self.filesystem.get_file_info(pafs.FileSelector(self.location.path, allow_not_found=True))
            bucket_info = self.filesystem.get_file_info(self.location.bucket)
        except OSError as exc:
            raise self.error(exc, f"cannot open lake {self.uri()}") from None
        if bucket_info.type == pafs.FileType.NotFound:
            raise LakeError(
                f"cannot open lake {self.uri()}: bucket {self.location.bucket!r} does not exist at "
                f"{self.endpoint or 'S3'} (or the access key is unknown there); create the bucket or fix the lake URI"
            )


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash after it cannot bring back the old name)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
