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


def test_architecture_options_are_the_builders_keyword_arguments():
    import inspect

    from bopsweep.bnn.models import MODEL_OPTIONS

    assert set(MODEL_OPTIONS) == set(MODELS)
    for name, options in MODEL_OPTIONS.items():
        parameters = inspect.signature(MODELS[name]).parameters
        keywords = {
            k: p.default for k, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        assert keywords == options, name


def test_architecture_options_shape_the_model():
    from bopsweep.bnn.layers import binary_layers

    model = build_model("binarynet", (3, 32, 32), 10, filters=8, dense_units=16, kernel_size=5)
    shapes = {name: tuple(layer.weight.shape) for name, layer in binary_layers(model)}
    assert shapes["conv1"] == (8, 3, 5, 5)
    assert shapes["conv3"] == (16, 8, 5, 5) and shapes["conv6"] == (32, 32, 5, 5)
    # valid 5x5: 32 -> 28, pools: 14 -> 7 -> 3
    assert shapes["dense1"] == (16, 32 * 3 * 3) and shapes["dense3"] == (10, 16)
    mlp = build_model("mlp", (1, 8, 8), 10, dense_units=12)
    assert tuple(mlp.dense2.weight.shape) == (12, 12)
    birealnet = build_model("birealnet", (3, 64, 64), 5, filters=16)
    assert birealnet.conv1.weight.shape[0] == 16 and birealnet.fc.in_features == 128
    with pytest.raises(UserError, match="'filters' is not an option of model mlp"):
        build_model("mlp", (1, 8, 8), 10, filters=8)
