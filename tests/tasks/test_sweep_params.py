"""The sweep's parameters are the library's settings: one declaration of each choice list,
type and bound, in sae/config.py, read by the options, the Prefect form and validation."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from flows.cli_params import model_command
from sae.config import (
    Arch,
    ComputeDtype,
    ConfigError,
    LrSchedule,
    SAEConfig,
    Selection,
    TrainConfig,
)
from tasks.sweep.config import GridParams, SweepParams

CHOICES = {
    "arch": Arch,
    "matryoshka_selection": Selection,
    "lr_schedule": LrSchedule,
    "compute_dtype": ComputeDtype,
}
TRAIN_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}
LIBRARY = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(SAEConfig)}
# A Matryoshka cell, so that every choice of every setting is allowed.
CELL = {"k": [4], "n_latents": [64], "arch": "matryoshka"}


def _cli(name: str, value: str) -> list[GridParams]:
    """The parameters the options made from :class:`GridParams` give for ``--name value``."""
    seen: list[GridParams] = []
    app = typer.Typer()
    model_command(app, GridParams, "grid")(seen.append)
    options = {"k": "4", "n-latents": "64", "arch": "matryoshka", name.replace("_", "-"): value}
    args = [arg for option, v in options.items() for arg in (f"--{option}", v)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == (0 if seen else 2), result.output
    return seen


@pytest.mark.parametrize("name", CHOICES)
def test_each_choice_list_is_the_librarys_in_the_options_the_form_and_validation(name):
    choices = list(typing.get_args(CHOICES[name]))
    assert LIBRARY[name] == CHOICES[name]  # the dataclass field uses the alias
    assert list(typing.get_args(GridParams.model_fields[name].annotation)) == choices
    assert SweepParams.model_json_schema()["properties"][name]["enum"] == choices
    for value in choices:
        assert getattr(SweepParams(**{**CELL, name: value}), name) == value
        assert [getattr(params, name) for params in _cli(name, value)] == [value]
    with pytest.raises(ValidationError, match=name):
        SweepParams(**{**CELL, name: "nope"})
    assert _cli(name, "nope") == []


@pytest.mark.parametrize("name", CHOICES)
def test_the_library_rejects_a_value_outside_its_choices(name):
    choices = list(typing.get_args(CHOICES[name]))
    config = TrainConfig if name in TRAIN_NAMES else functools.partial(SAEConfig, 4, 8, 2)
    with pytest.raises(ConfigError, match=re.escape(f"{name} must be one of {choices}")):
        config(**{name: "nope"})


def test_every_library_setting_keeps_the_librarys_type_and_default():
    hints = typing.get_type_hints(GridParams)
    # The settings with help are those a sweep takes (not the per-cell d_in, k, n_latents).
    settings = [
        f
        for cls in (TrainConfig, SAEConfig)
        for f in dataclasses.fields(cls)
        if "help" in f.metadata
    ]
    knobs = [f for f in settings if f.name in GridParams.model_fields]
    assert set(CHOICES) < {f.name for f in knobs}
    for f in knobs:
        # The command line and the form take a list where cfg.json keeps a tuple.
        want = list[int] | None if f.name == "prefixes" else LIBRARY[f.name]
        assert hints[f.name] == want, f.name
        assert GridParams.model_fields[f.name].default == f.default, f.name


def test_a_bound_is_the_librarys_alone():
    """dead_threshold_samples > 0 is SAEConfig's check; the sweep reports it per cell."""
    assert GridParams.model_fields["dead_threshold_samples"].metadata == []
    with pytest.raises(ValidationError, match="dead_threshold_samples must be positive"):
        SweepParams(k=[4], n_latents=[64], dead_threshold_samples=0)
