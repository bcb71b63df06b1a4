"""Development and evaluation data seeds stay apart: declared once, refused for tuning, warned in comparisons."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

from branchbench import seeds
from branchbench.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_two_sets_are_disjoint_and_development_seeds_pass():
    assert not set(seeds.DEVELOPMENT) & set(seeds.EVALUATION)
    assert seeds.check_development(seeds.development_seeds(3), "--data-seeds") == [1000, 1001, 1002]
    with pytest.raises(seeds.SeedError, match="data seed 7 is an evaluation data seed"):
        seeds.check_development([1000, 7], "--data-seeds")
    with pytest.raises(seeds.SeedError, match="not a development data seed"):
        seeds.check_development([5000], "--data-seeds")
    with pytest.raises(seeds.SeedError, match="give 1 .. 10"):
        seeds.development_seeds(11)


def test_a_comparison_config_on_development_seeds_warns(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[sweep]\ndata_seeds = [0, 1000]\n[datasets.synthetic]\n[methods.shared_bottom]\n")
    with pytest.warns(seeds.SeedWarning, match=r"data_seeds \[1000\] are development data seeds"):
        load_config(path)


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_committed_comparison_configs_use_no_development_seed(config):
    with warnings.catch_warnings():
        warnings.simplefilter("error", seeds.SeedWarning)
        load_config(config)


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("*_study.py")), ids=lambda p: p.name)
def test_study_scripts_draw_development_seeds_and_never_select_on_test_or_truth(script):
    """Each study takes its data seeds from branchbench.seeds and says what it selects on (validation)."""
    text = script.read_text()
    tree = ast.parse(text)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module in ("branchbench.seeds", "branchbench.tune") for alias in node.names}
    assert imported & {"development_seeds", "check_development", "DEVELOPMENT"}, script.name
    assert "validation" in (ast.get_docstring(tree) or "").lower()


def test_a_development_config_must_draw_development_seeds(tmp_path):
    from branchbench.config import ConfigError

    path = tmp_path / "study.toml"
    text = "[sweep]\npurpose = 'development'\n{seeds}\n[datasets.synthetic]\n[methods.shared_bottom]\n"
    path.write_text(text.format(seeds="data_seeds = [1000, 1001]"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", seeds.SeedWarning)
        assert load_config(path).purpose == "development"
    path.write_text(text.format(seeds="data_seeds = [0, 1000]"))
    with pytest.raises(ConfigError, match="data seed 0 is an evaluation data seed"):
        load_config(path)
    path.write_text(text.format(seeds=""))
    with pytest.raises(ConfigError, match="give sweep.data_seeds"):
        load_config(path)
