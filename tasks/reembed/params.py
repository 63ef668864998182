"""The re-embed flow's parameters, checked before anything starts."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.corpus.domains import DOMAIN_HELP, DOMAINS, UnknownDomainError, get_domain

DomainName = Literal[tuple(DOMAINS)]  # type: ignore[valid-type]


class ReembedParams(BaseModel):
    """Harvest one domain's new arXiv papers, embed them, then move its watermark."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: DomainName = Field(  # type: ignore[valid-type]
        description=DOMAIN_HELP, json_schema_extra={"argument": "DOMAIN"}
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

    @field_validator("domain", mode="before")
    @classmethod
    def _canonical_domain(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return get_domain(v).name  # accepts the slug (cs_lg) and any case
            except UnknownDomainError as exc:
                raise ValueError(str(exc)) from None
        return v

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
