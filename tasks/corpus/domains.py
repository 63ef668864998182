"""The domains a corpus can hold: arXiv categories, archives, unions of them and all of arXiv.

They come from arXiv's category taxonomy, shipped as ``taxonomy.tsv`` beside this module and
read on first use. A domain's ``name`` is canonical: MLflow experiments, registered models,
tags and cell names (``csLG_16_3072_1024``) are made from it, so every spelling a user types
has to become it first (``get_domain``); ``slug`` names folders.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DomainKind = Literal["category", "archive", "union", "all"]

DOMAIN_HELP = (
    "an arXiv category (cs.LG, gr-qc, cond-mat.str-el), an archive (astro-ph, math), "
    "a union (cs.LG+stat.ML) or all; any spelling"
)

ALL = "all"
_SHIPPED = Path(__file__).with_name("taxonomy.tsv")
_COLUMNS = ("kind", "id", "name", "archive", "group")
_ARCHIVE_ID = r"[a-z]+(?:-[a-z]+)?"
# A category is an archive without subject classes (hep-th) or archive.SUBJECT, the subject
# class two capitals (cs.LG) or lowercase words (cond-mat.str-el).
_CATEGORY_ID = re.compile(rf"{_ARCHIVE_ID}(?:\.(?:[A-Z]{{2}}|{_ARCHIVE_ID}))?")
# Close enough that a typo (hep_thh, astro) finds its domain, far enough that cs.ML does not
# also suggest every other two-letter cs category.
_NEAR_SPELLING = 0.8
_MAX_SUGGESTIONS = 3


class UnknownDomainError(ValueError):
    """A name that is no domain, or a union that cannot be one."""


class TaxonomyError(ValueError):
    """A taxonomy file that breaks its format; the message names the file and the line."""


@dataclass(frozen=True)
class Domain:
    """What a corpus holds. ``name`` is canonical (``cs.LG``, ``astro-ph``,
    ``cs.LG+stat.ML``, ``all``); ``slug`` names folders (``cs_lg``, ``cs_lg+stat_ml``) and
    must never change for a domain, since stores are laid out by it; ``title`` is for people;
    ``members`` are a union's parts (a one-tuple of ``name`` otherwise); ``categories`` are
    the taxonomy's category codes it covers.
    """

    name: str
    slug: str
    kind: DomainKind
    title: str
    members: tuple[str, ...]
    categories: frozenset[str]
    # The arXiv codes the API is asked for, in taxonomy order; the archives whose every
    # code belongs (legacy bare ids and retired subject classes too); the OAI-PMH sets.
    _codes: tuple[str, ...] = field(repr=False)
    _archives: frozenset[str] = field(repr=False)
    _sets: tuple[str, ...] = field(repr=False)

    def contains(self, categories: Sequence[str]) -> bool:
        """Whether a paper filed under ``categories`` belongs: any one of them will do."""
        if self.kind == "all":
            return len(categories) > 0
        return any(
            code in self.categories or code.partition(".")[0] in self._archives
            for code in categories
        )

    @property
    def api_query(self) -> str:
        """The arXiv API's ``search_query`` term. The API has no prefix match on categories,
        so an archive lists its own id (papers from before subject classes) and each one."""
        terms = [f"cat:{code}" for code in self._codes]
        return terms[0] if len(terms) == 1 else f"({' OR '.join(terms)})"

    @property
    def oai_sets(self) -> tuple[str, ...]:
        """The OAI-PMH setSpecs to harvest; ``()`` asks for no set, the whole repository.
        A record is in the set of every category it carries, so a category's own set also
        returns the papers cross-listed to it."""
        return self._sets

    @property
    def default_categories(self) -> tuple[str, ...] | None:
        """The categories of a record that lists none: a dump of one category or archive
        (the Hugging Face ones) holds only its papers; a record of a union or of all could
        be anything, so it stays without."""
        return (self.name,) if self.kind in ("category", "archive") else None


@dataclass(frozen=True)
class TaxonomyRow:
    """One line of the taxonomy file; ``line`` is its 1-based number there."""

    kind: str
    id: str
    name: str
    archive: str
    group: str
    line: int


@dataclass(frozen=True, eq=False)
class Taxonomy:
    """A parsed taxonomy file: its rows by kind and id, in file order, and its domains in
    the order ``known_domains`` lists them."""

    path: Path
    groups: dict[str, TaxonomyRow]
    archives: dict[str, TaxonomyRow]
    categories: dict[str, TaxonomyRow]
    domains: tuple[Domain, ...]
    _by_key: dict[str, Domain] = field(repr=False)

    def domain(self, name: str) -> Domain:
        """The domain of any spelling; ``+`` joins parts into a union."""
        parts = [self._part(part) for part in name.split("+")]
        if len(parts) == 1:
            return parts[0]
        # One canonical order, so two spellings of a union are one experiment.
        parts.sort(key=self.domains.index)
        problem = _union_problem(parts)
        if problem:
            raise UnknownDomainError(f"in the union {name!r}, {problem}")
        return _union(parts)

    def _part(self, name: str) -> Domain:
        key = _spelling_key(name)
        if key in self._by_key:
            return self._by_key[key]
        suggestions = self._suggestions(key)
        hint = f": did you mean {_either(suggestions)}?" if suggestions else ""
        raise UnknownDomainError(f"unknown domain {name!r}{hint} (sae domains lists them all)")

    def _suggestions(self, key: str) -> list[str]:
        """Best first: a subject class that exists in other archives, then near spellings."""
        near = difflib.get_close_matches(
            key, self._by_key, n=_MAX_SUGGESTIONS, cutoff=_NEAR_SPELLING
        )
        found = [*self._same_subject(key), *(self._by_key[k].name for k in near)]
        return list(dict.fromkeys(found))[:_MAX_SUGGESTIONS]

    def _same_subject(self, key: str) -> Iterator[str]:
        """For a key read as archive + subject class (cs.ML): first the typed archive's
        categories titled like that subject class elsewhere (cs.LG, "Machine Learning" as
        stat.ML is), then the subject class in other archives (stat.ML)."""
        for archive in self.archives:
            subject = key.removeprefix(_spelling_key(archive))
            if subject in ("", key):
                continue
            elsewhere = [
                row
                for row in self.categories.values()
                if row.archive != archive and _spelling_key(_subject(row.id)) == subject
            ]
            titles = {row.name for row in elsewhere}
            for row in self.categories.values():
                if row.archive == archive and row.name in titles:
                    yield row.id
            yield from (row.id for row in elsewhere)


def load_taxonomy(path: Path | str | None = None) -> Taxonomy:
    """The taxonomy in ``path``, by default the shipped one (read once); TaxonomyError
    naming the line where the file breaks its format."""
    return _shipped_taxonomy() if path is None else _parse(Path(path))


def get_domain(name: str) -> Domain:
    """Any spelling of a domain: ``cs.LG``, ``cs_lg``, ``csLG``, ``CS-lg``, ``astroPH``,
    ``all``, ``stat.ML+cs.LG``...

    Case and separators are ignored (two spellings of one domain must never become two
    experiments or two sets of cells); the result's ``name`` is the canonical one.
    """
    return load_taxonomy().domain(name)


def known_domains() -> list[Domain]:
    """Every archive followed by its categories, in taxonomy order, then all."""
    return list(load_taxonomy().domains)


def covering(names: Sequence[str]) -> Domain:
    """The one domain that holds every paper of ``names``, to harvest, ingest or embed
    them in one pass: itself for one name, ``all`` if it is among them, else the union of
    the parts no other part holds (``cs`` and ``cs.LG``: ``cs``)."""
    domains = [get_domain(name) for name in names]
    if any(domain.kind == "all" for domain in domains):
        return get_domain(ALL)
    parts = list(dict.fromkeys(member for domain in domains for member in domain.members))
    kept = [
        part
        for part in parts
        if not any(other != part and get_domain(other).contains([part]) for other in parts)
    ]
    return get_domain("+".join(kept))


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


@functools.cache
def _shipped_taxonomy() -> Taxonomy:
    return _parse(_SHIPPED)


def _parse(path: Path) -> Taxonomy:
    tables: dict[str, dict[str, TaxonomyRow]] = {"group": {}, "archive": {}, "category": {}}
    for row in _rows(path):
        problem = _row_problem(row, tables)
        if problem:
            raise TaxonomyError(f"{path} line {row.line}: {problem}")
        tables[row.kind][row.id] = row
    listed = _listed_domains(tables["archive"], tables["category"])
    everything = _all_domain([domain for _, domain in listed])
    return Taxonomy(
        path=path,
        groups=tables["group"],
        archives=tables["archive"],
        categories=tables["category"],
        domains=(*(domain for _, domain in listed), everything),
        _by_key=_index(path, [(0, everything), *listed]),
    )


def _rows(path: Path) -> Iterator[TaxonomyRow]:
    """The file's rows after its header; blank lines and ``#`` comments skipped."""
    header = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = tuple(line.split("\t"))
        if not header:
            if fields != _COLUMNS:
                raise TaxonomyError(f"{path} line {number}: expected the header {_COLUMNS}")
            header = True
        elif len(fields) != len(_COLUMNS):
            raise TaxonomyError(
                f"{path} line {number}: {len(fields)} tab-separated columns, "
                f"expected {len(_COLUMNS)} {_COLUMNS}"
            )
        elif not all(fields):
            raise TaxonomyError(f"{path} line {number}: an empty column")
        else:
            yield TaxonomyRow(*fields, line=number)
    if not header:
        raise TaxonomyError(f"{path} line 1: no header {_COLUMNS} in the file")


def _row_problem(row: TaxonomyRow, tables: dict[str, dict[str, TaxonomyRow]]) -> str | None:
    table = tables.get(row.kind)
    if table is None:
        return f"unknown kind {row.kind!r}: expected group, archive or category"
    if row.id in table:
        return f"{row.kind} {row.id} again (first on line {table[row.id].line})"
    return _KIND_PROBLEMS[row.kind](row, tables)


def _group_problem(row: TaxonomyRow, tables: dict[str, dict[str, TaxonomyRow]]) -> str | None:
    if row.archive != "-" or row.group != row.id:
        return f"group {row.id} needs archive '-' and group {row.id}"
    return None


def _archive_problem(row: TaxonomyRow, tables: dict[str, dict[str, TaxonomyRow]]) -> str | None:
    if not re.fullmatch(_ARCHIVE_ID, row.id):
        return f"{row.id!r} is not an arXiv archive id"
    if row.archive != row.id:
        return f"archive {row.id} needs archive {row.id}, not {row.archive}"
    if row.group not in tables["group"]:
        return f"archive {row.id}: group {row.group} has no group row above"
    return None


def _category_problem(row: TaxonomyRow, tables: dict[str, dict[str, TaxonomyRow]]) -> str | None:
    if not _CATEGORY_ID.fullmatch(row.id):
        return f"{row.id!r} is not an arXiv category (archive or archive.SUBJECT)"
    archive = tables["archive"].get(row.archive)
    if archive is None:
        return f"category {row.id}: archive {row.archive} has no archive row above"
    if row.id.partition(".")[0] != row.archive:
        return f"category {row.id} is not in archive {row.archive}"
    if row.group != archive.group:
        return f"category {row.id}: group {row.group} is not its archive's ({archive.group})"
    return None


_KIND_PROBLEMS = {
    "group": _group_problem,
    "archive": _archive_problem,
    "category": _category_problem,
}


def _listed_domains(
    archives: dict[str, TaxonomyRow], categories: dict[str, TaxonomyRow]
) -> list[tuple[int, Domain]]:
    """Each archive then its categories, with the line each comes from; an archive that is
    its own only category (gr-qc) is that category, listed once."""
    listed = []
    for archive in archives.values():
        members = [row for row in categories.values() if row.archive == archive.id]
        if [row.id for row in members] != [archive.id]:
            listed.append((archive.line, _archive_domain(archive, members)))
        listed.extend((row.line, _category_domain(row)) for row in members)
    return listed


def _category_domain(row: TaxonomyRow) -> Domain:
    subject = _subject(row.id)
    oai_set = f"{row.group}:{row.archive}:{subject}" if subject else f"{row.group}:{row.archive}"
    return Domain(
        name=row.id,
        slug=_slug(row.id),
        kind="category",
        title=row.name,
        members=(row.id,),
        categories=frozenset({row.id}),
        _codes=(row.id,),
        _archives=frozenset(),
        _sets=(oai_set,),
    )


def _archive_domain(archive: TaxonomyRow, members: list[TaxonomyRow]) -> Domain:
    return Domain(
        name=archive.id,
        slug=_slug(archive.id),
        kind="archive",
        title=archive.name,
        members=(archive.id,),
        categories=frozenset(row.id for row in members),
        _codes=(archive.id, *(row.id for row in members)),
        _archives=frozenset({archive.id}),
        _sets=(f"{archive.group}:{archive.id}",),
    )


def _all_domain(listed: list[Domain]) -> Domain:
    return Domain(
        name=ALL,
        slug=ALL,
        kind="all",
        title="all of arXiv",
        members=(ALL,),
        categories=frozenset().union(*(domain.categories for domain in listed)),
        # An archive's codes include its categories', listed again after it.
        _codes=tuple(dict.fromkeys(code for domain in listed for code in domain._codes)),
        _archives=frozenset().union(*(domain._archives for domain in listed)),
        _sets=(),
    )


def _union(parts: list[Domain]) -> Domain:
    # The parts are disjoint (repeats and nesting are refused), so no code or set repeats.
    return Domain(
        name="+".join(part.name for part in parts),
        slug="+".join(part.slug for part in parts),
        kind="union",
        title=" + ".join(part.title for part in parts),
        members=tuple(part.name for part in parts),
        categories=frozenset().union(*(part.categories for part in parts)),
        _codes=tuple(code for part in parts for code in part._codes),
        _archives=frozenset().union(*(part._archives for part in parts)),
        _sets=tuple(oai_set for part in parts for oai_set in part._sets),
    )


def _union_problem(parts: list[Domain]) -> str | None:
    if any(part.kind == "all" for part in parts):
        return "all already holds every domain"
    for part, other in itertools.permutations(parts, 2):
        if part.name == other.name:
            return f"{part.name} appears twice"
        if other.contains([part.name]):
            return f"{part.name} is already in {other.name}"
    return None


def _index(path: Path, listed: list[tuple[int, Domain]]) -> dict[str, Domain]:
    """Each domain by its spelling key. A slug only turns into ``_`` separators the key
    drops, so distinct keys make distinct slugs: checking keys checks both."""
    by_key: dict[str, Domain] = {}
    for line, domain in listed:
        key = _spelling_key(domain.name)
        if key in by_key:
            raise TaxonomyError(
                f"{path} line {line}: {domain.name} is one spelling of {by_key[key].name}"
            )
        by_key[key] = domain
    return by_key


def _spelling_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _slug(name: str) -> str:
    return name.lower().replace(".", "_").replace("-", "_")


def _subject(category: str) -> str:
    """The subject class (``LG`` of ``cs.LG``); empty for an archive without them."""
    return category.partition(".")[2]


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
