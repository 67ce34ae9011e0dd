"""A scripted WebWatcher expert: the cold-start trajectories of SEEDS 9.2, acting only through the tools.

    turn 1: <think> ... </think> <tool_call>VLSearchImage(image)</tool_call> <tool_call>ocr(image)</tool_call>
            (two calls in one turn, run concurrently: the ParallelReActFormat grammar)
    then:   the entity is the reverse search's best match whose name the OCR also read (else the best match);
            visit its page (the URL the search result gives), then the page of each next hop but the answer
    last:   <answer> the gold answer </answer> if the last page the tools returned shows it, else "unknown"

It knows the item's walk (the planner of the paper's strong model) but identifies the image's entity from
the observations alone: when the tools point to another entity than the item's key, it answers "unknown"
and the RFT filter drops the trajectory.

Owns: `WebWatcherExpert(world, item, base_url)` (the signature `launch.stages.expert_trajectories` calls)
with `next_turn(observation) -> str`. Never: call tools itself or read pixels.
"""

from __future__ import annotations

import json
import re

from envs.world.pages import page_url

_HIT = re.compile(r"^\d+\. (.+?), an? [^.]+\.(?: Page: (\S+))?", re.M)


class WebWatcherExpert:
    def __init__(self, world, item: dict, base_url: str | None = None):
        for key in ("question", "answer", "image_url", "path"):
            if key not in item:
                raise KeyError(f"WebWatcherExpert: item {item.get('uid')!r} lacks {key!r} (browsecomp_vl items)")
        self.world, self.item, self.base_url = world, item, (base_url or "").rstrip("/")
        self.step = -1  # -1: before identifying the image; then the index into item["path"] of the next page

    @staticmethod
    def _calls(thought: str, *calls: tuple[str, dict]) -> str:
        blocks = "\n".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)
        return f"<think>\n{thought}\n</think>\n{blocks}"

    def next_turn(self, observation: str | None) -> str:
        item = self.item
        if observation is None:
            return self._calls("I should find out what the image shows: a reverse image search, and read its text.",
                               ("VLSearchImage", {"image_urls": [item["image_url"]]}),
                               ("ocr", {"image_url": item["image_url"]}))
        if self.step < 0:
            hits = _HIT.findall(observation)
            if not hits:
                return self._unknown("The image search gave no result I can use.")
            read = (observation.split("Text in ", 1)[-1] if "Text in " in observation else "").replace(" ", "")
            name, url = next(((n, u) for n, u in hits if n.replace(" ", "") in read), hits[0])  # OCR drops spaces
            if name != self.world.entity(item["path"][0]).name:
                return self._unknown(f"The image seems to show {name}, but I cannot connect it to the question.")
            self.step = 1
            return self._visit(url or self.base_url + page_url(item["path"][0]),
                               f"The image shows {name}. I will read its page.")
        if self.step < len(item["path"]) - 1:  # the answer is read off the last subject's page
            eid = item["path"][self.step]
            name = self.world.entity(eid).name
            if name not in observation:
                return self._unknown("The page did not lead me further.")
            self.step += 1
            return self._visit(self.base_url + page_url(eid), f"The page names {name}; I will read its page.")
        answer = str(item["answer"])
        if answer not in observation:
            return self._unknown("I could not confirm the answer on the page.")
        return f"<think>\nThe page confirms it: the answer is {answer}.\n</think>\n<answer>{answer}</answer>"

    def _visit(self, url: str, thought: str) -> str:
        return self._calls(thought, ("visit", {"url": [url], "goal": "the next clue of the question"}))

    @staticmethod
    def _unknown(why: str) -> str:
        return f"<think>\n{why}\n</think>\n<answer>unknown</answer>"
