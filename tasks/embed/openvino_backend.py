"""The bundled MiniLM on OpenVINO: a CPU path that needs no native bf16.

The encoder, mean pooling and L2 norm are written out below as plain tensor ops (the BERT
layout: embeddings, then per layer self-attention and a GELU feed-forward, each closed by a
residual LayerNorm), exported once to ONNX with ``torch.onnx.export`` and compiled by
OpenVINO at load, in fp32. Writing the graph out, rather than exporting the Hugging Face
module, keeps the export independent of the attention-mask code of each transformers
version (which the exporter traces with warnings and runtimes' fusions do not recognise).

The ONNX file is cached under ``cache_dir/onnx/`` in a folder named by a hash of the
model's files and the exporter's versions, written to a temporary name and renamed into
place, so concurrent workers on one machine export at most once each and never read half a
file. Figures and the rule that picks this backend: :func:`tasks.embed.local.choose_backend`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tasks.embed.embedders import EmbedderError

log = logging.getLogger("tasks.embed.openvino_backend")

#: Part of the cache key: bump when the graph written below changes.
GRAPH_VERSION = 1
_OPSET = 17
_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def unsupported_reason(config: Any) -> str | None:
    """Why the graph below cannot stand for this model, or None if it can."""
    checks = (
        (config.model_type == "bert", f"model_type {config.model_type!r} is not bert"),
        (config.hidden_act == "gelu", f"activation {config.hidden_act!r} is not gelu"),
        (
            getattr(config, "position_embedding_type", "absolute") == "absolute",
            "position embeddings are not absolute",
        ),
    )
    return next((why for ok, why in checks if not ok), None)


def cache_key(model_path: Path) -> str:
    """A hash of the model's files and of the versions that shape the exported graph."""
    digest = hashlib.sha256()
    for name in _MODEL_FILES:
        path = model_path / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    versions = {p: importlib.metadata.version(p) for p in ("torch", "onnx")}
    digest.update(json.dumps([GRAPH_VERSION, _OPSET, versions], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def cached_model(model_path: Path, cache_dir: Path) -> Path:
    """The ONNX file of the model at ``model_path``: from the cache, or exported into it."""
    folder = cache_dir / "onnx" / cache_key(model_path)
    target = folder / "model.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".model-{os.getpid()}-{uuid.uuid4().hex[:8]}.onnx"
    try:
        _export(model_path, tmp)
        os.replace(tmp, target)
    finally:
        for leftover in folder.glob(f"{tmp.stem}*"):
            leftover.unlink(missing_ok=True)
    log.info("exported %s to %s", model_path.name, target)
    return target


def _export(model_path: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    graph = _pooled_graph(model)
    ids_BL = torch.tensor([[101, 2000, 2001, 102], [101, 2000, 102, 0]])
    mask_BL = (ids_BL != 0).long()
    axes = {"input_ids": {0: "b", 1: "l"}, "attention_mask": {0: "b", 1: "l"}}
    with torch.inference_mode():
        torch.onnx.export(
            graph,
            (ids_BL, mask_BL),
            str(dest),
            dynamo=False,  # dynamo took ~8x longer, and its graph named an output twice
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes=axes | {"embedding": {0: "b"}},
            opset_version=_OPSET,
        )


def _mean_pooled_bert_forward(model: Any, ids_BL: Any, mask_BL: Any) -> Any:
    import torch

    config = model.config
    emb = model.embeddings
    B, L = ids_BL.shape
    positions_1L = torch.arange(L).unsqueeze(0)
    x_BLD = emb.LayerNorm(
        emb.word_embeddings(ids_BL)
        + emb.position_embeddings(positions_1L)
        + emb.token_type_embeddings(torch.zeros_like(ids_BL))
    )
    maskf_BL = mask_BL.to(x_BLD.dtype)
    # The additive mask of the original BERT code: runtimes' attention fusions know it.
    bias_B11L = (1.0 - maskf_BL[:, None, None, :]) * -10000.0
    H = config.num_attention_heads
    Dh = config.hidden_size // H

    def heads(t_BLD: Any) -> Any:
        return t_BLD.view(B, L, H, Dh).transpose(1, 2)

    for layer in model.encoder.layer:
        attn = layer.attention.self
        q, k, v = heads(attn.query(x_BLD)), heads(attn.key(x_BLD)), heads(attn.value(x_BLD))
        scores_BHLL = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(Dh) + bias_B11L
        ctx_BLD = torch.matmul(scores_BHLL.softmax(-1), v).transpose(1, 2).reshape(B, L, H * Dh)
        out = layer.attention.output
        x_BLD = out.LayerNorm(out.dense(ctx_BLD) + x_BLD)
        hidden = torch.nn.functional.gelu(layer.intermediate.dense(x_BLD))
        x_BLD = layer.output.LayerNorm(layer.output.dense(hidden) + x_BLD)
    weights_BL1 = maskf_BL.unsqueeze(-1)
    pooled_BD = (x_BLD * weights_BL1).sum(dim=1) / weights_BL1.sum(dim=1)
    return torch.nn.functional.normalize(pooled_BD, dim=-1)


def _pooled_graph(model: Any) -> Any:
    import torch

    class MeanPooledBert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids_BL: Any, mask_BL: Any) -> Any:
            return _mean_pooled_bert_forward(self.model, ids_BL, mask_BL)

    return MeanPooledBert()


class OpenVinoEncoder:
    """The cached model compiled by OpenVINO: padded ids and mask in, unit vectors out."""

    def __init__(self, model_path: Path, cache_dir: Path, threads: int) -> None:
        import openvino

        self.path = cached_model(model_path, cache_dir)
        config = {
            "INFERENCE_NUM_THREADS": threads,
            # Otherwise OpenVINO runs bf16 where the CPU has it: the vectors would change.
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
        except RuntimeError as exc:
            raise EmbedderError(f"OpenVINO cannot compile {self.path}: {exc}") from exc
        self.request = compiled.create_infer_request()

    def __call__(self, ids_BL: np.ndarray, mask_BL: np.ndarray) -> np.ndarray:
        """shape: [B, D] float32, unit rows."""
        out = self.request.infer({"input_ids": ids_BL, "attention_mask": mask_BL})
        return np.array(out[0], dtype=np.float32)  # a copy: the request reuses its buffer
