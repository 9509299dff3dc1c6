"""What a resume must share with its run: the memory model's version comes first, so a run priced by
an older memory model is refused with that reason, not with the budget bytes it happens to change."""

from __future__ import annotations

import dataclasses

import pytest

from autoqra.errors import AutoQRAError
from autoqra.service import run_store
from autoqra.service.requests import SearchRequest
from autoqra.service.search import _check_against_study, _core_settings, prepare_search
from autoqra.space.memory import MEMORY_MODEL_VERSION


@pytest.fixture
def prepared(tmp_path):
    return prepare_search(SearchRequest(budget="qlora", out=tmp_path / "run"))


def test_settings_record_the_memory_model_and_older_runs_read_as_version_1(prepared):
    settings = _core_settings(prepared)
    assert settings["memory_model"] == MEMORY_MODEL_VERSION > 1
    assert run_store.run_key(settings)["memory_model"] == MEMORY_MODEL_VERSION
    old = {k: v for k, v in settings.items() if k != "memory_model"}
    assert run_store.run_key(old)["memory_model"] == 1


def test_a_resume_of_a_run_priced_by_another_memory_model_is_refused_with_that_reason(prepared):
    settings = _core_settings(prepared)
    # a version-1 run at the qlora budget: its bytes differed too, but the version is the reason shown
    old = {k: v for k, v in settings.items() if k != "memory_model"}
    old["budget"] = {**old["budget"], "bytes": old["budget"]["bytes"] + 12345}
    with pytest.raises(AutoQRAError, match=r"priced by another memory model \(memory_model \(1 in the run, "
                                           rf"{MEMORY_MODEL_VERSION} now\)"):
        _check_against_study(dataclasses.replace(prepared, resumed=old))
    # the same run, same version: accepted; another budget: refused naming the budget
    _check_against_study(dataclasses.replace(prepared, resumed=settings))
    other = {**settings, "budget": {**settings["budget"], "bytes": settings["budget"]["bytes"] + 1}}
    with pytest.raises(AutoQRAError, match="differs from the run in budget_bytes"):
        _check_against_study(dataclasses.replace(prepared, resumed=other))
