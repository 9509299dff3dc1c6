from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from autoqra.errors import SpaceError
from autoqra.space.model_spec import model_spec
from autoqra.space.search_space import load_space, parse_space, preset_names

ROOT = Path(__file__).resolve().parents[2]


def test_presets_load_and_fit_their_models():
    assert {"default", "paper", "llama-3.1-8b", "qwen2.5-7b"} <= set(preset_names())
    for name in preset_names():
        space = load_space(name)
        spec = model_spec(space.model)
        space.check_model(spec)
        assert {"low", "high"} <= set(space.fidelities)


def test_paper_space():
    space = load_space("paper")
    assert sorted(f.bits for f in space.choices.formats) == [2, 4, 8]
    assert space.choices.ranks == (4, 8, 16) and space.granularity == "block"


def test_default_space_ladder_orders_by_bytes():
    space = load_space("default")
    ladder = space.ladder(model_spec(space.model))
    # NF4-DQ stores 4.14 bits per weight, HQQ-4 with group 64 4.50: the ladder goes by bytes, not nominal bits
    assert [f.label for f in ladder] == ["hqq2-g64", "hqq3-g64", "nf4-dq", "hqq4-g64", "hqq8-g64", "bf16"]
    assert "micro" in space.fidelities


def base():
    return yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["choices"].update(ranks=[4, 4]), "repeat"),
    (lambda d: d["choices"].update(ranks=[]), "ranks"),
    (lambda d: d["choices"].update(ranks=[-1]), "ranks"),
    (lambda d: d["choices"]["formats"].append({"name": "hqq", "bits": 7}), "bits"),
    (lambda d: d["choices"]["formats"].append({"name": "fp32", "bits": 32}), "compute_dtype"),
    (lambda d: d["fidelities"].pop("high"), "high"),
    (lambda d: d["fidelities"]["low"].update(steps=0), "steps"),
    (lambda d: d["training"].update(batch_size="8"), "batch_size"),
    (lambda d: d["training"].update(optimizer="sgd"), "optimizer"),
    (lambda d: d.update(version=3), "version"),
    (lambda d: d.update(granularity="row"), "granularity"),
])
def test_bad_spaces_are_one_line_errors(mutate, message):
    data = base()
    mutate(data)
    with pytest.raises(SpaceError, match=message) as info:
        parse_space(yaml.safe_dump(data), source="x.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("x.yaml")


@pytest.mark.parametrize("text", ["", "- a\n- b", "a: [1, 2", "x: !!python/object:os.system 1", "\t\tkey: : :", "42"])
def test_broken_yaml(text):
    with pytest.raises(SpaceError) as info:
        parse_space(text)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(SpaceError, match="presets"):
        load_space("no-such-preset")
    with pytest.raises(SpaceError):
        load_space(str(tmp_path / "nope.yaml"))


def test_format_that_cannot_store_a_layer(tmp_path):
    data = base()
    data["choices"]["formats"] = [{"name": "hqq", "bits": 4, "group_size": 4096}]
    space = parse_space(yaml.safe_dump(data))
    with pytest.raises(SpaceError, match="HQQ packs 2 groups per byte"):
        space.check_model(model_spec(space.model))


yaml_scalars = st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=True) | st.text(max_size=6)
yaml_values = st.recursive(
    yaml_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzzed_fields_are_space_errors(data):
    doc = base()
    section = data.draw(st.sampled_from(["top", "choices", "training", "fidelities"]))
    target = doc if section == "top" else doc[section]
    key = data.draw(st.sampled_from(sorted(target) + ["unknown_key"]))
    target[key] = data.draw(yaml_values)
    try:
        parse_space(yaml.safe_dump(doc))
    except SpaceError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_text_is_space_or_space_error(text):
    try:
        parse_space(text)
    except SpaceError as exc:
        assert "\n" not in str(exc)
