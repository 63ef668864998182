"""The domains a corpus can hold, and how each is found in arXiv's categories and feeds."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    """``name`` is the canonical name (``cs.LG``): MLflow experiments, registered models,
    tags and cell names (``csLG_16_3072_1024``) are made from it, so every spelling a
    user types has to become it first (``get_domain``). ``slug`` names folders (``cs_lg``).
    """

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


DOMAIN_HELP = "cs.LG or astro-ph, in any spelling (cs_lg, csLG, astro_ph, astroPH...)."


def get_domain(name: str) -> Domain:
    """Any spelling of a domain: ``cs.LG``, ``cs_lg``, ``csLG``, ``CS-lg``, ``astroPH``...

    Case and separators are ignored (two spellings of one domain must never become two
    experiments or two sets of cells); the result's ``name`` is the canonical one.
    """
    key = _spelling_key(name)
    for domain in DOMAINS.values():
        if key == _spelling_key(domain.name):
            return domain
    known = ", ".join(DOMAINS)
    raise UnknownDomainError(f"unknown domain {name!r}; known domains: {known}")


def canonical_names(names: list[str]) -> list[str]:
    """Each domain's canonical name, for a parameter model's validator: ValueError naming
    an unknown domain or two spellings of one."""
    try:
        out = [get_domain(name).name for name in names]
    except UnknownDomainError as exc:
        raise ValueError(str(exc)) from None
    if len(set(out)) != len(out):
        raise ValueError(f"domains repeat: {names} are {out}")
    return out


def canonical_name(name: str) -> str:
    """The canonical name of a known domain in any spelling; any other label unchanged."""
    try:
        return get_domain(name).name
    except UnknownDomainError:
        return name


def _spelling_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())
