"""The bundled MiniLM for search queries, without transformers.

A query is one short text, and importing transformers' model classes took 2.6 s of a
cold ``sae search`` (of about 5.6 s). This runs the same BERT encoder from the model
folder's own files: ``tokenizers`` reads tokenizer.json, safetensors the weights, and a
plain torch forward (embeddings, 6 layers of attention and GELU feed-forward, mean
pooling over the tokens, L2 norm) gives the vector :class:`MeanPoolEmbedder` gives in
fp32, to float rounding (checked in tests/tasks/test_query_bert.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tasks.embed.embedders import EmbedderError, check_texts, check_vectors


class QueryBert:
    """shape: ``embed(texts)`` -> [len(texts), dim] float32, unit rows (fp32, CPU)."""

    def __init__(self, path: Path, name: str):
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise EmbedderError(f"{path}: the query path runs BERT models with GELU only")
        st_config = json.loads((path / "sentence_bert_config.json").read_text())
        self.name, self.dim = name, int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(st_config["max_seq_length"]))
        self.tokenizer.no_padding()
        self.w = load_file(str(path / "model.safetensors"))

    def embed(self, texts) -> np.ndarray:
        items = check_texts(texts, self.name)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        out_ND = np.stack([self._one(e.ids) for e in self.tokenizer.encode_batch(items)])
        return check_vectors(out_ND, len(items), self.dim, self.name)

    @torch.inference_mode()
    def _one(self, ids: list[int]) -> np.ndarray:
        w = self.w
        ids_L = torch.tensor(ids)
        x_LD = (
            w["embeddings.word_embeddings.weight"][ids_L]
            + w["embeddings.position_embeddings.weight"][: len(ids)]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x_LD = self._norm(x_LD, "embeddings.LayerNorm")
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            ctx_LD = self._attention(x_LD, p + "attention.self.")
            x_LD = self._norm(x_LD + self._linear(ctx_LD, p + "attention.output.dense"),
                              p + "attention.output.LayerNorm")  # fmt: skip
            h_LF = torch.nn.functional.gelu(self._linear(x_LD, p + "intermediate.dense"))
            x_LD = self._norm(x_LD + self._linear(h_LF, p + "output.dense"), p + "output.LayerNorm")
        pooled_D = x_LD.mean(dim=0)  # one text, no padding: every token counts
        return torch.nn.functional.normalize(pooled_D, dim=0).numpy()

    def _attention(self, x_LD: torch.Tensor, p: str) -> torch.Tensor:
        L, H = x_LD.shape[0], self.heads
        q, k, v = (
            self._linear(x_LD, p + name).view(L, H, -1).transpose(0, 1)  # [H, L, dh]
            for name in ("query", "key", "value")
        )
        att_HLL = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        return (att_HLL @ v).transpose(0, 1).reshape(L, -1)

    def _linear(self, x: torch.Tensor, p: str) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.w[p + ".weight"], self.w[p + ".bias"])

    def _norm(self, x: torch.Tensor, p: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(
            x, (self.dim,), self.w[p + ".weight"], self.w[p + ".bias"], self.eps
        )
