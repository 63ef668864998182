"""The store: one root (a local folder or ``s3://bucket/prefix``) behind fsspec.

Every write is atomic, so a reader never sees half a file: locally the bytes go to a
hidden temporary name in the same folder and are renamed into place; on S3 an object
only becomes visible once its (single or multipart) upload completes. Readers list
``part-*`` names only, so a leftover temporary file is never taken for data.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import fsspec
import polars as pl

from infra.retries import STORE

log = logging.getLogger(__name__)
T = TypeVar("T")

#: botocore's and s3fs's own retry loops, switched off: the Store's is the only one.
_S3_NO_RETRIES = {"retries": {"total_max_attempts": 1}}


class StoreError(OSError):
    """The store cannot be reached, read or written; the message names the URI."""


def _permanent(exc: Exception) -> bool:
    """Errors a retry cannot fix: missing objects, refused access, no credentials."""
    name = type(exc).__name__
    return isinstance(exc, FileNotFoundError | PermissionError) or name in (
        "NoCredentialsError",
        "PartialCredentialsError",
        "NoSuchBucket",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    )


def _explain(exc: Exception) -> str:
    if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            f"{exc} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "or give the machine an instance role)"
        )
    return str(exc) or type(exc).__name__


class Store:
    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        protocol = root.split("://", 1)[0] if "://" in root else "file"
        self.is_local = protocol == "file"
        self._sleep = sleep
        options = dict(self.storage_options)
        if protocol in ("s3", "s3a"):
            options["config_kwargs"] = {**_S3_NO_RETRIES, **options.get("config_kwargs", {})}
        self.fs = fsspec.filesystem(protocol, **options)
        if protocol in ("s3", "s3a"):
            self.fs.retries = 1  # one try per call of s3fs's own loop
        self._base = root.split("://", 1)[1] if "://" in root else root
        self._base = self._base.rstrip("/")

    @classmethod
    def from_settings(cls, settings) -> Store:
        return cls(settings.store, settings.storage_options())

    def __repr__(self) -> str:  # storage_options may hold credentials: never show them
        return f"Store({self.root!r})"

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _path(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    def _wrap(self, action: str, rel: str, exc: Exception) -> StoreError:
        return StoreError(f"cannot {action} {self.uri(rel)}: {_explain(exc)}")

    def _retry(self, action: str, rel: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried with backoff on a remote store's transient errors (the budget
        and why it is the only retry of a store call: :mod:`infra.retries`)."""
        delays = () if self.is_local else STORE.delays()
        for attempt in range(len(delays) + 1):
            try:
                return fn()
            except Exception as exc:
                if _permanent(exc) or attempt == len(delays):
                    raise
                log.warning(
                    "%s %s failed (%s); retrying in %.1f s",
                    action,
                    self.uri(rel),
                    type(exc).__name__,
                    delays[attempt],
                )
                self._sleep(delays[attempt])
        raise AssertionError("unreachable")

    def exists(self, rel: str) -> bool:
        try:
            return self._retry("check", rel, lambda: self.fs.exists(self._path(rel)))
        except Exception as exc:  # s3fs raises many kinds; the caller needs one
            raise self._wrap("check", rel, exc) from exc

    def list(self, rel_dir: str, pattern: str = "part-*.parquet") -> list[str]:
        """Relative paths of the files in ``rel_dir`` matching ``pattern``, sorted by name."""
        base = self._path(rel_dir)
        try:
            found = self._retry("list", rel_dir, lambda: self.fs.glob(f"{base}/{pattern}"))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._wrap("list", rel_dir, exc) from exc
        prefix = self._base + "/"
        return sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in found)

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self._retry("read", rel, lambda: self.fs.cat_file(self._path(rel)))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._wrap("read", rel, exc) from exc

    def write_bytes(self, rel: str, data: bytes) -> str:
        path = self._path(rel)
        try:
            if self.is_local:
                _write_local(path, data, os.replace)
            else:
                # One PUT per attempt: an object exists whole or not at all.
                self._retry("write", rel, lambda: self.fs.pipe_file(path, data))
        except Exception as exc:
            raise self._wrap("write", rel, exc) from exc
        return self.uri(rel)

    def create(self, rel: str, data: bytes) -> bool:
        """Writes ``rel`` whole unless it exists (False then): atomic and exclusive, so two
        writers racing for one name (a lock) never both win."""
        path = self._path(rel)
        try:
            if self.is_local:
                _write_local(path, data, os.link)  # link fails if the name exists
            else:
                # If-None-Match: *, tried once: a retry could meet its own first write.
                self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except Exception as exc:
            raise self._wrap("create", rel, exc) from exc
        return True

    def delete(self, rel: str) -> None:
        try:
            self._retry("delete", rel, lambda: self.fs.rm_file(self._path(rel)))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._wrap("delete", rel, exc) from exc

    def write_parquet(self, rel: str, df: pl.DataFrame) -> str:
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=True)
        return self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_bytes(rel)), columns=columns)

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def check_writable(self) -> None:
        """Fail early, naming the store, rather than after hours of embedding."""
        probe = f"_probe/{uuid.uuid4().hex}"
        self.write_bytes(probe, b"ok")
        self.delete(probe)


def _write_local(path: str, data: bytes, place: Callable[[str, str], None]) -> None:
    """Writes a hidden temporary file beside ``path``, synced, then ``place(tmp, path)``
    (rename to replace, link to create exclusively): a reader never sees half a file."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
