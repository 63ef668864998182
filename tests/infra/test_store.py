"""The store behaves the same on a local folder and on S3 (a real moto server)."""

import os

import polars as pl
import pytest

from infra.store import Store, StoreError


def test_round_trips_bytes_json_and_parquet(store):
    store.write_bytes("a/b.bin", b"\x00\x01")
    assert store.read_bytes("a/b.bin") == b"\x00\x01"
    store.write_json("w/x.json", {"newest": "2026-01-02"})
    assert store.read_json("w/x.json") == {"newest": "2026-01-02"}
    df = pl.DataFrame({"id": ["1", "2"], "v": pl.Series([[1.0, 2.0], [3.0, 4.0]])}).cast(
        {"v": pl.Array(pl.Float32, 2)}
    )
    store.write_parquet("t/part-1.parquet", df)
    assert store.read_parquet("t/part-1.parquet").equals(df)


def test_lists_parts_sorted_and_ignores_other_names(store):
    for name in ("part-2.parquet", "part-1.parquet", "_manifest.parquet", "notes.txt"):
        store.write_bytes(f"d/{name}", b"x")
    assert store.list("d") == ["d/part-1.parquet", "d/part-2.parquet"]
    assert store.list("missing") == []


def test_missing_file_is_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope.json")
    assert not store.exists("nope.json")


def test_overwrite_replaces_whole_file(store):
    store.write_bytes("f.bin", b"old contents, longer")
    store.write_bytes("f.bin", b"new")
    assert store.read_bytes("f.bin") == b"new"


def test_local_write_leaves_no_temporary_files_on_failure(tmp_path, monkeypatch):
    store = Store(str(tmp_path))

    def broken_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError, match="disk went away"):
        store.write_bytes("d/part-1.parquet", b"data")
    assert os.listdir(tmp_path / "d") == []


def test_unwritable_local_store_is_named(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    store = Store(str(tmp_path / "file" / "store"))
    with pytest.raises(StoreError, match=r"cannot write .*file/store"):
        store.check_writable()


def test_s3_bucket_that_does_not_exist_is_named(s3_store_root, s3_endpoint):
    store = Store("s3://no-such-bucket/x", {"client_kwargs": {"endpoint_url": s3_endpoint}})
    with pytest.raises(StoreError, match="no-such-bucket"):
        store.check_writable()


def test_repr_never_shows_storage_options():
    store = Store("s3://b/p", {"key": "AKIASECRET", "secret": "hunter2"})
    assert "SECRET" not in repr(store) and "hunter2" not in repr(store)


class _FlakyS3:
    """An S3 stand-in that answers 503 ``failures`` times, then 200 with ``body``."""

    def __init__(self, failures: int, body: bytes = b"ok"):
        import http.server
        import threading

        stub = self
        self.failures, self.body, self.requests, self.methods = failures, body, 0, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                stub.methods.append(self.command)
                stub.requests += 1
                ok = stub.requests > stub.failures
                payload = stub.body if ok else b""
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def do_HEAD(self):
                self.do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def store(self, sleeps: list) -> Store:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        options = {"client_kwargs": {"endpoint_url": self.endpoint}, "key": "k", "secret": "s"}
        return Store("s3://flaky/store", options, sleep=sleeps.append)


@pytest.fixture
def flaky_s3():
    stubs: list[_FlakyS3] = []
    yield lambda failures: stubs.append(_FlakyS3(failures)) or stubs[-1]
    for stub in stubs:
        stub.server.shutdown()


def test_s3_hiccup_is_retried_by_the_store_alone(flaky_s3):
    from infra.retries import STORE

    stub, sleeps = flaky_s3(2), []
    assert stub.store(sleeps).read_bytes("part-0.bin") == b"ok"
    # The store waited out both 503s: botocore (five tries by default) did not retry them.
    assert sleeps == list(STORE.delays()[:2])


def test_s3_outage_gives_up_after_the_store_budget_naming_the_uri(flaky_s3):
    from infra.retries import STORE

    stub, sleeps = flaky_s3(100), []
    with pytest.raises(StoreError, match=r"s3://flaky/store/part-0\.bin"):
        stub.store(sleeps).read_bytes("part-0.bin")
    # One request per try: not botocore's five per call times s3fs's and the store's tries.
    assert stub.requests == STORE.retries + 1
    assert sleeps == list(STORE.delays()) and sum(sleeps) == STORE.worst_wait_s
