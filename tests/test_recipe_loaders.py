"""The recipe loaders of launch/embedder.py and launch/dynamicbench.py (rl/embed_train.py `load_recipe`) hold to the
project's rule: bad config is one message naming the key, where it came from (config file, command line) and what
is allowed, exit code 2, before anything starts; a setting is never silently ignored. Fast: each run stops at load."""

from __future__ import annotations

import json

import pytest

from launch import dynamicbench, embedder
from launch.common import ROOT

EMBEDDER_CONFIG = ROOT / "launch/configs/embedder/embedder.yaml"
BENCH_CONFIG = ROOT / "launch/configs/dynamicbench/dynamicbench.yaml"


def refused(main, argv: list[str], capsys) -> str:
    """main's exit code must be 2 with one configuration error on stderr (no traceback); returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: ") and err.count("configuration error") == 1 and "Traceback" not in err
    return err


# --- launch/embedder.py ---------------------------------------------------------------------------------------------


def test_embedder_reads_yaml_floats_as_numbers():
    """YAML 1.1 reads 1e-5 (no dot) as a string; the loader converts it as rl/config.py does."""
    cfg = embedder.load(EMBEDDER_CONFIG, ["train.lr=1e-5", "train.margin=0"], smoke=False)
    assert cfg.train.lr == 1e-5 and cfg.train.margin == 0.0


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=.inf"], "bad value for 'train.lr' (from the command line): inf is not a finite number"),
    (["train.margin=.inf"], "bad value for 'train.margin' (from the command line): inf is not a finite number"),
    (["eval.ks=[]"], "bad value for 'eval.ks' (from the command line): Expected `array` of length >= 1"),
    (["eval.ks=[1, 101]"], "bad value for 'eval.ks' (from the command line): Expected `int` <= 100"),
    (["train.merge_at=[1.5]"], "bad value for 'train.merge_at' (from the command line): Expected `float` < 1.0"),
    (["train.trainable_layers=-3"], "bad value for 'train.trainable_layers' (from the command line): Expected `int` "
                                    ">= 1 (given -3); allowed: null or a int >= 1"),
    (["train.trainable_layers=7"], "bad value for 'train.trainable_layers' (from the command line): 7, but the model"),
    (["model.path=/no/such/folder"], "bad value for 'model.path' (from the command line): '/no/such/folder' is not a "
                                     "model folder here (no such folder)"),
    (["model.dim=8"], "bad value for 'model.dim' (from the command line): Matryoshka truncation"),
    (["model.task=find it"], "'model.task' (from the command line) would be read by nothing in this run, so it "
                             "would be silently ignored: model.kind is minilm"),
    (["train.num_ranks=1", "train.timeout_s=60"], "'train.timeout_s' (from the command line) would be read by "
                                                  "nothing in this run"),
    (["run.dir=/tmp/x", "run.name=y"], "'run.name' (from the command line) would be read by nothing in this run"),
    (["model.taks=x"], "unknown key 'model.taks' (from the command line); allowed keys: kind, path"),
])
def test_embedder_bad_settings_are_one_message_naming_key_and_source(overrides, message, capsys):
    assert message in refused(embedder.main, ["--dry-run", *overrides], capsys)


def test_embedder_names_the_config_file_and_lets_the_command_line_moot_its_settings(tmp_path, capsys):
    """A setting of the file is refused naming the file; one the command line made moot (model.task after
    model.kind=minilm, run.name after run.dir) is not."""
    path = tmp_path / "emb.yaml"
    path.write_text("model:\n  kind: minilm\n  task: find it\n")
    assert f"'model.task' (from the config file {path}) would be read by nothing" in \
        refused(embedder.main, ["--dry-run", "--config", str(path)], capsys)
    path.write_text("model:\n  kind: qwen3-embedding\n  path: tiny\n  task: find it\nrun:\n  name: x\n")
    cfg = embedder.load(path, ["model.kind=minilm", "model.path=null", "run.dir=/tmp/x"], smoke=False)
    assert cfg.model.kind == "minilm" and cfg.run.dir == "/tmp/x"


# --- launch/dynamicbench.py -----------------------------------------------------------------------------------------


@pytest.fixture
def leads(tmp_path):
    """A 3-lead corpus (4 sentences each) with the leads' JSON shape."""
    path = tmp_path / "leads.json"
    text = "{0} was born in 1900. {0} lived in Paris. {0} wrote books. {0} died in 1990."
    path.write_text(json.dumps({t: {"title": t, "extract": text.format(t)} for t in ("Ann", "Bob", "Cy")}))
    return [f"corpus.path={path}", "corpus.subjects=2", "corpus.store_docs=3"]


@pytest.mark.parametrize("override, key, allowed", [
    ("corpus.store_docs=-5", "corpus.store_docs", "Expected `int` >= 1"),
    ("corpus.subjects=-3", "corpus.subjects", "Expected `int` >= 1"),
    ("corpus.block_words=0", "corpus.block_words", "Expected `int` >= 1"),
    ("writer.k_local=-1", "writer.k_local", "Expected `int` >= 0"),
    ("writer.sections=0", "writer.sections", "Expected `int` >= 1"),
    ("writer.temperature=-2", "writer.temperature", "Expected `float` >= 0.0"),
    ("grader.probes=0", "grader.probes", "Expected `int` >= 1"),
    ("grader.retries=-1", "grader.retries", "Expected `int` >= 0"),
    ("grader.target_words=-5", "grader.target_words", "Expected `int` >= 1"),
    ("grader.timeout_s=.inf", "grader.timeout_s", "inf is not a finite number"),
    ("settings=[]", "settings", "Expected `array` of length >= 1"),
    ("settings=[with_doc, with_doc]", "settings", "names a setting twice"),
    ("corpus.embedder=nosuch", "corpus.embedder", "unknown kind 'nosuch'"),
    ("corpus.path=/no/such.json", "corpus.path", "'/no/such.json' cannot be read: No such file or directory"),
    ("corpus.subjects=4", "corpus.subjects", "3 leads with >= 3 sentences among the first 3"),
])
def test_dynamicbench_bad_settings_are_one_message_naming_key_and_source(override, key, allowed, leads, capsys):
    err = refused(dynamicbench.main, ["--dry-run", *leads, override], capsys)
    assert f"bad value for '{key}' (from the command line): " in err and allowed in err


@pytest.mark.parametrize("override, message", [
    ("writer.mode.x=1", "override 'writer.mode.x': 'mode' is a value, not a section"),
    ("writer.sections=[", "command-line override 'writer.sections=[': the value is not valid YAML"),
    ("writer.sectoins=2", "unknown key 'writer.sectoins' (from the command line); allowed keys: backend"),
])
def test_dynamicbench_malformed_overrides_are_config_errors_not_tracebacks(override, message, capsys):
    assert message in refused(dynamicbench.main, ["--dry-run", override], capsys)


def test_dynamicbench_config_file_errors_name_the_file(tmp_path, leads, capsys):
    """A key given twice (YAML would keep the last block silently) and a bad value both name the file."""
    path = tmp_path / "bench.yaml"
    path.write_text("writer:\n  mode: agent\nwriter:\n  sections: 1\n")
    assert f"config file '{path}': key 'writer' appears twice in one mapping" in \
        refused(dynamicbench.main, ["--dry-run", "--config", str(path)], capsys)
    path.write_text("grader:\n  probes: 0\n")
    assert f"bad value for 'grader.probes' (from the config file {path}): Expected `int` >= 1" in \
        refused(dynamicbench.main, ["--dry-run", "--config", str(path), *leads], capsys)
