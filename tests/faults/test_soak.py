"""The soak test of issue 16, shortened: the embedded default's RL stage (launch/configs/websailor.yaml with the
smoke sizes, 4 tasks x 2 samples a step, no SFT: a random-init policy) through real Ray actor groups (vLLM,
the 2-rank FSDP2 trainer, 2 env servers, the reward worker) with faults injected on a schedule:
  - malformed model output: every episode's second turn is an adversarial turn of the fuzz harness's classes,
    and what the random policy writes anyway (tests/faults/soak_hooks.py, the grammar "soak_react");
  - an exception inside one episode in six (the episode ends alone with finish "error");
  - the world's pages, per RL step (`PHASES`): slow (past the visit tool's timeout), slow with both env servers
    killed while a visit is in flight (they restart), answering HTTP 500, oversized (past visit's max_bytes);
  - the judge, an OpenAI-compatible stub (reward.judge={backend: openai}): 500s, hangs, huge bodies, bodies
    that are not JSON, a 503 then a verdict.
The run must finish; every task admitted in every step has its n trajectories, each with a finish reason, in the
step's parquet; every fault class has its counter > 0 in metrics.jsonl (and the restarts equal the kills).

Shortened: 4 RL steps (each page phase once), turns of 128 tokens, about 2 minutes on 2 cores (`pytest -m slow
tests/faults/test_soak.py`). The issue's 10-minute soak cycles the phases over more steps, same command with
WINDWARD_SOAK_STEPS=16 (any number works; 4 steps take 114 s with start-up and pre-filter).
The fast tests below pin the counters and the injections the soak relies on."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pyarrow.parquet as pq
import pytest

from launch.common import ROOT, SMOKE, merged_overrides
from rl.config import load_config
from rl.data import TaskSampler
from rl.groups import summed
from tests.faults import soak_hooks
from tests.reward.openai_stub import OpenAIStub, Reply

WEBSAILOR = ROOT / "launch/configs/websailor.yaml"
STEPS = int(os.environ.get("WINDWARD_SOAK_STEPS", "4"))
PHASES = ("slow", "kill", "status", "oversized")  # the world's pages during RL step s: PHASES[(s - 1) % 4]
VISIT_TIMEOUT_S, SLOW_S = 2, 3.0  # a slow page outlasts the visit tool's timeout
OVERSIZED = 6_000_000  # past the visit tool's max_bytes (5,000,000)
FINISH = {"answer", "max_turns", "max_tokens", "error"}


def judge_reply(body: dict, seen: int) -> Reply:
    """The stub judge: faults by the marker in the prediction (soak_hooks.JUDGE_FAULTS), else a verdict."""
    prompt = body["messages"][-1]["content"]
    if "soak:judge-500" in prompt:
        return Reply("down", status=500)
    if "soak:judge-hang" in prompt:
        return Reply(delay_s=30.0)  # cut at the judge's timeout_s
    if "soak:judge-huge" in prompt:
        return Reply(size=8 << 20)  # past max_reply_bytes (4 MiB)
    if "soak:judge-badjson" in prompt:
        return Reply(raw=b'{"choices": [')
    if "soak:judge-flaky" in prompt and seen == 0:
        return Reply("busy", status=503)
    return Reply("Correct" if "soak:right" in prompt else "Incorrect")


def soak_config(run_dir: Path, judge_url: str, steps: int = STEPS):
    overrides = [f"run.dir={run_dir}", f"run.steps={steps}", "run.progress=false", "run.stage_timeout_s=300",
                 "pipeline.stages=[rl]", "data.batch_size=4", "rollout.request_timeout_s=120",
                 # the random policy writes every turn to the limit; the faults need turns, not long ones
                 "agent.max_tokens_per_turn=128",
                 f"env.tools={{search: {{top_k: 1}}, visit: {{timeout_s: {VISIT_TIMEOUT_S}}}}}",
                 "agent.hooks=tests.faults.soak_hooks:hooks",
                 f"reward.judge={{backend: openai, base_url: '{judge_url}', model: judge, timeout_s: 2, "
                 "max_retries: 1, backoff_s: 0.05, backoff_max_s: 0.2, batch_deadline_s: 60}"]
    cfg = load_config(WEBSAILOR, overrides, overlay=merged_overrides(WEBSAILOR, SMOKE))
    # agent.format lists the shipped grammars; the soak's is registered by soak_hooks, imported on every worker
    return msgspec.structs.replace(cfg, agent=msgspec.structs.replace(cfg.agent, format=soak_hooks.FORMAT))


class FaultSchedule(threading.Thread):
    """The driver's side of the schedule: when RL step s starts (the DUPO pre-filter is done and metrics.jsonl
    holds s - 1 rows), every page of the world gets PHASES[(s - 1) % 4]; in a "kill" step both env servers are
    killed once, half a second after a page request arrives (a visit is then in flight). Runs until `done`."""

    def __init__(self, env, run_dir: Path, steps: int):
        super().__init__(daemon=True, name="soak-fault-schedule")
        self.env, self.run_dir, self.steps = env, run_dir, steps
        self.done = threading.Event()
        self.phases: list[tuple[int, str]] = []
        self.kills = 0
        self.error: BaseException | None = None

    def started_step(self) -> int:
        if not (self.run_dir / "dupo_prefilter.json").exists():
            return 0
        metrics = self.run_dir / "metrics.jsonl"
        return 1 + (metrics.read_text().count("\n") if metrics.exists() else 0)

    def requests(self) -> int:
        import ray

        return ray.get(self.env.world_host.request_count.remote(), timeout=30)

    def run(self) -> None:
        import ray

        try:
            step, killed, base = 0, set(), 0
            while not self.done.wait(0.2):
                now = self.started_step()
                if now != step and now <= self.steps:
                    step, phase = now, PHASES[(now - 1) % len(PHASES)]
                    self.env.set_fault("*", clear=True)
                    if phase in ("slow", "kill"):
                        self.env.set_fault("*", delay_s=SLOW_S)
                    elif phase == "status":
                        self.env.set_fault("*", status=500)
                    else:
                        self.env.set_fault("*", size=OVERSIZED)
                    self.phases.append((step, phase))
                    base = self.requests()
                if step and PHASES[(step - 1) % len(PHASES)] == "kill" and step not in killed \
                        and self.requests() > base:
                    time.sleep(0.5)
                    for server in self.env.servers:
                        ray.kill(server, no_restart=False)  # max_restarts=-1: it comes back
                        self.kills += 1
                    killed.add(step)
        except BaseException as err:  # the test reports it
            self.error = err


def step_tasks(kept: list[dict], batch_size: int, seed: int, steps: int) -> list[list[dict]]:
    """The tasks each step admitted: the run's sampler replayed over the tasks the pre-filter kept."""
    sampler = TaskSampler(kept, batch_size, seed=seed)
    return [sampler.next_batch() for _ in range(steps)]


def total(rows: list[dict], key: str) -> float:
    return sum(r.get(key) or 0 for r in rows)


@pytest.mark.slow
def test_soak_rl_stage_finishes_accounts_for_every_task_and_counts_every_fault(tmp_path):
    import ray

    from launch import stages
    from rl.controller import train
    from rl.groups import RLGroups

    run_dir = tmp_path / "soak"
    started = not ray.is_initialized()
    t0 = time.time()
    with OpenAIStub(judge_reply) as judge:
        cfg = soak_config(run_dir, judge.base_url)
        data = stages.synthesize(cfg, run_dir)
        groups = RLGroups(cfg)
        schedule = FaultSchedule(groups.env, run_dir, cfg.run.steps)
        schedule.start()
        try:
            summary = train(cfg, run_dir, groups=groups, tasks=stages.as_tasks(data["rl"]))
        finally:
            schedule.done.set()
            schedule.join(timeout=30)
            groups.shutdown()
            if started:
                ray.shutdown()
        judged = {m: judge.count(m) for m in soak_hooks.JUDGE_FAULTS[1:]}
    seconds = time.time() - t0
    assert schedule.error is None, schedule.error
    assert [p for _, p in schedule.phases] == [PHASES[i % len(PHASES)] for i in range(STEPS)], schedule.phases

    # it finished, and trained
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and len(summary["history"]) == STEPS
    assert summary["policy_version"] >= 1, "no step trained"

    # every task accounted for: each admitted task has its n trajectories, each with a finish reason
    manifest = json.loads((run_dir / "dupo_prefilter.json").read_text())
    assert set(manifest["pass_counts"]) == {t["uid"] for t in data["rl"]}  # the pre-filter rolled out every task
    kept = [t for t in stages.as_tasks(data["rl"]) if t["uid"] not in set(manifest["dropped"])]
    finishes = []
    for step, admitted in enumerate(step_tasks(kept, cfg.data.batch_size, cfg.run.seed, STEPS), 1):
        t = pq.read_table(run_dir / "trajectories" / f"step_{step:06d}.parquet").to_pydict()
        for task in admitted:
            mine = [i for i, uid in enumerate(t["uid"]) if uid == task["uid"]]
            assert sorted(t["sample"][i] for i in mine) == list(range(cfg.rollout.n)), (step, task["uid"])
            assert {t["group"][i] for i in mine} == {task["group"]}, (step, task["uid"])
        assert len(t["uid"]) == cfg.data.batch_size * cfg.rollout.n, step
        assert set(t["finish"]) <= FINISH, (step, set(t["finish"]))
        finishes += t["finish"]

    # every fault counted in metrics.jsonl
    last = rows[-1]
    tool = lambda name, key: max((r.get(name) or {}).get(key, 0) for r in rows)  # noqa: E731  (per server process)
    counts = {
        "malformed model turns (rollout/invalid_actions)": total(rows, "rollout/invalid_actions"),
        "malformed tool arguments (bad_arguments)": tool("search", "bad_arguments") + tool("visit", "bad_arguments"),
        "episode errors (rollout/episode_errors/InjectedFault)": total(rows, "rollout/episode_errors/InjectedFault"),
        "visit errors (visit.errors)": tool("visit", "errors"),
        "slow pages (world/delayed)": last["world/delayed"],
        "pages answering 500 (world/status)": last["world/status"],
        "oversized pages (world/oversized)": last["world/oversized"],
        "env server restarts (env/server_restarts)": last["env/server_restarts"],
        "calls to a dead or restarting server (env_client/server_died)": total(rows, "env_client/server_died"),
        "judge fallbacks (judge/failures)": total(rows, "judge/failures"),
        "judge retries (judge/retries)": total(rows, "judge/retries"),
    }
    step_s = [round(r["time/step"]) for r in rows]
    print(f"\nsoak: {STEPS} steps in {seconds:.0f} s (steps {step_s} s); phases {schedule.phases}; "
          f"kills {schedule.kills}; finishes { {f: finishes.count(f) for f in sorted(set(finishes))} }; "
          f"judge requests by fault {judged}")
    for what, n in counts.items():
        print(f"  {what}: {n}")
    assert all(n > 0 for n in counts.values()), counts
    assert all(n > 0 for n in judged.values()), judged
    assert last["env/server_restarts"] == schedule.kills
    assert total(rows, "rollout/episode_errors") >= finishes.count("error") > 0


# --- the pieces the soak relies on, fast ------------------------------------------------------------------


def test_world_pages_padded_past_a_size_and_every_fault_counted():
    from envs.world import Fault, WorldServer, generate_world, page_url

    world = generate_world(0, "tiny")
    with WorldServer(world) as server:
        path = page_url(next(iter(world.entities)))
        plain = httpx.get(server.base_url + path, timeout=5).content
        server.set_fault(path, Fault(size=200_000, times=1))
        padded = httpx.get(server.base_url + path, timeout=5).content
        server.set_fault(path, Fault(status=500, delay_s=0.05, times=1))
        assert httpx.get(server.base_url + path, timeout=5).status_code == 500
        assert httpx.get(server.base_url + path, timeout=5).content == plain  # the faults expired
        assert server.fault_counts() == {"delayed": 1, "status": 1, "oversized": 1}
    assert len(padded) == 200_000 and padded.startswith(plain) and padded.endswith(b"-->")
    with pytest.raises(ValueError, match="size"):
        Fault(size=-1)


def test_visit_refuses_an_oversized_world_page():
    from envs.server import EnvServer
    from envs.world import Fault

    server = EnvServer({"visit": {"max_bytes": 100_000}}, world={"seed": 0, "size": "tiny", "latency_s": 0.0})
    try:
        pages = server.world_host.server
        path = "/wiki/" + next(iter(server.world_host.world.entities))
        pages.set_fault(path, Fault(size=300_000))
        obs = asyncio.run(server.call("visit", {"url": [server.base_url + path], "goal": "g"}))
        assert obs.error and "larger than 100000 bytes" in obs.text
        assert pages.fault_counts()["oversized"] == 1
    finally:
        server.close()


def test_summed_adds_counters_and_keeps_latency_max_and_mean():
    rows = [{"judge/failures": 2, "judge/max_latency_s": 1.5, "judge/mean_latency_s": 1.0, "flag": True, "s": "x"},
            {"judge/failures": 3, "judge/max_latency_s": 0.5, "judge/mean_latency_s": 3.0, "episode_errors/X": 1}]
    assert summed(rows) == {"judge/failures": 5, "judge/max_latency_s": 1.5, "judge/mean_latency_s": 2.0,
                            "episode_errors/X": 1}


def test_soak_grammar_injects_on_its_schedule_and_keeps_the_models_first_turn():
    from rollout.formats import make_format

    soak_hooks._TASKS["q"] = {"question": "Who founded it?", "urls": ["http://127.0.0.1:1/wiki/x"]}
    fmt = make_format(soak_hooks.FORMAT)

    def episode(sample: int) -> list[str]:
        ep = fmt.for_episode(f"q/{sample}")
        first = ep.parse("<answer>the model's own</answer>")
        assert first.kind == "answer" and first.answer == "the model's own"  # turn 1: the model's, always
        out = []
        for _ in range(4):
            try:
                a = ep.parse("model text")
            except soak_hooks.InjectedFault:
                return out + ["error"]
            out.append(a.name if a.kind == "tool_call" else a.answer if a.kind == "answer" else a.kind)
        return out

    runs = [episode(s) for s in range(2 * 9 * 6)]  # every choice comes up, round-robin (untouched beats error)
    untouched = [k for k in runs if k == ["none"] * 4]
    errors = [k for k in runs if k[-1] == "error"]
    scripted = [k for k in runs if k not in untouched and k[-1] != "error"]
    assert len(untouched) == 12 and len(errors) == 18 - 6 and all(k[1:] == ["error"] for k in errors)
    assert all(k[1:3] == ["search", "visit"] for k in scripted), scripted
    answers = [k[3] for k in scripted]
    assert {a.split()[0] for a in answers} == {"soak:right", "soak:wrong"}
    assert {a.split()[1] if " " in a else "" for a in answers} == set(soak_hooks.JUDGE_FAULTS)


def test_rollout_worker_counts_invalid_actions(tiny_model):
    from envs.base import LocalEnv
    from rollout.worker import RolloutWorker

    w = RolloutWorker("hf", tiny_model, {"dtype": "float32"}, env=LocalEnv([]),
                      agent={"max_turns": 3, "max_tokens_per_turn": 4, "max_context_tokens": 4096})
    batch = asyncio.run(w.run_group({"uid": "q", "group": 0, "question": "Q?", "answer": "42"}, 2,
                                    {"max_tokens": 4, "temperature": 1.0}))
    # four random tokens are no action: every turn but the last (max_turns ends the episode) is invalid
    counters = asyncio.run(w.counters())
    assert batch.num_rows == 2 and counters["invalid_actions"] == 2 * 2, counters


def test_an_answer_with_a_lone_surrogate_is_stored_not_a_crash(tiny_model):
    """Found by the soak: an answer the grammar returned with a lone surrogate (the fuzz harness's raw unicode,
    parsed) made the group's Arrow batch fail (UnicodeEncodeError), and the step with it."""
    from transformers import AutoTokenizer

    from envs.base import LocalEnv
    from rollout.agent import AgentConfig, run_episode
    from rollout.chat import ChatTemplate
    from rollout.engines import SamplingParams
    from rollout.formats.react import Action, ReActFormat
    from rollout.scripted import TextPolicyEngine
    from rollout.trajectory import build_batch

    class SurrogateAnswer(ReActFormat):
        def parse(self, text):
            return Action("answer", answer="Zatrea \ud86a!")

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ep = asyncio.run(run_episode(TextPolicyEngine(lambda obs: "<answer>x</answer>", tok), LocalEnv([]),
                                 ChatTemplate(tok), {"uid": "q", "question": "Q?"}, SamplingParams(max_tokens=64),
                                 AgentConfig(max_turns=2), SurrogateAnswer()))
    assert ep.record.finish == "answer" and ep.record.answer_text == "Zatrea \ufffd!"
    assert build_batch([ep.record]).column("answer_text").to_pylist() == ["Zatrea \ufffd!"]
