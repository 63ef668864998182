"""The pack planner: every cell once, balanced loads, memory budgets respected."""

import pytest

from sae.config import ConfigError
from sae.planner import cell_cost, cell_memory_bytes, plan_packs

GRID = [(k, n) for k in (16, 32, 64, 128) for n in (3072, 4608, 6144, 9216, 12288)]
D_IN = 1536


def _flat(packs):
    return sorted(c for p in packs for c in p.cells)


@pytest.mark.parametrize("n_packs", [1, 2, 3, 8, 20, 50])
def test_every_cell_lands_in_exactly_one_pack(n_packs):
    packs = plan_packs(GRID, n_packs, batch_size=4096)
    assert _flat(packs) == sorted(GRID)
    assert len(packs) == min(n_packs, len(GRID))
    for p in packs:
        assert p.cost == sum(cell_cost(c, 4096) for c in p.cells)


def test_eight_gpus_finish_at_about_the_same_time():
    packs = plan_packs(GRID, 8, batch_size=4096)
    loads = [p.cost for p in packs]
    perfect = sum(loads) / 8
    assert max(loads) / perfect < 1.05
    assert min(loads) / perfect > 0.9


def test_a_memory_budget_adds_packs_until_each_fits():
    budget = 3 * cell_memory_bytes(GRID[-1], 4096, D_IN)
    packs = plan_packs(GRID, 2, batch_size=4096, memory_budget_bytes=budget, d_in=D_IN)
    assert len(packs) > 2
    assert all(p.memory_bytes <= budget for p in packs)
    assert _flat(packs) == sorted(GRID)


def test_a_cell_larger_than_the_budget_is_named():
    with pytest.raises(ConfigError, match=r"k=\d+ n=12288"):
        plan_packs(GRID, 1, batch_size=4096, memory_budget_bytes=1 << 20, d_in=D_IN)


def test_a_memory_budget_without_d_in_is_refused():
    with pytest.raises(ConfigError, match="d_in"):
        plan_packs(GRID, 1, batch_size=4096, memory_budget_bytes=1 << 30)


def test_plans_are_deterministic():
    a = plan_packs(GRID, 5, batch_size=1024)
    b = plan_packs(list(reversed(GRID)), 5, batch_size=1024)
    assert [p.cells for p in a] == [p.cells for p in b]
