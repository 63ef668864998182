"""The steering bench's parts (:mod:`tasks.search.steer_bench`) on the axis SAE, where
which feature marks a category and what an edit does are known."""

from __future__ import annotations

import numpy as np
import torch

from tasks.search import steer_bench
from tests.tasks.search.axes import QUERY, D, engine_for, make_corpus, unit


def test_a_category_gets_the_feature_whose_firing_predicts_it_best():
    fires_NF = torch.zeros(100, 3, dtype=torch.bool)
    fires_NF[:40, 1] = True  # fires on cs.RO's 30 papers and 10 others: F1 0.86
    fires_NF[:5, 2] = True  # only on 5 of them: F1 0.29
    fires_NF[:, 0] = True  # on every paper: F1 0.46
    names = [["cs.LG", "cs.RO"]] * 30 + [["cs.LG", "cs.CV"]] * 10 + [["cs.LG"]] * 60
    cats = steer_bench.categories(names, fires_NF, min_papers=20)
    # cs.LG is every paper's (the domain itself), cs.CV has too few.
    assert [(c.name, c.feature) for c in cats] == [("cs.RO", 1)]
    assert cats[0].f1 == np.float32(2 * 30 / (40 + 30))
    assert cats[0].papers_N.tolist() == [True] * 30 + [False] * 70


def test_the_curves_measure_a_category_brought_in_and_a_feature_sent_away():
    ids, titles, x = make_corpus()
    x = x.copy()
    x[:10] = unit(QUERY + 1.2 * np.eye(D)[6])  # cs.RO: the query's neighbours, with 6
    x[10:20] = unit(QUERY + 0.3 * np.eye(D)[0])  # its top 10, with more of 0
    eng, _, _ = engine_for((ids, titles, x))
    in_N = torch.zeros(len(ids), dtype=torch.bool)
    in_N[:10] = True
    cat = steer_bench.Category("cs.RO", in_N, 6, 1.0)
    xs = [torch.from_numpy(QUERY)]
    base, base_cos, add = steer_bench.add_curve(eng, xs, [cat], [0.0, 4.0])
    assert base == 0.0 and add.share == {0.0: 0.0, 4.0: 1.0} and add.new[4.0] == 10
    assert add.cosine[4.0] < base_cos
    fires_NF = steer_bench.fires(eng)
    before, supp = steer_bench.suppress_curve(eng, xs, fires_NF, [0.0, 1.0])
    assert before == 1.0 and supp.share[1.0] == 1.0  # 1: the strongest, as it is
    assert supp.share[0.0] < 0.5 and supp.new[1.0] == 0
