"""A scripted VRAG-RL expert: the cold-start trajectories of SEEDS 4.5, acting only through the tools.

    <think> ... </think> <search> {question} </search>          -> a page image
    (the gold page shown)  <think> ... </think> <bbox>[x1, y1, x2, y2]</bbox>   -> the zoomed region
    <think> ... </think> <answer> {answer} </answer>

It knows the task's gold page and the region of the answer on it (the planner / grounding expert of
VRAG-RL's multi-expert sampling), but sees the pages only as the tools show them: it reads which page the
search showed and the size it was shown at from the observation's caption ("[image_1: page P, WxH]"),
maps the gold region from raw page pixels into that frame (the inverse of the crop mapping, SEEDS 4.2),
and searches again with the page's title when the first search showed another page. The answer is the
gold answer, so failed or wrong trajectories come only from the tools (e.g. the page never ranked); the
RFT filter keeps the correct ones.

Owns: `VisualExpert(world, item, base_url)` (the signature `launch.stages.expert_trajectories` calls)
with `next_turn(observation) -> str`.

Never: call tools itself or read pixels.
"""

from __future__ import annotations

import re

_SHOWN = re.compile(r"\[image_\d+: page (\S+), (\d+)x(\d+)\]")
_CROPPED = re.compile(r"\[image_\d+: crop of \S+, \d+x\d+\]")


class VisualExpert:
    def __init__(self, world, item: dict, base_url: str | None = None, max_searches: int = 3, pad: int = 6):
        for key in ("question", "answer", "gold_region", "page_size"):
            if key not in item:
                raise KeyError(f"VisualExpert: task {item.get('uid')!r} lacks {key!r} (visual_qa items with the "
                               "gold page's size, see launch/vrag.py)")
        self.item, self.max_searches, self.pad = item, max_searches, pad
        self.searches = 0

    def _search(self, why: str, query: str) -> str:
        self.searches += 1
        return f"<think>{why}</think>\n<search> {query} </search>"

    def next_turn(self, observation: str | None) -> str:
        item = self.item
        if observation is None:
            return self._search("I need the page that shows this. I will search for it.", item["question"])
        if _CROPPED.search(observation):
            return f"<think>The zoomed region shows the answer.</think>\n<answer> {item['answer']} </answer>"
        shown = _SHOWN.search(observation)
        gold = item["gold_region"]
        if shown and shown.group(1) == gold["page_id"]:
            w, h = int(shown.group(2)), int(shown.group(3))
            W, H = item["page_size"]
            x1, y1, x2, y2 = gold["bbox"]
            box = [max(0, int(x1 * w / W) - self.pad), max(0, int(y1 * h / H) - self.pad),
                   min(w, int(x2 * w / W) + 1 + self.pad), min(h, int(y2 * h / H) + 1 + self.pad)]
            return f"<think>This page has the answer here. I will zoom in to read it.</think>\n<bbox>{box}</bbox>"
        if self.searches < self.max_searches:
            title = item.get("page_title") or item["question"]
            return self._search("This page does not answer the question. I will search for another one.", title)
        return "<think>I could not find the page.</think>\n<answer> unknown </answer>"
