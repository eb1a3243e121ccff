"""Every config file: its presets load, record themselves in `config.preset`, and leave unset values None."""

import importlib
import pathlib

import pytest

from configs import common

CONFIGS = sorted(p.stem for p in pathlib.Path(__file__).parents[1].joinpath("configs").glob("*.py")
                 if p.stem not in ("__init__", "common") and not p.stem.endswith("_base"))
# Fields where 0 or '' once meant "not set": they are None now.
OPTIONAL = ("batch_size", "num_steps", "num_images", "grad_groups", "steps", "workdir", "deepjscc_workdir",
            "fid_weights", "diffsc_config", "clip_norm", "max_timed_steps")


def _leaves(tree, path=""):
    for key, value in tree.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{path}{key}.")
        else:
            yield f"{path}{key}", key, value


def _presets(module) -> list[str]:
    found = [""]
    for preset in ("smoke", "cpu"):
        try:
            module.get_config(preset)
            found.append(preset)
        except ValueError as exc:
            assert "unknown preset" in str(exc)
    return found


@pytest.mark.parametrize("name", CONFIGS)
def test_presets_are_recorded_and_unset_values_are_none(name):
    module = importlib.import_module(f"configs.{name}")
    presets = _presets(module)
    assert "smoke" in presets
    for preset in presets:
        c = module.get_config(preset)
        assert c.preset == preset
        for path, key, value in _leaves(c):
            assert not (key in OPTIONAL and value in (0, "")), f"{name}:{preset} {path}={value!r} (use None)"


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose one of '', 'smoke', 'cpu'"):
        importlib.import_module("configs.casc_cr48").get_config("fast")


def test_unset_fields_take_typed_values():
    c = common.train(batch_size=8)
    assert c.grad_groups is None
    c.grad_groups = 4
    assert c.grad_groups == 4
    with pytest.raises(TypeError):
        c.grad_groups = "four"
