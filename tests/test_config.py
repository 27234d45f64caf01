"""Typed, frozen configuration: hparams sets, ``--hparams`` overrides, TrainConfig."""

from __future__ import annotations

import pydantic
import pytest

from bopsweep.config import TrainConfig, make_train_config
from bopsweep.errors import UserError
from bopsweep.hparams import (
    HPARAM_KEYS,
    HPARAM_SETS,
    ORIGINAL_NAMES,
    HParams,
    parse_hparams,
    resolve_hparams,
)

# ----------------------------------------------------------------- parse_hparams


def test_parse_hparams():
    assert parse_hparams("threshold=1e-6,gamma=1e-3") == {"threshold": "1e-6", "gamma": "1e-3"}
    assert parse_hparams(" threshold = 0 , gamma=1e-2 ,") == {"threshold": "0", "gamma": "1e-2"}
    assert parse_hparams("") == {}
    assert parse_hparams("gamma_schedule=linear") == {"gamma_schedule": "linear"}


@pytest.mark.parametrize("text", ["gamma", "gamma=1e-3,threshold", "=1e-3"])
def test_parse_hparams_rejects_malformed_pairs(text):
    with pytest.raises(UserError, match="--hparams expects key=value pairs"):
        parse_hparams(text)


# -------------------------------------------------------------- resolve_hparams


def test_overrides_are_converted_to_declared_types():
    hp = resolve_hparams("binarynet", "bop", parse_hparams("threshold=1e-5,gamma=1e-2,epochs=3"))
    assert hp.threshold == 1e-5 and isinstance(hp.threshold, float)
    assert hp.gamma == 1e-2
    assert hp.epochs == 3 and isinstance(hp.epochs, int)
    # The rest of the set is untouched.
    assert hp.batch_size == 100 and hp.lr == 0.01


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError) as error:
        resolve_hparams("binarynet", "bop", {"gama": "1e-3"})
    message = str(error.value)
    assert "unknown hparam 'gama'" in message
    for key in ("gamma", "threshold", "lr", "batch_size", "epochs", "sigma"):
        assert key in message
    assert set(HPARAM_KEYS) == set(HParams.model_fields) | set(ORIGINAL_NAMES)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"gamma": "abc"}, "gamma", "valid number"),
        ({"gamma": "2"}, "gamma", "less than or equal to 1"),
        ({"gamma": "0"}, "gamma", "greater than 0"),
        ({"threshold": "-1e-6"}, "threshold", "greater than or equal to 0"),
        ({"epochs": "1.5"}, "epochs", "integer"),
        ({"batch_size": "0"}, "batch_size", "greater than 0"),
        ({"optimizer": "sgd"}, "optimizer", "'bop', 'bop2', 'bop2_unbiased' or 'latent'"),
        ({"gamma_schedule": "cosine"}, "gamma_schedule", "constant"),
    ],
)
def test_bad_values_are_user_errors(overrides, field, message):
    with pytest.raises(UserError) as error:
        resolve_hparams("binarynet", "bop", overrides)
    assert str(error.value).startswith(f"hparam {field}:")
    assert message in str(error.value)


def test_unknown_hparams_set_lists_the_model_sets():
    with pytest.raises(UserError) as error:
        resolve_hparams("binarynet", "bop_sec99", {})
    message = str(error.value)
    assert message.startswith("unknown hparams set 'bop_sec99' for binarynet; choose from: ")
    listed = message.split("choose from: ")[1].split(", ")
    assert listed == sorted(HPARAM_SETS["binarynet"])
    assert {"bop", "bop_sec52", "default"} <= set(listed)


def test_epochs_argument_overrides_the_set():
    assert resolve_hparams("binarynet", "bop_sec52", {}, epochs=2).epochs == 2
    assert resolve_hparams("binarynet", "bop_sec52", {"epochs": "7"}, epochs=2).epochs == 2


# ------------------------------------------------------------ the paper's sets


def test_binarynet_sets_match_the_paper():
    sets = HPARAM_SETS["binarynet"]
    assert {"default", "bop", "bop_sec52"} <= set(sets)

    latent = sets["default"]
    assert (latent.optimizer, latent.epochs, latent.batch_size) == ("latent", 100, 256)
    assert (latent.fp_optimizer, latent.lr, latent.lr_schedule) == ("adam", 5e-3, "constant")

    bop = sets["bop"]
    assert (bop.optimizer, bop.epochs, bop.batch_size) == ("bop", 100, 100)
    assert (bop.threshold, bop.gamma, bop.gamma_schedule) == (1e-6, 1e-3, "constant")
    assert bop.threshold_schedule == "constant"
    assert (bop.fp_optimizer, bop.lr, bop.lr_schedule) == ("adam", 0.01, "constant")

    sec52 = sets["bop_sec52"]
    assert (sec52.optimizer, sec52.epochs, sec52.batch_size) == ("bop", 500, 50)
    assert (sec52.threshold, sec52.gamma) == (1e-8, 1e-4)
    assert sec52.gamma_schedule == "exponential"
    assert (sec52.gamma_decay_factor, sec52.gamma_decay_epochs) == (0.1, 100)
    assert (sec52.fp_optimizer, sec52.lr, sec52.lr_schedule) == ("adam", 0.01, "constant")
    assert sec52.threshold_schedule == "constant"

    for hp in (latent, bop, sec52):
        assert hp.weight_decay == 0.0


def test_bop_sec52_gamma_decays_tenfold_every_100_epochs():
    # CIFAR-10 at batch 50: 1000 steps per epoch.
    gamma = HPARAM_SETS["binarynet"]["bop_sec52"].schedule("gamma", steps_per_epoch=1000)
    assert gamma(0) == 1e-4
    assert gamma(100 * 1000 - 1) == 1e-4
    assert gamma(100 * 1000) == pytest.approx(1e-5)
    assert gamma(250 * 1000) == pytest.approx(1e-6)
    assert gamma(499 * 1000) == pytest.approx(1e-8)


def test_schedules_in_steps():
    hp = HParams(
        epochs=10,
        lr=1.0,
        lr_schedule="linear",
        lr_end=0.5,
        threshold=1e-6,
        threshold_schedule="exponential",
        threshold_decay_factor=0.5,
        threshold_decay_epochs=2,
    )
    lr = hp.schedule("lr", steps_per_epoch=5)  # linear over all 10 epochs = 50 steps
    assert [lr(s) for s in (0, 25, 50, 60)] == [1.0, 0.75, 0.5, 0.5]
    threshold = hp.schedule("threshold", steps_per_epoch=5)
    assert [threshold(s) for s in (0, 9, 10, 20)] == [1e-6, 1e-6, 5e-7, 2.5e-7]
    assert hp.schedule("gamma", steps_per_epoch=5)(10**6) == hp.gamma


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(gamma_schedule="exponential", gamma_decay_factor=0.1), "gamma_decay_epochs"),
        (dict(gamma_schedule="exponential", gamma_decay_epochs=1.0), "gamma_decay_factor"),
        (dict(lr_schedule="linear"), "needs lr_end"),
    ],
)
def test_incomplete_schedules(values, message):
    with pytest.raises(UserError, match=message):
        name = next(iter(values)).split("_")[0]
        HParams(**values).schedule(name, steps_per_epoch=10)


def test_mlp_sets_exist():
    assert set(HPARAM_SETS["mlp"]) >= {"default", "bop"}
    assert HPARAM_SETS["mlp"]["default"].optimizer == "latent"
    assert HPARAM_SETS["mlp"]["bop"].optimizer == "bop"


# ------------------------------------------------------------------- TrainConfig


def test_train_config_is_frozen():
    config = make_train_config(model="mlp", dataset="digits", hparams_set="bop")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.seed = 3
    hp = config.resolved_hparams()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        hp.gamma = 0.5


def test_train_config_rejects_unknown_keys():
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        TrainConfig(model="mlp", learning_rate=0.1)
    with pytest.raises(UserError, match=r"learning_rate: unknown key; valid keys: model, dataset"):
        make_train_config(model="mlp", learning_rate=0.1)
    with pytest.raises(pydantic.ValidationError):
        HParams(gama=1e-3)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(model="resnet"), r"model: unknown model 'resnet'; choose from: .*binarynet, .*mlp"),
        (dict(model="mlp", dataset="svhn"), r"dataset: unknown dataset 'svhn'; choose from: "),
        (dict(model="mlp", preprocess_fn="crop"), r"unknown preprocess fn 'crop'"),
        (dict(model="mlp", device="tpu"), r"unknown device 'tpu'"),
        (dict(model="mlp", seed="one"), r"seed: "),
        (dict(model="mlp", epochs=0), r"epochs: "),
        (dict(model="mlp", hparams_set="bop_sec52"), r"unknown hparams set 'bop_sec52' for mlp"),
        (dict(model="mlp", hparams={"gamma": "abc"}), r"hparam gamma: "),
        (dict(model="mlp", hparams={"nope": 1}), r"unknown hparam 'nope'"),
    ],
)
def test_make_train_config_errors(values, message):
    with pytest.raises(UserError, match=message):
        make_train_config(**values)


def test_make_train_config_resolves_hparams():
    config = make_train_config(
        model="binarynet",
        dataset="cifar10",
        preprocess_fn="resize_and_flip",
        hparams_set="bop",
        hparams=parse_hparams("threshold=1e-6,gamma=1e-3"),
        epochs=4,
    )
    hp = config.resolved_hparams()
    assert (hp.threshold, hp.gamma, hp.epochs, hp.batch_size) == (1e-6, 1e-3, 4, 100)
    assert config.model_dump()["hparams"] == {"threshold": "1e-6", "gamma": "1e-3"}
    assert TrainConfig.model_validate(config.model_dump()) == config


# ------------------------------------------------------- the original code's names
def test_the_original_codes_imagenet_hparam_names():
    # bnn_optimization/models/xnor.py's bop set, by its own names.
    original = parse_hparams(
        "lr_start=2.5e-3,lr_end=5e-6,gamma_start=1e-4,gamma_end=1e-6,"
        "regularization_quantity=5e-7,threshold=1e-8"
    )
    hp = resolve_hparams("xnornet", "bop", original)
    assert (hp.lr, hp.lr_end, hp.gamma, hp.gamma_end, hp.threshold) == (
        2.5e-3,
        5e-6,
        1e-4,
        1e-6,
        1e-8,
    )
    # Keras' l2(q) is a weight decay of 2q.
    assert hp.weight_decay == 1e-6
    assert hp == resolve_hparams("xnornet", "bop", {})


def test_the_original_codes_sec52_decay_names():
    # bop_sec52: gamma x gamma_decay every decay_step steps (50000 / 50 * 100 = 100 epochs).
    hp = resolve_hparams(
        "binarynet",
        "bop_sec52",
        parse_hparams("gamma_decay=0.5,decay_step=1000,learning_rate=1e-3"),
    )
    assert (hp.gamma_decay_factor, hp.gamma_decay_steps, hp.lr) == (0.5, 1000, 1e-3)
    schedule = hp.schedule("gamma", steps_per_epoch=7)
    assert schedule(999) == pytest.approx(1e-4) and schedule(1000) == pytest.approx(5e-5)
    # The set's own period, 100 epochs of 1000 steps, is the original's decay_step.
    default = resolve_hparams("binarynet", "bop_sec52", {}).schedule("gamma", 1000)
    assert default(99_999) == pytest.approx(1e-4) and default(100_000) == pytest.approx(1e-5)


def test_an_original_name_and_its_bopsweep_name_together_are_refused():
    with pytest.raises(UserError, match="hparam lr sets lr a second time"):
        resolve_hparams("binarynet", "bop", {"lr_start": "1e-3", "lr": "1e-2"})
    with pytest.raises(UserError, match="regularization_quantity"):
        resolve_hparams("xnornet", "bop", {"regularization_quantity": "abc"})


def test_architecture_hparams_per_model():
    hp = resolve_hparams(
        "binarynet", "bop", parse_hparams("filters=32,dense_units=64,kernel_size=5")
    )
    assert hp.model_options() == {"filters": 32, "dense_units": 64, "kernel_size": 5}
    assert resolve_hparams("binarynet", "bop", {}).model_options() == {}
    assert resolve_hparams("mlp", "bop", {"dense_units": "16"}).model_options() == {
        "dense_units": 16
    }
    with pytest.raises(
        UserError, match=r"hparam filters is not an option of model mlp; .*dense_units"
    ):
        resolve_hparams("mlp", "bop", {"filters": "8"})
    with pytest.raises(
        UserError, match="not an option of model xnornet; its architecture hparams: none"
    ):
        resolve_hparams("xnornet", "bop", {"kernel_size": "3"})
    with pytest.raises(UserError, match="filters"):
        resolve_hparams("binarynet", "bop", {"filters": "0"})


# ------------------------------------------------------ "Bop and Beyond"'s sets
def test_bop2_sets_are_the_batchnorm_binarynets():
    # binarynet_batch.py:110 and :135 (branch conference): threshold 1e-5; 1e-6 is the
    # LayerNorm BinaryNet's.
    sets = HPARAM_SETS["binarynet"]
    for name, optimizer in (("bop2", "bop2"), ("bop2_unbiased", "bop2_unbiased")):
        hp = sets[name]
        assert (hp.optimizer, hp.epochs, hp.batch_size, hp.lr) == (optimizer, 100, 100, 0.01)
        assert (hp.threshold, hp.gamma, hp.sigma) == (1e-5, 1e-7, 1e-3)
        assert {hp.threshold_schedule, hp.gamma_schedule, hp.sigma_schedule} == {"constant"}
    assert sets["bop2ndOrder"] is sets["bop2"]
    assert sets["bop2ndOrder_unbiased"] is sets["bop2_unbiased"]


def test_bop2_exp_decays_every_rate_tenfold_every_100_epochs():
    for name in ("bop2_exp", "bop2_unbiased_exp"):
        hp = HPARAM_SETS["binarynet"][name]
        assert (hp.epochs, hp.batch_size) == (350, 50)
        # CIFAR-10 at batch 50: 1000 steps per epoch, the original's decay_step 100000.
        starts = {"threshold": 1e-6, "gamma": 1e-7, "sigma": 1e-3, "lr": 1e-2}
        for rate, start in starts.items():
            schedule = hp.schedule(rate, steps_per_epoch=1000)
            assert schedule(99_999) == start
            assert schedule(100_000) == pytest.approx(start / 10)
            assert schedule(349_999) == pytest.approx(start / 1000)


def test_bop2_cifar_is_linear_over_all_epochs():
    hp = HPARAM_SETS["binarynet"]["bop2_cifar"]
    assert HPARAM_SETS["binarynet"]["bop2ndOrder_CIFAR"] is hp
    assert HPARAM_SETS["binarynet"]["bop2ndOrder_testPoly"] is hp
    assert HPARAM_SETS["binarynet"]["bop2_unbiased_cifar"].optimizer == "bop2_unbiased"
    assert (hp.optimizer, hp.epochs, hp.batch_size) == ("bop2", 500, 50)
    ends = {"threshold": (1e-5, 1e-8), "gamma": (1e-2, 1e-5), "sigma": (1e-7, 1e-2)}
    for rate, (start, end) in {**ends, "lr": (1e-2, 1e-3)}.items():
        schedule = hp.schedule(rate, steps_per_epoch=1000)
        assert schedule(0) == start
        assert schedule(250_000) == pytest.approx((start + end) / 2)
        assert schedule(500_000) == pytest.approx(end)


@pytest.mark.parametrize(
    ("model", "epochs", "weight_decay"), [("xnornet", 100, 1e-6), ("birealnet", 150, 0.0)]
)
def test_bop2_imagenet_sets(model, epochs, weight_decay):
    hp = HPARAM_SETS[model]["bop2"]
    assert HPARAM_SETS[model]["bop2ndOrder_ImageNet"] is hp
    assert (hp.optimizer, hp.epochs, hp.batch_size, hp.weight_decay) == (
        "bop2",
        epochs,
        1024,
        weight_decay,
    )
    steps = epochs * 1000
    for rate, start, end in (
        ("threshold", 1e-8, 1e-5),
        ("gamma", 1e-4, 1e-9),
        ("sigma", 1e-5, 1e-2),
        ("lr", 2.5e-3, 5e-6),
    ):
        schedule = hp.schedule(rate, steps_per_epoch=1000)
        assert (schedule(0), schedule(steps)) == (start, pytest.approx(end))
    assert "bop2" not in HPARAM_SETS["binary_alexnet"]


def test_birealnet_constant_rate_bop2_sets():
    sets = HPARAM_SETS["birealnet"]
    for name, alias in (
        ("bop2_constant", "bop2ndorder"),
        ("bop2_unbiased_constant", "bop2ndorder_unbiased"),
    ):
        hp = sets[name]
        assert sets[alias] is hp
        assert (hp.epochs, hp.batch_size, hp.lr, hp.lr_schedule) == (300, 256, 0.01, "constant")
        assert (hp.threshold, hp.gamma, hp.sigma) == (1e-8, 1e-5, 1e-6)


def test_the_original_codes_schedule_names():
    # The README of "Bop and Beyond"'s code, section 5.1.4, by its own names.
    original = parse_hparams(
        "epochs_decay=100,threshold=1e-6,threshold_decay=0.1,gamma=1e-7,gamma_decay=0.1,"
        "sigma=1e-3,sigma_decay=0.1"
    )
    hp = resolve_hparams("binarynet", "bop2ndOrder_unbiased_testExp", original)
    assert hp == HPARAM_SETS["binarynet"]["bop2_unbiased_exp"]
    poly = parse_hparams("threshold_start=1e-5,sigma_start=1e-7,lr_decay=0.5")
    hp = resolve_hparams("binarynet", "bop2", poly)
    assert (hp.threshold, hp.sigma, hp.lr_decay_factor) == (1e-5, 1e-7, 0.5)
    with pytest.raises(UserError, match="hparam epochs_decay sets gamma_decay_epochs a second"):
        resolve_hparams("binarynet", "bop2", {"gamma_decay_epochs": "5", "epochs_decay": "9"})


def test_a_sigma_schedule():
    hp = HParams(
        optimizer="bop2",
        epochs=10,
        sigma=1e-3,
        sigma_schedule="exponential",
        sigma_decay_factor=0.1,
        sigma_decay_epochs=2,
    )
    sigma = hp.schedule("sigma", steps_per_epoch=5)
    assert [sigma(s) for s in (0, 9, 10)] == [1e-3, 1e-3, pytest.approx(1e-4)]
    with pytest.raises(UserError, match="sigma_schedule=linear needs sigma_end"):
        HParams(sigma_schedule="linear").schedule("sigma", steps_per_epoch=5)
    with pytest.raises(UserError, match="hparam sigma_end: "):
        resolve_hparams("binarynet", "bop2", {"sigma_end": "2"})


def test_training_follows_the_sigma_schedule():
    from torch import nn

    from bopsweep.bnn.layers import QuantLinear
    from bopsweep.train import build_optimizer

    model = nn.Sequential(QuantLinear(4, 3))
    hp = HPARAM_SETS["binarynet"]["bop2_cifar"]
    optimizer = build_optimizer(model, hp, steps_per_epoch=1000)
    optimizer.binary.param_groups[0]["step"] = 250_000
    assert optimizer.binary.current("sigma") == pytest.approx((1e-7 + 1e-2) / 2)
