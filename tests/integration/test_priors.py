"""`autoqra priors` on the embedded model, and the priors file's schema checks."""

import json
import os
import subprocess
import sys

import pytest

from autoqra.priors.schema import Priors, PriorsError
from autoqra.space.model_spec import model_spec


@pytest.fixture(scope="module")
def priors_file(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("priors") / "priors.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AUTOQRA_CACHE": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-m", "autoqra", "priors", "--calibration", "4", "--seq-len", "64",
                           "--demand-batches", "2", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "block.29" in proc.stdout and "sensitivity 30/30" in proc.stderr  # progress is printed
    return out


def test_priors_are_measured_for_every_block(priors_file):
    priors = Priors.from_json(priors_file.read_text(), source=str(priors_file))
    spec = model_spec("smollm2-135m")
    assert priors.granularity == "block" and priors.lowest_format == "hqq2-g64"
    assert [g.name for g in priors.groups] == [name for name, _ in spec.block_groups()]
    sens = [g.sensitivity for g in priors.groups]
    dem = [g.demand for g in priors.groups]
    assert min(sens) > 0 and min(dem) > 0
    assert max(sens) > 2 * min(sens) and max(dem) > 2 * min(dem)  # they discriminate between blocks
    priors.check_matches(spec.block_groups(), priors.weights_fingerprint, "p")
    with pytest.raises(PriorsError, match="groups do not match"):
        priors.check_matches(spec.module_groups(), priors.weights_fingerprint, "p")
    with pytest.raises(PriorsError, match="other weights"):
        priors.check_matches(spec.block_groups(), "0" * 16, "p")


def test_foreign_or_broken_priors_are_errors_not_zeros(priors_file):
    data = json.loads(priors_file.read_text())
    for bad, needle in [
        ({"layers": {"0": 0.1}}, "not an autoqra priors file"),  # another tool's schema
        ({**data, "schema": "autoqra.priors/0"}, "not an autoqra priors file"),
        ({**data, "groups": []}, "groups"),
        ({**data, "groups": [{**data["groups"][0], "sensitivity": -1}]}, "sensitivity"),
        ({**data, "extra": 1}, "extra"),
    ]:
        with pytest.raises(PriorsError, match=needle):
            Priors.from_json(json.dumps(bad))
    with pytest.raises(PriorsError, match="not valid JSON"):
        Priors.from_json("{")
