"""The re-embed flow's parameters, checked before anything starts."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.corpus.domains import DOMAIN_HELP, canonical_names, covering


class ReembedParams(BaseModel):
    """Harvest new arXiv papers of one or more domains, embed them, then move the
    watermark. Several domains are one harvest query (their union): a paper listed in
    two of them is fetched, validated and embedded once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str] = Field(
        min_length=1,
        description=DOMAIN_HELP + " Several: one harvest of their union.",
        json_schema_extra={"argument": "DOMAIN"},
    )
    since: date | None = Field(
        default=None,
        description="First day to harvest. Default: the domain's watermark less 2 days "
        "(or 7 days before `until` when there is no watermark yet).",
    )
    until: date | None = Field(
        default=None, description="Last day to harvest. Default: today (UTC)."
    )
    source: Literal["api", "oai"] = Field(
        default="api", description="'api' (the arXiv search API) or 'oai' (OAI-PMH)."
    )
    embedder: str | None = Field(
        default=None,
        description="'minilm', 'st:<model>' or 'openai:<model>'. Default: SAE_EMBEDDER.",
    )
    limit: int | None = Field(
        default=None, gt=0, description="Harvest at most this many records (oldest first)."
    )
    wait_s: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        description="Wait this long (seconds) for another re-embed of the domain to finish "
        "before giving up (the run then ends Cancelled).",
        json_schema_extra={"flags": ["--wait"]},
    )

    @model_validator(mode="before")
    @classmethod
    def _one_domain_as_before(cls, data: Any) -> Any:
        # Deployments made before domains became a list pass {"domain": "cs.LG"}.
        if isinstance(data, dict) and "domain" in data and "domains" not in data:
            data = {**data, "domains": [data["domain"]]}
            del data["domain"]
        return data

    @field_validator("domains")
    @classmethod
    def _canonical_domains(cls, v: list[str]) -> list[str]:
        return canonical_names(v)

    @property
    def domain(self) -> str:
        """The harvest query's domain: the one domain, or the union of several."""
        return covering(self.domains).name

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from tasks.embed.embedders import EmbedderError, embedder_name

        try:
            embedder_name(v)
        except EmbedderError as exc:
            raise ValueError(str(exc)) from None
        return v.strip()

    @model_validator(mode="after")
    def _window(self) -> ReembedParams:
        if self.since and self.until and self.since > self.until:
            raise ValueError(f"since {self.since} is after until {self.until}")
        return self
