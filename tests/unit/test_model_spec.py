import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from autoqra.domain import Plan, QuantFormat
from autoqra.errors import ModelSpecError, PlanError
from autoqra.space.model_spec import MODEL_ALIASES, model_spec, packaged_config_path, spec_from_config
from autoqra.space.search_space import uniform_plan
from tests.conftest import tiny_config

# Published parameter counts of the real checkpoints (model cards / safetensors index totals).
PUBLISHED = {
    "llama-3.1-8b": (8_030_261_248, 32 * 7),
    "qwen2.5-7b": (7_615_616_512, 28 * 7),
    "mistral-7b": (7_241_732_096, 32 * 7),
    "phi-3-mini": (3_821_079_552, 32 * 4),  # fused qkv_proj and gate_up_proj
    "gemma-2b": (2_506_172_416, 18 * 7),
    "smollm2-135m": (134_515_008, 30 * 7),
}


@pytest.mark.parametrize("alias", sorted(PUBLISHED))
def test_packaged_configs_count_published_parameters(alias):
    total, linears = PUBLISHED[alias]
    spec = model_spec(alias)
    assert spec.params.total == total
    assert len(spec.linears) == linears
    p = spec.params
    assert p.block_linear_weights + p.block_linear_biases + p.embeddings + p.lm_head + p.norms + p.other == total


@pytest.mark.parametrize("alias", ["llama-3.1-8b", "phi-3-mini", "gemma-2b"])
def test_counts_match_transformers_num_parameters(alias):
    spec = model_spec(str(packaged_config_path(alias)))  # the config file path works as well as the alias
    from autoqra.space.model_spec import load_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(alias))
    assert spec.params.total == model.num_parameters()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert [lin.name for lin in spec.linears] == linears


def test_tied_embeddings_counted_once():
    gemma = model_spec("gemma-2b")
    llama = model_spec("llama-3.1-8b")
    assert gemma.tie_word_embeddings and gemma.params.lm_head == 0
    assert not llama.tie_word_embeddings and llama.params.lm_head == llama.params.embeddings


def test_phi3_fused_projections_have_roles():
    spec = model_spec("phi-3-mini")
    block0 = {lin.name.rsplit(".", 1)[-1]: lin for lin in spec.linears if lin.block == 0}
    assert set(block0) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert block0["qkv_proj"].out_features == 3 * 3072 and block0["qkv_proj"].role == "attn_in"
    assert block0["gate_up_proj"].out_features == 2 * 8192 and block0["gate_up_proj"].role == "mlp_in"


def test_tiny_models_of_every_family(family):
    config = tiny_config(family)
    spec = spec_from_config(config, family)
    model = AutoModelForCausalLM.from_config(config)
    assert spec.params.total == model.num_parameters()
    modules = dict(model.named_modules())
    for lin in spec.linears:
        assert isinstance(modules[lin.name], torch.nn.Linear)
        assert modules[lin.name].weight.shape == (lin.out_features, lin.in_features)
    assert len(spec.block_groups()) == 2
    assert len(spec.module_groups()) == len(spec.linears)


def test_module_and_block_granularity_cover_every_linear():
    spec = model_spec("smollm2-135m")
    for granularity in ("block", "module"):
        plan = uniform_plan(spec, QuantFormat(name="hqq", bits=4), 8, granularity)
        spec.check_plan(plan)
        assert sorted(plan.module_choices()) == sorted(lin.name for lin in spec.linears)


def test_check_plan_rejects_missing_and_foreign_modules():
    spec = model_spec("smollm2-135m")
    plan = uniform_plan(spec, QuantFormat(name="hqq", bits=4), 8)
    data = plan.to_dict()
    data["groups"] = data["groups"][1:]
    with pytest.raises(PlanError, match="unassigned"):
        spec.check_plan(Plan.from_dict(data))
    data = plan.to_dict()
    data["groups"][0]["modules"][0] = "model.layers.99.mlp.up_proj"
    with pytest.raises(PlanError, match="does not have"):
        spec.check_plan(Plan.from_dict(data))


def test_model_folder_and_bad_names(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(packaged_config_path("gemma-2b").read_text())
    assert model_spec(str(folder)).params.total == PUBLISHED["gemma-2b"][0]
    with pytest.raises(ModelSpecError):
        model_spec(str(tmp_path / "missing.json"))
    with pytest.raises(ModelSpecError):
        model_spec(str(tmp_path))  # folder without config.json
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ModelSpecError, match="model_type"):
        model_spec(str(bad))
    with pytest.raises(ModelSpecError):
        model_spec("no-such-org/no-such-model-xyz")  # offline: cannot resolve


def test_aliases_all_resolve():
    for alias in MODEL_ALIASES:
        assert model_spec(alias).num_blocks > 0
