"""The store: one root (a local folder or ``s3://bucket/prefix``) behind fsspec.

Every write is atomic, so a reader never sees half a file: locally the bytes go to a
hidden temporary name in the same folder and are renamed into place; on S3 an object
only becomes visible once its (single or multipart) upload completes. Readers list
``part-*`` names only, so a leftover temporary file is never taken for data.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import polars as pl


class StoreError(OSError):
    """The store cannot be reached, read or written; the message names the URI."""


class Store:
    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None):
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        protocol = root.split("://", 1)[0] if "://" in root else "file"
        self.is_local = protocol == "file"
        self.fs = fsspec.filesystem(protocol, **self.storage_options)
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
        return StoreError(f"cannot {action} {self.uri(rel)}: {exc}")

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.exists(self._path(rel))
        except Exception as exc:  # s3fs raises many kinds; the caller needs one
            raise self._wrap("check", rel, exc) from exc

    def list(self, rel_dir: str, pattern: str = "part-*.parquet") -> list[str]:
        """Relative paths of the files in ``rel_dir`` matching ``pattern``, sorted by name."""
        base = self._path(rel_dir)
        try:
            found = self.fs.glob(f"{base}/{pattern}")
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._wrap("list", rel_dir, exc) from exc
        prefix = self._base + "/"
        return sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in found)

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(rel))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._wrap("read", rel, exc) from exc

    def write_bytes(self, rel: str, data: bytes) -> str:
        path = self._path(rel)
        try:
            if self.is_local:
                folder = os.path.dirname(path)
                os.makedirs(folder, exist_ok=True)
                tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            else:
                self.fs.pipe_file(path, data)
        except Exception as exc:
            raise self._wrap("write", rel, exc) from exc
        return self.uri(rel)

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self._path(rel))
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
