"""torch's optimizers run eagerly: the same updates, hooks still called, and a
process that trains never imports ``torch._dynamo`` for them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bopsweep.bnn import eager

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=0.01, eps=1e-7),
    "adam_decay": lambda params: torch.optim.Adam(
        [{"params": params[:1], "weight_decay": 1e-4}, {"params": params[1:]}], lr=0.01
    ),
    "adam_single_tensor": lambda params: torch.optim.Adam(params, lr=0.01, foreach=False),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
}


def _params(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((7, 5), (5,))]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_eager_steps_are_torch_s_steps_bit_for_bit(name):
    eager.install()
    stock_params, eager_params = _params(0), _params(0)
    stock, ours = OPTIMIZERS[name](stock_params), OPTIMIZERS[name](eager_params)
    stock_step = eager.STOCK_STEPS[type(stock)]
    assert type(stock).step is not stock_step, "install() left the stock step in place"
    grads = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(stock_params, eager_params, strict=True):
            a.grad = torch.randn(a.shape, generator=grads)
            b.grad = a.grad.clone()
        stock_step(stock)
        ours.step()
    for a, b in zip(stock_params, eager_params, strict=True):
        assert torch.equal(a, b)
    # A saved state loads into the other (state_dict and load_state_dict run eagerly).
    ours.load_state_dict(stock.state_dict())
    assert str(ours.state_dict()) == str(stock.state_dict())


def test_step_hooks_still_run():
    eager.install()
    params = _params(0)
    optimizer = torch.optim.Adam(params, lr=0.01)
    called = []
    optimizer.register_step_pre_hook(lambda *_: called.append("pre"))
    optimizer.register_step_post_hook(lambda *_: called.append("post"))
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    assert called == ["pre", "post"]


TRAINS = """
import json, sys
import torch
from bopsweep.config import make_train_config
from bopsweep.data import load_dataset
from bopsweep.train import Trainer

data = load_dataset("digits")
def config(**hparams):
    return make_train_config(model="mlp", dataset="digits", hparams_set="bop", epochs=1,
                             device="cpu", max_train_samples=64, hparams=hparams)
for configs in (config(), config(fp_optimizer="sgd"), config(optimizer="latent"),
                [config(gamma=1e-3), config(gamma=1e-4)]):
    trainer = Trainer(configs, data)
    trainer.fit()
    trainer.load_state_dict(trainer.state_dict())
print(json.dumps("torch._dynamo" in sys.modules))
"""


def test_training_never_imports_dynamo():
    """Plain and fused, Adam, SGD and latent weights, a state dict saved and loaded."""
    done = subprocess.run(
        [sys.executable, "-c", TRAINS], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) is False
