"""The features flow's parameters, checked before anything starts (``sae features``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.corpus.domains import DOMAIN_HELP, canonical_names

if TYPE_CHECKING:  # numpy and scipy stay out of the command line's start
    from tasks.features.families import CleanRule

#: The cells chosen when none are named: the champion, and per k the widest cell.
DEFAULT_CELLS = "default"
_CELL = re.compile(r"^[A-Za-z0-9._-]+$")


class FeaturesParams(BaseModel):
    """Cards, labels, families and a browser page for chosen cells of a finished sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str] = Field(
        default=["cs.LG"],
        min_length=1,
        description=DOMAIN_HELP,
        json_schema_extra={"argument": "DOMAIN"},
    )
    sweep: str | None = Field(
        default=None,
        description="The sweep id to read (`sae runs` lists them). Default: the domain's "
        "newest finished sweep.",
    )
    cells: list[str] = Field(
        default=[DEFAULT_CELLS],
        min_length=1,
        description="Cells to analyse: 'default' (the champion and, per k, the largest n), "
        "'champion', 'all', or cell names (csLG_64_3072_1024).",
    )

    llm_labels: int = Field(
        default=0,
        ge=0,
        description="Also label this many live features of each cell (the densest first) "
        "with the LLM at SAE_LABEL_API_BASE, scored as the paper does; 0: offline labels only.",
    )

    clean_min_f1: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Families are built from clean features only; a clean feature's label "
        "scores at least this F1 on held-out papers (the paper: 0.8, on LLM labels).",
    )
    clean_min_pearson: float = Field(
        default=0.5,
        ge=-1.0,
        le=1.0,
        description="A clean feature's label scores at least this Pearson r on held-out "
        "papers (the paper: 0.8).",
    )
    clean_max_density: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="A clean feature fires on at most this share of the papers (the paper: 0.2).",
    )

    def clean_rule(self) -> CleanRule:
        from tasks.features.families import CleanRule

        return CleanRule(self.clean_min_f1, self.clean_min_pearson, self.clean_max_density)

    @field_validator("domains")
    @classmethod
    def _canonical_domains(cls, v: list[str]) -> list[str]:
        return canonical_names(v)

    @field_validator("cells")
    @classmethod
    def _cell_names(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not _CELL.match(c)]
        if bad:
            raise ValueError(f"not a cell name: {bad}")
        return v
