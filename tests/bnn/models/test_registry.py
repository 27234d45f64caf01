"""The model registry answers names without importing torch, and names exactly the
builders the model modules register."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torch import nn

from bopsweep.bnn.models import MODELS, build_model, canonical_model_name, model_names
from bopsweep.errors import UserError

# In a fresh interpreter: the names before any model module is imported, whether
# torch was imported by then, and the names once every builder has been loaded.
_PROBE = """
import json, sys
from bopsweep.bnn.models import MODELS, canonical_model_name, model_names
before = model_names()
canonical_model_name("alexnet")
torch_before = "torch" in sys.modules
builders = {name: MODELS[name].__module__ for name in list(MODELS)}
print(json.dumps([before, torch_before, model_names(), builders]))
"""


def test_names_need_no_torch_and_match_what_the_modules_register():
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    before, torch_before, after, builders = json.loads(result.stdout)
    assert not torch_before
    assert before == after
    assert {"binarynet", "mlp", "binary_alexnet", "alexnet", "xnornet", "birealnet"} <= set(before)
    assert builders == {name: f"bopsweep.bnn.models.{name}" for name in builders}


def test_alias_builds_the_same_model():
    assert canonical_model_name("alexnet") == "binary_alexnet"
    assert MODELS["binary_alexnet"] is MODELS[canonical_model_name("alexnet")]
    model = build_model("mlp", (1, 8, 8), 10)
    assert isinstance(model, nn.Module)


def test_unknown_model_lists_every_name():
    with pytest.raises(UserError) as info:
        canonical_model_name("resnet")
    assert "unknown model 'resnet'" in str(info.value)
    assert all(name in str(info.value) for name in model_names())
