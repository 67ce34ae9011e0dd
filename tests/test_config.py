"""Configuration: bad keys, types and values fail with one clear message and exit code 2,
before any actor starts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from launch.common import ROOT
from rl.config import Config, ConfigError, describe, load_config, parse_override

WEBSAILOR = ROOT / "launch/configs/websailor.yaml"


def test_defaults_and_overrides():
    cfg = load_config(WEBSAILOR, ["trainer.lr=1e-6", "run.steps=3", "rollout.backend=hf", "trainer.betas=[0.8, 0.9]"])
    assert isinstance(cfg, Config)
    assert cfg.trainer.lr == 1e-6 and cfg.run.steps == 3 and cfg.rollout.backend == "hf"
    assert cfg.trainer.betas == (0.8, 0.9)
    assert cfg.rollout.n == 8 and cfg.data.task == "world_qa"  # from the file


@pytest.mark.parametrize("override, expect", [
    ("algo.lrr=1", ["unknown key 'algo.lrr'", "command line", "clip_low"]),
    ("trainer.lr=-1", ["'trainer.lr'", "> 0", "-1"]),
    ("trainer.lr=abc", ["'trainer.lr'", "float"]),
    ("rollout.backend=sglang", ["'rollout.backend'", "'vllm'", "'hf'"]),
    ("rollout.n=1", ["'rollout.n'", ">= 2"]),
    ("data.qa_anchor_rate=0", ["data.qa_one_page", "data.qa_anchor_rate > 0"]),
    ("nosection.x=1", ["unknown key 'nosection'", "trainer"]),
    ("algo=3", ["'algo'", "keys"]),
    ("run.steps", ["key.path=value"]),
])
def test_bad_overrides_name_the_key(override, expect):
    with pytest.raises(ConfigError) as err:
        load_config(WEBSAILOR, [override])
    for fragment in expect:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  lr: 1e-3\n  warmup: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "unknown key 'trainer.warmup'" in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=1e-6") == ("a.b", "1e-6")  # YAML 1.1: converted by msgspec later
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_help_lists_every_key():
    lines = "\n".join(describe())
    for key in ("trainer.lr", "rollout.backend", "algo.clip_high", "run.dir", "data.target_token"):
        assert key in lines


def test_cli_exits_2_before_any_actor(tmp_path):
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "launch/websailor.py"), "algo.clip_hihg=0.3",
                           f"run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "unknown key 'algo.clip_hihg'" in proc.stderr
    assert "run folder" not in proc.stdout  # nothing started
    assert not (tmp_path / "run").exists()
    assert time.time() - t0 < 60


def test_cli_help_lists_configuration():
    proc = subprocess.run([sys.executable, str(ROOT / "launch/websailor.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "trainer.lr=" in proc.stdout and "rollout.backend=" in proc.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "launch/configs").glob("*.yaml") if p.name != "smoke.yaml"))
def test_every_shipped_config_loads(name):
    """Each recipe's config (smoke.yaml is an overlay, applied by --smoke) validates as a whole."""
    cfg = load_config(ROOT / "launch/configs" / name)
    assert cfg.run.steps >= 1
