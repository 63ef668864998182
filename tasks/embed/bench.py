"""Embedding throughput: the default embedder's backends vs a plain ``SentenceTransformer.encode``.

    python -m tasks.embed.bench [--n 1000] [--data PATH] [--repeats 1] [--device auto]
                                [--precision auto] [--batch-size N]

All embed the texts ``paper_text(title, abstract)`` of the first ``--n`` records of
``cs_lg.jsonl.gz`` with the bundled all-MiniLM-L6-v2, on the same cores (the plain encode
runs with the thread count ours uses, its defaults otherwise: batch 32, the folder's
max_seq_length). On CPU both backends run (torch at ``--precision``, OpenVINO in fp32);
on CUDA only torch. After a warm-up of each, runs alternate plain/torch/openvino ``--repeats``
times and the medians are printed, with each backend's min cosine to the plain encode, the
backend "auto" picks here, and the CPU's model and the flags that decide it.

``--data`` is the sample folder (or the .jsonl.gz itself); default ``$SAE_ARXIV_DATA``, else
``<repo>/../shared/data/arxiv``. On CUDA the plain encode runs on the GPU too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.embed.embedders import paper_text

SAMPLE_FILE = "cs_lg.jsonl.gz"


#: The CPU flags that decide how fast each backend runs (/proc/cpuinfo names).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class BenchResult:
    n: int
    per_s: dict[str, float]  # plain, and each backend run
    min_cosine: dict[str, float]  # each backend's, to the plain encode
    backend: str  # what "auto" picks here
    precision: str  # of the torch backend
    threads: int
    device: str
    max_tokens: int
    cpu: str
    cpu_flags: str

    @property
    def speedup(self) -> float:
        return self.per_s[self.backend] / self.per_s["plain_st"]


def cpu_description() -> tuple[str, str]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has ("-" where unknown)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return "-", "-"
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in info.splitlines())
    )
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", "-"), " ".join(f for f in CPU_FLAGS if f in flags) or "-"


def default_data_path() -> Path:
    env = os.environ.get("SAE_ARXIV_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "arxiv"


def load_texts(data: Path, n: int) -> list[str]:
    """``paper_text`` of the first ``n`` records with a title and an abstract."""
    path = data / SAMPLE_FILE if data.is_dir() else data
    if not path.is_file():
        raise SystemExit(f"no sample at {path}; pass --data or set SAE_ARXIV_DATA")
    texts: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("title") and record.get("abstract"):
                texts.append(paper_text(record["title"], record["abstract"]))
                if len(texts) == n:
                    break
    if len(texts) < n:
        raise SystemExit(f"{path} has only {len(texts)} usable records, asked for {n}")
    return texts


def run_bench(
    texts: list[str],
    *,
    device: str = "auto",
    repeats: int = 1,
    precision: str = "auto",
    batch_size: int | None = None,
) -> BenchResult:
    """Time the plain encode and each backend on ``texts``; medians over ``repeats`` rounds."""
    import torch
    from sentence_transformers import SentenceTransformer

    from tasks.embed.embedders import make_embedder
    from tasks.embed.local import MeanPoolEmbedder, bundled_minilm_path

    def ours(backend: str) -> MeanPoolEmbedder:
        e = make_embedder(
            "minilm", device=device, precision=precision, batch_size=batch_size, backend=backend
        )
        assert isinstance(e, MeanPoolEmbedder)
        return e

    auto = ours("auto")
    backends = {"torch": auto if auto.backend == "torch" else ours("torch")}
    if backends["torch"].device == "cpu":
        backends["openvino"] = auto if auto.backend == "openvino" else ours("openvino")
    torch_path = backends["torch"]
    plain = SentenceTransformer(str(bundled_minilm_path()), device=torch_path.device)
    if torch_path.device == "cpu":
        torch.set_num_threads(torch_path.threads)  # the same cores for all

    runs: dict[str, Callable[[list[str]], np.ndarray]] = {
        "plain_st": lambda t: plain.encode(t, normalize_embeddings=True)
    }
    runs |= {name: e.embed for name, e in backends.items()}
    for fn in runs.values():
        fn(texts[: torch_path.batch_size])
    times: dict[str, list[float]] = {name: [] for name in runs}
    out: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            out[name] = np.asarray(fn(texts), dtype=np.float32)
            times[name].append(time.perf_counter() - t0)
    cpu, flags = cpu_description()
    return BenchResult(
        n=len(texts),
        per_s={name: len(texts) / statistics.median(t) for name, t in times.items()},
        min_cosine={
            name: float(np.sum(out[name] * out["plain_st"], axis=1).min()) for name in backends
        },
        backend=auto.backend,
        precision=torch_path.precision,
        threads=torch_path.threads,
        device=torch_path.device
        + (
            f" ({torch.cuda.get_device_name(torch_path.device)})"
            if torch_path.device != "cpu"
            else ""
        ),
        max_tokens=torch_path.max_tokens,
        cpu=cpu,
        cpu_flags=flags,
    )


def format_result(r: BenchResult, source: str, repeats: int) -> str:
    rows = [(f"{name}_abstracts_per_s", f"{v:.2f}") for name, v in r.per_s.items()]
    for name, cos in r.min_cosine.items():
        rows += [
            (f"{name}_speedup", f"{r.per_s[name] / r.per_s['plain_st']:.2f}"),
            (f"{name}_min_cosine", f"{cos:.6f}"),
        ]
    rows += [
        ("auto_backend", r.backend),
        ("auto_speedup", f"{r.speedup:.2f}"),
        ("torch_precision", r.precision),
        ("threads", str(r.threads)),
        ("device", r.device),
        ("cpu", r.cpu),
        ("cpu_flags", r.cpu_flags),
    ]
    head = (
        f"# {r.n} abstracts of {source}, max {r.max_tokens} tokens, median of {repeats} "
        "run(s); plain = SentenceTransformer.encode, torch / openvino = minilm's backends"
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join([head, *(f"{k:<{width}}  {v}" for k, v in rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="abstracts to embed")
    p.add_argument("--data", type=Path, default=None, help="sample folder or .jsonl.gz")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each (median)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", help="ours: auto, fp32, bf16, fp16 (CUDA)")
    p.add_argument("--batch-size", type=int, default=None, help="ours (default: by device)")
    a = p.parse_args(argv)
    if a.n < 1 or a.repeats < 1:
        p.error("--n and --repeats must be >= 1")
    data = a.data or default_data_path()
    texts = load_texts(data, a.n)
    result = run_bench(
        texts, device=a.device, repeats=a.repeats, precision=a.precision, batch_size=a.batch_size
    )
    print(format_result(result, data.name if data.is_file() else SAMPLE_FILE, a.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
