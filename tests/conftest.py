"""Test-wide settings. Set before torch/triton are imported anywhere."""

import os
import shutil
import tempfile

# Triton runs through its interpreter on machines without a GPU; on a GPU machine
# the real compiler runs, so `pytest -m gpu` checks the kernels as they ship.
if not (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# One cache for the session: the embedding model is exported once, not once a test.
os.environ.setdefault("SAE_CACHE_DIR", tempfile.mkdtemp(prefix="sae-cache-"))

from pathlib import Path

import pytest

from sae.data import sparse_dictionary_data


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own SAE_HOME, so none touches another's (or the user's) state."""
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "sae_home"))
    monkeypatch.delenv("SAE_STORE", raising=False)


@pytest.fixture
def make_data():
    return sparse_dictionary_data


@pytest.fixture(scope="session")
def arxiv_data() -> Path:
    """The shared real arXiv sample (``SAE_ARXIV_DATA``, default ``../shared/data/arxiv``)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv"
    path = Path(os.environ.get("SAE_ARXIV_DATA", default))
    if not (path / "fixtures").is_dir():
        pytest.skip(f"arXiv sample not found at {path}; set SAE_ARXIV_DATA")
    return path


@pytest.fixture(scope="session")
def cs_lg_head(arxiv_data, tmp_path_factory) -> Path:
    """The shared sample's first 400 cs.LG records as a source file of their own (in the
    session's temporary folder): a sweep that embeds a hundred papers need not ingest and
    validate all 19,670 (6 s of CPU each time)."""
    import gzip
    import itertools

    path = tmp_path_factory.mktemp("sources") / "cs_lg_head.jsonl.gz"
    with gzip.open(arxiv_data / "cs_lg.jsonl.gz", "rt") as src, gzip.open(path, "wt") as dst:
        dst.writelines(itertools.islice(src, 400))
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto) on 127.0.0.1, shared by the session."""
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_store_root(s3_endpoint, monkeypatch):
    """An empty bucket; SAE_STORE and SAE_S3_ENDPOINT_URL point at it. Returns the root URI."""
    import urllib.request

    import boto3
    import s3fs

    urllib.request.urlopen(urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST"))
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="sae-test")
    root = "s3://sae-test/store"
    monkeypatch.setenv("SAE_STORE", root)
    monkeypatch.setenv("SAE_S3_ENDPOINT_URL", s3_endpoint)
    return root


@pytest.fixture(params=["local", "s3"])
def store(request):
    """The settings' store, once as a local folder under SAE_HOME and once on moto S3."""
    from infra.settings import get_settings
    from infra.store import Store

    if request.param == "s3":
        request.getfixturevalue("s3_store_root")
    return Store.from_settings(get_settings())


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server on 127.0.0.1 for the session; returns its API URL."""
    from infra.local_stack import start_prefect_server
    from infra.settings import Settings

    home = tmp_path_factory.mktemp("prefect_server_home")
    # Healthy or exited ends the wait; no ceiling shorter than the first test's own timeout,
    # which a server booting on a loaded machine can approach.
    server = start_prefect_server(Settings(home=home)).wait_healthy(600)
    yield server.api_url
    server.stop()


@pytest.fixture
def prefect_env(prefect_api, monkeypatch):
    """PREFECT_API_URL points at the session's server, for this process and its children."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield prefect_api


@pytest.fixture
def arxiv_stand_in(monkeypatch):
    """The local arXiv stand-in (tests/tasks/arxiv_server.py) that harvests go to, with a
    near-zero interval between requests."""
    from tests.tasks.arxiv_server import ArxivServer

    with ArxivServer() as running:
        monkeypatch.setenv("SAE_HARVEST_API_URL", running.api_url)
        monkeypatch.setenv("SAE_HARVEST_OAI_URL", running.oai_url)
        monkeypatch.setenv("SAE_HARVEST_MIN_INTERVAL_S", "0.02")
        yield running
