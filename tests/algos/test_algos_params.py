"""Declared parameters of algorithm pieces: Param checks, declarations checked at registration, resolution from the
settings (own args > flat key > default), shipping with the snapshot, and the presets' unchanged arguments."""

import pickle

import pytest

import rl.algos as algos
from rl.algos.registry import Param, Registry


def test_param_check_converts_and_bounds():
    clip = Param(0.2, ge=0, lt=1)
    assert clip.check(0.5) == 0.5 and clip.check(0) == 0.0 and isinstance(clip.check(0), float)
    assert clip.check("3e-4") == 3e-4  # YAML 1.1 reads 3e-4 as a string
    for bad, fragment in ((1.0, "< 1"), (-0.1, ">= 0"), (True, "a float"), ("wide", "a float"), (None, "a float"),
                          (float("nan"), "a float"), ([0.1], "a float")):
        with pytest.raises(ValueError, match=fragment):
            clip.check(bad)
    dual = Param(None, gt=1, value_type=float)
    assert dual.nullable and dual.check(None) is None and dual.check(3) == 3.0
    assert dual.allowed() == "a float > 1 or null"
    flag = Param(True)
    assert flag.check(False) is False
    with pytest.raises(ValueError, match="a bool"):
        flag.check(1)
    rounds = Param(4, ge=1)
    assert rounds.check("5") == 5
    with pytest.raises(ValueError, match="an int"):
        rounds.check(2.5)
    with pytest.raises(TypeError, match="value_type"):
        Param(None)  # a None default needs a type
    with pytest.raises(TypeError, match="value_type"):
        Param([1, 2])


def test_registration_checks_the_declaration_against_the_function():
    reg = Registry("policy loss", info={"aggregation": None})

    def loss(logprobs, old, adv, mask, scale=1.0):
        return logprobs

    with pytest.raises(TypeError, match="'scal' is not a keyword argument"):
        reg.register("a", params={"scal": Param(1.0)})(loss)
    with pytest.raises(ValueError, match="declares default 2.0"):
        reg.register("b", params={"scale": Param(2.0)})(loss)
    with pytest.raises(ValueError, match="default of parameter 'scale'"):
        reg.register("c", params={"scale": Param(1.0, gt=1)})(loss)
    with pytest.raises(TypeError, match="unknown info field"):
        reg.register("d", regenerates=True)
    with pytest.raises(TypeError, match="Param"):
        reg.register("e", params={"scale": 1.0})(loss)
    reg.register("f", params={"scale": Param(1.0, gt=0)}, aggregation="token-mean")(loss)
    assert reg.params("f")["scale"].gt == 0 and reg.info("f", "aggregation") == "token-mean"
    reg.register("g")(loss)
    assert reg.params("g") == {} and reg.info("g", "aggregation") is None  # the registry's default
    reg.register("h", params={"anything": Param(0.5)})(lambda *a, **kw: None)  # **kwargs takes any name
    assert "a" not in reg and "b" not in reg and "c" not in reg


def test_snapshot_ships_declarations_through_cloudpickle():
    cloudpickle = pytest.importorskip("cloudpickle")
    driver = Registry("group sampler", info={"regenerates": False})

    @driver.register("user_sampler", params={"keep_frac": Param(0.5, gt=0, le=1)}, regenerates=True)
    def user_sampler(rewards, group, *, num_groups_target=None, rng=None, keep_frac=0.5):
        return keep_frac

    worker = Registry("group sampler", info={"regenerates": False})
    worker.restore(pickle.loads(cloudpickle.dumps(driver.snapshot())))
    assert worker.get("user_sampler")(None, None) == 0.5
    assert worker.params("user_sampler")["keep_frac"].le == 1 and worker.info("user_sampler", "regenerates") is True
    worker.restore({"bare": lambda rewards, group: None})  # a table of bare functions: no declarations
    assert worker.params("bare") == {} and worker.info("bare", "regenerates") is False


def test_piece_kwargs_own_args_win_over_flat_keys_over_defaults():
    algo = {"clip_low": 0.1, "clip_high": 0.3}
    assert algos.piece_kwargs("policy_loss", "ppo_clip", algo) == {"clip_low": 0.1, "clip_high": 0.3,
                                                                    "dual_clip": None}
    algo["policy_loss_args"] = {"clip_high": 0.5}
    assert algos.piece_kwargs("policy_loss", "ppo_clip", algo)["clip_high"] == 0.5
    assert algos.piece_kwargs("policy_loss", "gspo", {"clip_low": 0.2, "clip_high": 0.28}) == {
        "clip_low": 3e-4, "clip_high": 4e-4}  # the flat PPO range is not GSPO's
    assert algos.piece_kwargs("adv_estimator", "grpo", {"norm_adv_by_std": False}) == {
        "eps": 1e-6, "norm_by_std": False}
    assert algos.piece_kwargs("adv_estimator", "rloo", {"norm_adv_by_std": False}) == {}
    assert algos.piece_kwargs("kl_estimator", "k3", {}) == {} and algos.piece_kwargs("sampler", "dupo", {}) == {}
    with pytest.raises(KeyError, match="settings: adv_estimator, policy_loss"):
        algos.piece_kwargs("loss_agg_mode", "token-mean", {})
    with pytest.raises(KeyError, match="unknown policy loss 'nope'"):
        algos.piece_kwargs("policy_loss", "nope", {})


@pytest.mark.parametrize("name", sorted(algos.PRESETS))
def test_presets_give_the_pieces_the_arguments_they_always_had(name):
    preset = algos.preset(name)
    assert algos.check_piece_params(preset, preset) == []
    assert algos.piece_kwargs("policy_loss", preset["policy_loss"], preset) == {
        "clip_low": 0.2, "clip_high": 0.2 if name == "grpo" else 0.28, "dual_clip": None}
    assert algos.piece_kwargs("adv_estimator", preset["adv_estimator"], preset) == {"eps": 1e-6, "norm_by_std": True}
    assert algos.sampler_regenerates(preset["sampler"]) == (name == "dapo")


def test_check_piece_params_reports_flat_keys_the_chosen_piece_ignores():
    preset = algos.preset("dapo")
    assert algos.check_piece_params(preset | {"policy_loss": "gspo"}, preset) == []  # preset values: not the user's
    problems = algos.check_piece_params(preset | {"policy_loss": "gspo", "clip_low": 0.1, "dual_clip": 2.0}, preset)
    assert len(problems) == 2 and all("'gspo'" in p and "'ppo_clip'" in p for p in problems)
    assert "algo.policy_loss_args.clip_low" in problems[0] and "algo.policy_loss_args (its parameters" in problems[1]
    assert algos.check_piece_params(preset | {"clip_low": 0.1}, None) == []  # no preset: nothing to compare with
