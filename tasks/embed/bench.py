"""Embedding throughput: the default embedder vs a plain ``SentenceTransformer.encode``.

    python -m tasks.embed.bench [--n 1000] [--data PATH] [--repeats 1] [--device auto]
                                [--precision auto] [--batch-size N]

Both embed the texts ``paper_text(title, abstract)`` of the first ``--n`` records of
``cs_lg.jsonl.gz`` with the bundled all-MiniLM-L6-v2, on the same cores (the plain encode
runs with the thread count ours uses, its defaults otherwise: batch 32, the folder's
max_seq_length). After a warm-up of each, runs alternate plain/ours ``--repeats`` times and
the medians are printed, with the min cosine between the two embeddings of each text.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.embed.embedders import paper_text

SAMPLE_FILE = "cs_lg.jsonl.gz"


@dataclass(frozen=True)
class BenchResult:
    n: int
    ours_per_s: float
    plain_per_s: float
    min_cosine: float
    precision: str
    threads: int
    device: str
    max_tokens: int

    @property
    def speedup(self) -> float:
        return self.ours_per_s / self.plain_per_s


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
    """Time ours and the plain encode on ``texts``; medians over ``repeats`` alternating runs."""
    import torch
    from sentence_transformers import SentenceTransformer

    from tasks.embed.embedders import make_embedder
    from tasks.embed.local import MeanPoolEmbedder, bundled_minilm_path

    ours = make_embedder("minilm", device=device, precision=precision, batch_size=batch_size)
    assert isinstance(ours, MeanPoolEmbedder)
    plain = SentenceTransformer(str(bundled_minilm_path()), device=ours.device)
    if ours.device == "cpu":
        torch.set_num_threads(ours.threads)  # the same cores for both

    def run_plain() -> np.ndarray:
        return plain.encode(texts, normalize_embeddings=True)

    def run_ours() -> np.ndarray:
        return ours.embed(texts)

    warm = texts[: ours.batch_size]
    plain.encode(warm, normalize_embeddings=True)
    ours.embed(warm)
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    out: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for label, fn in (("plain", run_plain), ("ours", run_ours)):
            t0 = time.perf_counter()
            out[label] = np.asarray(fn(), dtype=np.float32)
            times[label].append(time.perf_counter() - t0)
    cosines = np.sum(out["ours"] * out["plain"], axis=1)
    return BenchResult(
        n=len(texts),
        ours_per_s=len(texts) / statistics.median(times["ours"]),
        plain_per_s=len(texts) / statistics.median(times["plain"]),
        min_cosine=float(cosines.min()),
        precision=ours.precision,
        threads=ours.threads,
        device=ours.device
        + (f" ({torch.cuda.get_device_name(ours.device)})" if ours.device != "cpu" else ""),
        max_tokens=ours.max_tokens,
    )


def format_result(r: BenchResult, source: str, repeats: int) -> str:
    rows = [
        ("plain_st_abstracts_per_s", f"{r.plain_per_s:.2f}"),
        ("ours_abstracts_per_s", f"{r.ours_per_s:.2f}"),
        ("speedup", f"{r.speedup:.2f}"),
        ("min_cosine", f"{r.min_cosine:.6f}"),
        ("max_cosine_diff", f"{1.0 - r.min_cosine:.2e}"),
        ("precision", r.precision),
        ("threads", str(r.threads)),
        ("device", r.device),
    ]
    head = (
        f"# {r.n} abstracts of {source}, max {r.max_tokens} tokens, "
        f"median of {repeats} run(s); plain = SentenceTransformer.encode, ours = minilm"
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
