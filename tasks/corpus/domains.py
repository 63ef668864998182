"""The domains a corpus can hold, and how each is found in arXiv's categories and feeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    """``name`` is what users type (``cs.LG``); ``slug`` names folders (``cs_lg``)."""

    name: str
    slug: str
    api_query: str
    oai_set: str
    member: Callable[[Sequence[str]], bool]

    def contains(self, categories: Sequence[str]) -> bool:
        return self.member(categories)


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain(
            name="cs.LG",
            slug="cs_lg",
            api_query="cat:cs.LG",
            oai_set="cs:cs:LG",
            member=lambda cats: "cs.LG" in cats,
        ),
        Domain(
            name="astro-ph",
            slug="astro_ph",
            # The API has no prefix match on categories: list the archive and its parts.
            api_query="("
            + " OR ".join(
                f"cat:{c}"
                for c in (
                    "astro-ph",
                    "astro-ph.GA",
                    "astro-ph.CO",
                    "astro-ph.EP",
                    "astro-ph.HE",
                    "astro-ph.IM",
                    "astro-ph.SR",
                )
            )
            + ")",
            oai_set="physics:astro-ph",
            member=lambda cats: any(c.startswith("astro-ph") for c in cats),
        ),
    )
}


class UnknownDomainError(ValueError):
    pass


def get_domain(name: str) -> Domain:
    """Accepts the name (``cs.LG``) or the slug (``cs_lg``), case-insensitively."""
    key = name.strip().lower()
    for domain in DOMAINS.values():
        if key in (domain.name.lower(), domain.slug):
            return domain
    known = ", ".join(DOMAINS)
    raise UnknownDomainError(f"unknown domain {name!r}; known domains: {known}")
