import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.errors import PlanError
from autoqra.space.model_spec import model_spec
from autoqra.space.search_space import uniform_plan

SPEC = model_spec("smollm2-135m")


def mixed():
    fmts = [QuantFormat(name="hqq", bits=2), QuantFormat(name="nf4", bits=4, double_quant=True),
            QuantFormat(name="int8", bits=8), QuantFormat(name="bf16", bits=16)]
    groups = tuple(PlanGroup(name=n, modules=m, format=fmts[i % 4], rank=(0, 4, 16)[i % 3])
                   for i, (n, m) in enumerate(SPEC.block_groups()))
    return Plan(model=SPEC.name, granularity="block", groups=groups)


def test_json_round_trip_and_hash():
    plan = mixed()
    again = Plan.from_json(plan.to_json())
    assert again == plan and hash(again) == hash(plan) and again.plan_hash == plan.plan_hash
    data = json.loads(plan.to_json())
    assert data["version"] == 1 and data["groups"][0]["format"]["name"] == "hqq"
    other = uniform_plan(SPEC, QuantFormat(name="hqq", bits=4), 8)
    assert other.plan_hash != plan.plan_hash
    assert len({plan, again, other}) == 2


def test_format_defaults_and_labels():
    assert QuantFormat(name="hqq", bits=4).group_size == 64
    assert QuantFormat(name="nf4").bits == 4
    assert QuantFormat(name="nf4", double_quant=True).label == "nf4-dq"
    assert QuantFormat(name="bf16").label == "bf16"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(granularity="layer"), "granularity"),
    (lambda d: d["groups"][0].update(rank=-1), "rank"),
    (lambda d: d["groups"][0]["format"].update(bits=7), "bits"),
    (lambda d: d["groups"][0]["format"].update(name="gptq"), "name"),
    (lambda d: d["groups"][0]["format"].update(bits="4"), "bits"),
    (lambda d: d["groups"][1].update(modules=d["groups"][0]["modules"]), "twice"),
    (lambda d: d["groups"][0].update(extra=1), "extra"),
    (lambda d: d.update(groups=[]), "groups"),
    (lambda d: d["groups"][0]["format"].update(double_quant=True), "double_quant"),
])
def test_malformed_plans_are_one_line_errors(mutate, message):
    data = mixed().to_dict()
    mutate(data)
    with pytest.raises(PlanError, match=message) as info:
        Plan.from_dict(data)
    assert "\n" not in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_is_plan_or_plan_error(value):
    try:
        Plan.from_dict(value)
    except PlanError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_plan_error(text):
    with pytest.raises(PlanError):
        Plan.from_json(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_field_level_fuzz_of_a_valid_plan(data):
    plan = mixed().to_dict()
    group = data.draw(st.integers(0, len(plan["groups"]) - 1))
    key = data.draw(st.sampled_from(["name", "modules", "format", "rank"]))
    plan["groups"][group][key] = data.draw(json_values)
    try:
        Plan.from_dict(plan)
    except PlanError as exc:
        assert "\n" not in str(exc)
