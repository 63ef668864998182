"""Domains from arXiv's category taxonomy: the shipped file, spellings, membership, queries,
OAI sets, unions, suggestions for unknown names, and the errors of a broken file."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tasks.corpus.domains import (
    DOMAIN_HELP,
    TaxonomyError,
    UnknownDomainError,
    canonical_name,
    canonical_names,
    covering,
    get_domain,
    known_domains,
    load_taxonomy,
)

SINGLE_CATEGORY_ARCHIVES = {
    "gr-qc",
    "hep-ex",
    "hep-lat",
    "hep-ph",
    "hep-th",
    "math-ph",
    "nucl-ex",
    "nucl-th",
    "quant-ph",
}


def test_shipped_file_counts():
    taxonomy = load_taxonomy()
    assert len(taxonomy.groups) == 8
    assert len(taxonomy.archives) == 20
    assert len(taxonomy.categories) == 155
    per_archive = Counter(row.archive for row in taxonomy.categories.values())
    assert per_archive["cs"] == 40
    assert per_archive["math"] == 32
    assert per_archive["physics"] == 22
    assert per_archive["cond-mat"] == 9


def test_shipped_file_links_each_row_to_its_parents():
    taxonomy = load_taxonomy()
    for row in taxonomy.categories.values():
        archive = taxonomy.archives[row.archive]
        assert row.group == archive.group
        assert row.id.partition(".")[0] == row.archive
    for row in taxonomy.archives.values():
        assert row.group in taxonomy.groups
    assert {a for a in taxonomy.archives if a in taxonomy.categories} == SINGLE_CATEGORY_ARCHIVES


def test_shipped_taxonomy_is_read_once():
    assert load_taxonomy() is load_taxonomy()


def test_known_domains_lists_archives_then_their_categories_then_all():
    domains = known_domains()
    names = [d.name for d in domains]
    assert names[:3] == ["cs", "cs.AI", "cs.AR"]
    assert names[-1] == "all"
    assert names.count("gr-qc") == 1
    assert names.index("astro-ph") < names.index("astro-ph.CO") < names.index("cond-mat")
    # 20 archives, less the 9 that are their own only category, 155 categories, all.
    assert len(domains) == 20 - 9 + 155 + 1
    assert len({d.slug for d in domains}) == len(domains)


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("cs.LG", "cs.LG"),
        ("cs_lg", "cs.LG"),
        ("csLG", "cs.LG"),
        ("CS-lg", "cs.LG"),
        ("astro-ph", "astro-ph"),
        ("astroPH", "astro-ph"),
        ("astro_ph", "astro-ph"),
        ("hep_th", "hep-th"),
        ("grqc", "gr-qc"),
        ("condmatstrel", "cond-mat.str-el"),
        ("cond_mat_str_el", "cond-mat.str-el"),
        ("ALL", "all"),
        ("stat.ML+cs.LG", "cs.LG+stat.ML"),
        ("cs_lg+stat_ml", "cs.LG+stat.ML"),
    ],
)
def test_spellings_resolve_to_the_canonical_name(spelling, name):
    assert get_domain(spelling).name == name


@pytest.mark.parametrize(
    ("name", "slug", "kind", "title"),
    [
        ("cs.LG", "cs_lg", "category", "Machine Learning"),
        ("astro-ph", "astro_ph", "archive", "Astrophysics"),
        ("gr-qc", "gr_qc", "category", "General Relativity and Quantum Cosmology"),
        ("cond-mat.str-el", "cond_mat_str_el", "category", "Strongly Correlated Electrons"),
        ("cs.LG+stat.ML", "cs_lg+stat_ml", "union", "Machine Learning + Machine Learning"),
        ("all", "all", "all", "all of arXiv"),
    ],
)
def test_slug_kind_and_title(name, slug, kind, title):
    domain = get_domain(name)
    assert (domain.slug, domain.kind, domain.title) == (slug, kind, title)


def test_members():
    assert get_domain("cs.LG").members == ("cs.LG",)
    assert get_domain("astro-ph").members == ("astro-ph",)
    assert get_domain("stat.ML+astro-ph+cs.LG").members == ("cs.LG", "astro-ph", "stat.ML")


def test_api_queries_of_the_existing_stores_are_unchanged():
    assert get_domain("cs.LG").api_query == "cat:cs.LG"
    assert get_domain("astro-ph").api_query == (
        "(cat:astro-ph OR cat:astro-ph.CO OR cat:astro-ph.EP OR cat:astro-ph.GA"
        " OR cat:astro-ph.HE OR cat:astro-ph.IM OR cat:astro-ph.SR)"
    )


def test_api_query_of_each_kind():
    assert get_domain("gr-qc").api_query == "cat:gr-qc"
    assert get_domain("stat.ML+cs.LG").api_query == "(cat:cs.LG OR cat:stat.ML)"
    union = get_domain("astro-ph+gr-qc").api_query
    assert union.startswith("(cat:astro-ph OR cat:astro-ph.CO") and union.endswith(" OR cat:gr-qc)")
    assert union.count("(") == 1
    terms = get_domain("all").api_query.strip("()").split(" OR ")
    assert len(terms) == len(set(terms)) == 155 + 20 - len(SINGLE_CATEGORY_ARCHIVES)
    assert {"cat:cs", "cat:cs.LG", "cat:gr-qc", "cat:stat.TH"} <= set(terms)


def test_each_archive_queries_its_id_and_every_category():
    taxonomy = load_taxonomy()
    for domain in known_domains():
        if domain.kind == "archive":
            terms = domain.api_query.strip("()").split(" OR ")
            expected = [domain.name, *sorted(domain.categories)]
            assert sorted(t.removeprefix("cat:") for t in terms) == sorted(expected)
            assert domain.categories == {
                c for c, row in taxonomy.categories.items() if row.archive == domain.name
            }


@pytest.mark.parametrize(
    ("name", "categories", "belongs"),
    [
        ("cs.LG", ["cs.CV", "cs.LG"], True),
        ("cs.LG", ["cs.CV"], False),
        ("cs.LG", ["stat.ML"], False),
        ("astro-ph", ["astro-ph"], True),
        ("astro-ph", ["gr-qc", "astro-ph.GA"], True),
        ("astro-ph", ["gr-qc"], False),
        ("physics", ["physics.optics"], True),
        ("physics", ["astro-ph.GA"], False),
        ("gr-qc", ["gr-qc"], True),
        ("cond-mat.str-el", ["cond-mat.supr-con"], False),
        ("cs.LG+stat.ML", ["stat.ML"], True),
        ("cs.LG+astro-ph", ["astro-ph.SR"], True),
        ("cs.LG+astro-ph", ["cs.CV", "gr-qc"], False),
        ("all", ["chao-dyn"], True),
        ("all", [], False),
        ("cs.LG", [], False),
        ("nlin", ["chao-dyn"], False),
    ],
)
def test_contains(name, categories, belongs):
    assert get_domain(name).contains(categories) is belongs


@pytest.mark.parametrize(
    ("name", "sets"),
    [
        ("cs.LG", ("cs:cs:LG",)),
        ("stat.ML", ("stat:stat:ML",)),
        ("astro-ph.GA", ("physics:astro-ph:GA",)),
        ("cond-mat.str-el", ("physics:cond-mat:str-el",)),
        ("astro-ph", ("physics:astro-ph",)),
        ("gr-qc", ("physics:gr-qc",)),
        ("math", ("math:math",)),
        ("stat.ML+cs.LG", ("cs:cs:LG", "stat:stat:ML")),
        ("cs.LG+astro-ph", ("cs:cs:LG", "physics:astro-ph")),
        ("all", ()),
    ],
)
def test_oai_sets(name, sets):
    assert get_domain(name).oai_sets == sets


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("cs.LG", ("cs.LG",)),
        ("astro-ph", ("astro-ph",)),
        ("gr-qc", ("gr-qc",)),
        ("cs.LG+stat.ML", None),
        ("all", None),
    ],
)
def test_default_categories(name, default):
    assert get_domain(name).default_categories == default


def test_union_is_one_domain_whatever_the_order():
    assert get_domain("stat.ML+cs.LG") == get_domain("cs_lg+STAT-ml")
    assert get_domain("cs.LG+stat.ML").categories == {"cs.LG", "stat.ML"}


def test_one_part_union_is_that_part():
    assert get_domain("cs_lg") == get_domain("cs.LG")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cs.LG+cs_lg", "cs.LG appears twice"),
        ("astro-ph.GA+astro-ph", "astro-ph.GA is already in astro-ph"),
        ("astro-ph+astro-ph.GA", "astro-ph.GA is already in astro-ph"),
        ("all+cs.LG", "all already holds every domain"),
    ],
)
def test_union_errors(name, problem):
    with pytest.raises(UnknownDomainError, match=re.escape(problem)):
        get_domain(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "cs.ML",
            "unknown domain 'cs.ML': did you mean cs.LG or stat.ML? (sae domains lists them all)",
        ),
        ("hep_thh", "unknown domain 'hep_thh': did you mean hep-th?"),
        ("astro", "unknown domain 'astro': did you mean astro-ph?"),
        ("xyz", "unknown domain 'xyz' (sae domains lists them all)"),
        ("cs.LG+cs.ML", "unknown domain 'cs.ML': did you mean cs.LG or stat.ML?"),
    ],
)
def test_unknown_names_suggest_the_nearest(name, message):
    with pytest.raises(UnknownDomainError) as raised:
        get_domain(name)
    assert str(raised.value).startswith(message)


def test_at_most_three_suggestions():
    with pytest.raises(UnknownDomainError, match=r"did you mean stat\.TH, math\.ST or q-fin\.ST\?"):
        get_domain("stat.ST")


def test_canonical_names():
    assert canonical_names(["cs_lg", "astroPH", "stat.ML+cs.LG"]) == [
        "cs.LG",
        "astro-ph",
        "cs.LG+stat.ML",
    ]
    with pytest.raises(ValueError, match="domains repeat"):
        canonical_names(["cs.LG", "csLG"])
    with pytest.raises(ValueError, match=r"unknown domain 'cs\.ML'"):
        canonical_names(["cs.ML"])


def test_canonical_name_leaves_other_labels():
    assert canonical_name("cs_lg") == "cs.LG"
    assert canonical_name("my-label") == "my-label"


def test_domain_help_names_every_kind():
    for example in ("cs.LG", "astro-ph", "cs.LG+stat.ML", "all"):
        assert example in DOMAIN_HELP


SMALL = """\
# a comment, then a blank line

kind\tid\tname\tarchive\tgroup
group\tcs\tComputer Science\t-\tcs
group\tphysics\tPhysics\t-\tphysics
archive\tcs\tComputer Science\tcs\tcs
category\tcs.LG\tMachine Learning\tcs\tcs
category\tcs.CV\tComputer Vision and Pattern Recognition\tcs\tcs
archive\tgr-qc\tGeneral Relativity and Quantum Cosmology\tgr-qc\tphysics
category\tgr-qc\tGeneral Relativity and Quantum Cosmology\tgr-qc\tphysics
"""
NEXT_LINE = SMALL.count("\n") + 1


def test_a_small_file_loads(tmp_path):
    path = tmp_path / "taxonomy.tsv"
    path.write_text(SMALL)
    taxonomy = load_taxonomy(path)
    assert [d.name for d in taxonomy.domains] == ["cs", "cs.LG", "cs.CV", "gr-qc", "all"]
    assert taxonomy.categories["cs.CV"].line == 8
    assert taxonomy.domain("csCV+cs_lg").name == "cs.LG+cs.CV"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("category\tcs.AI\tArtificial Intelligence\tcs", "4 tab-separated columns"),
        ("category\tcs.AI\t\tcs\tcs", "an empty column"),
        ("subject\tcs.AI\tArtificial Intelligence\tcs\tcs", "unknown kind 'subject'"),
        ("category\tmath.AG\tAlgebraic Geometry\tmath\tmath", "archive math has no archive row"),
        ("archive\tmath\tMathematics\tmath\tmath", "group math has no group row"),
        ("group\tcs\tComputer Science\t-\tcs", "group cs again (first on line 4)"),
        ("archive\tcs\tComputer Science\tcs\tcs", "archive cs again (first on line 6)"),
        ("category\tcs.LG\tMachine Learning\tcs\tcs", "category cs.LG again (first on line 7)"),
        ("category\tcs.lg_x\tMachine Learning\tcs\tcs", "'cs.lg_x' is not an arXiv category"),
        ("category\tCS.AI\tArtificial Intelligence\tcs\tcs", "'CS.AI' is not an arXiv category"),
        ("category\tgr-qc.XX\tSomething\tcs\tcs", "category gr-qc.XX is not in archive cs"),
        ("category\tcs.AI\tArtificial Intelligence\tcs\tphysics", "is not its archive's (cs)"),
        ("archive\tCS_X\tComputer Science\tCS_X\tcs", "'CS_X' is not an arXiv archive id"),
        ("archive\tcslg\tSpelled like cs.LG\tcslg\tcs", "cslg is one spelling of cs.LG"),
        ("archive\tall\tAll\tall\tcs", "all is one spelling of all"),
    ],
)
def test_a_broken_file_names_its_line(tmp_path, row, problem):
    path = tmp_path / "taxonomy.tsv"
    path.write_text(SMALL + row + "\n")
    with pytest.raises(TaxonomyError) as raised:
        load_taxonomy(path)
    message = str(raised.value)
    assert f"taxonomy.tsv line {NEXT_LINE}: " in message
    assert problem in message


def test_a_file_without_its_header(tmp_path):
    path = tmp_path / "taxonomy.tsv"
    path.write_text("# only a comment\nid\tkind\tname\tarchive\tgroup\n")
    with pytest.raises(TaxonomyError, match=r"taxonomy\.tsv line 2: expected the header"):
        load_taxonomy(path)
    path.write_text("# only a comment\n")
    with pytest.raises(TaxonomyError, match="no header"):
        load_taxonomy(path)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["cs.LG"], "cs.LG"),
        (["stat.ML", "cs.LG"], "cs.LG+stat.ML"),
        (["cs", "cs.LG", "cs.CV"], "cs"),
        (["cs.LG+stat.ML", "cs.CV"], "cs.CV+cs.LG+stat.ML"),
        (["astro-ph.GA", "gr-qc", "all"], "all"),
    ],
)
def test_covering_is_one_pass_over_several_domains(names, expected):
    assert covering(names).name == expected
