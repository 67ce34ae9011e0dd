"""DynamicBench (SEEDS 10): report generation with dual-path retrieval and its five-metric grader.

    store.py   blocks, `ReportStore` (cosine over block embeddings, argmax first), `dual_search`, `DualBackend`
    writer.py  the report system: plan -> per-section queries and search -> section writing -> merge; the agent
               writer's task prompt and its offline policy (`ScriptedAgentWriter`)
    grader.py  probe QA pairs from a reference report and the 1-10 judge on five metrics (strict parser)

The recipe on a local corpus is launch/dynamicbench.py. Never: import anything of the project outside `envs/`.
"""

from envs.dynamicbench.grader import METRICS, Grade, Probe, grade_report, parse_grade, scripted_grade_reply, \
    scripted_probes
from envs.dynamicbench.store import Block, DualBackend, ReportStore, cosine, dual_search, split_blocks
from envs.dynamicbench.writer import AGENT_HOW, AGENT_TASK, Report, ReportWriter, ScriptedAgentWriter, ScriptedWriter

__all__ = ["METRICS", "Grade", "Probe", "grade_report", "parse_grade", "scripted_grade_reply", "scripted_probes",
           "Block", "DualBackend", "ReportStore", "cosine", "dual_search", "split_blocks", "AGENT_HOW", "AGENT_TASK",
           "Report", "ReportWriter", "ScriptedAgentWriter", "ScriptedWriter"]
