"""Chat templating that is append-only in token space (DESIGN section 3, "Engine").

Owns: `ChatTemplate`, which turns the tokenizer's own chat template into the pieces the agent loop
appends between model turns: what closes a model turn the model did not close itself, and the
framing around a tool observation or an injected user message. The pieces are found once by
rendering a probe conversation with markers, so any template that renders turns in order works
(Qwen3 with tools and <think>, ChatML, Qwen2.5-VL).

The invariant: for a conversation whose assistant turns are what the model generated, the prompt
ids plus every appended id equal the tokenizer's tokenization of the template rendered over the
whole conversation (ending at the model's last end-of-turn token). The loop never re-tokenizes
history. Observation text is tokenized with special-token parsing off: a page containing
"<|im_end|>" or "</tool_response>" stays text and never becomes a control token. Text no tokenizer
takes (a lone surrogate, which a JSON escape such as "\\ud800" in a tool argument decodes to) is made
tokenizable first (`tokenizable`: U+FFFD in its place), so templating never raises on what a model or a
tool wrote.

Known template quirk (Qwen3): an assistant turn with no reasoning is rendered with an empty
<think></think> block only while it is the last message; the ReAct grammar always thinks, so the
invariant holds for its turns.

Images (a vision-language policy, `rollout/vision.py` VisionSpec): an observation with images is a
message whose content is the images, then the text, as the template renders a content list; each
image becomes <|vision_start|> + <|image_pad|> x n + <|vision_end|> with n the image's token count, so
the invariant holds once every pad of the rendered conversation is expanded to its image's n.

Never: decide what to append (the agent loop does) or call the engine.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_MARK_ASSISTANT = "WWMARKASSISTANT"
_MARK_TEXT = "WWMARKTEXT"
_IMAGE_TEXT = "<|vision_start|><|image_pad|><|vision_end|>"


class ChatTemplate:
    def __init__(self, tokenizer, tools: list[dict] | None = None, system: str | None = None, vision=None):
        self.tok = tokenizer
        self.vision = vision
        self.tools = tools or None
        self.system = system
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template")
        self._plain = _without_added_tokens(tokenizer)
        self.eos_text = tokenizer.eos_token
        self.eos_id = tokenizer.eos_token_id
        base = [{"role": "user", "content": "WWMARKUSER"},
                {"role": "assistant", "content": f"<think>\nWWMARKREASON\n</think>\n\n{_MARK_ASSISTANT}"}]
        r0 = self.render(base)
        if not r0.count(_MARK_ASSISTANT) == 1:
            raise ValueError("the chat template does not render assistant content verbatim")
        #: text after an assistant turn's content, e.g. "<|im_end|>\n"
        self.close_text = r0[r0.index(_MARK_ASSISTANT) + len(_MARK_ASSISTANT):]
        #: what remains of it once the model emitted its end-of-turn token, e.g. "\n"
        self.after_eos = self.close_text[len(self.eos_text):] if self.close_text.startswith(self.eos_text) \
            else self.close_text
        self._frames = {}
        #: roles whose messages keep the whole-conversation invariant (Qwen3: "tool" only, since a new
        #: user query makes the template drop the reasoning of earlier turns)
        self.append_only_roles = set()
        for role in ("tool", "user"):
            r1 = self.render(base + [{"role": role, "content": _MARK_TEXT}], add_generation_prompt=True)
            if r1.startswith(r0):
                self.append_only_roles.add(role)
                delta = r1[len(r0):]
            else:  # the template's framing of such a message, taken after a system turn
                sys_only = self.render([{"role": "system", "content": "WWMARKSYSTEM"}])
                r2 = self.render([{"role": "system", "content": "WWMARKSYSTEM"}, {"role": role, "content": _MARK_TEXT}],
                                 add_generation_prompt=True)
                if not r2.startswith(sys_only):
                    raise ValueError(f"the chat template cannot frame a {role!r} message in isolation")
                delta = r2[len(sys_only):]
            if "tool" not in self.append_only_roles and role == "tool":
                raise ValueError("the chat template is not append-only for tool messages after an assistant turn")
            pre, post = delta.split(_MARK_TEXT)
            self._frames[role] = (self._encode(pre), self._encode(post))
            if vision is not None:  # images must render as the vision tokens, then the text
                image = [{"type": "image"}, {"type": "text", "text": _MARK_TEXT}]
                r3 = self.render(base + [{"role": role, "content": image}], add_generation_prompt=True)
                want = pre + _IMAGE_TEXT + _MARK_TEXT + post
                if r3[len(r0):] != want and not (role not in self.append_only_roles and r3.endswith(want)):
                    raise ValueError(f"the chat template does not render an image in a {role!r} message as "
                                     f"{_IMAGE_TEXT!r} before the text; got {r3[len(r0):]!r:.200}")

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        kwargs = {"tools": self.tools} if self.tools else {}
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                            **kwargs)

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(tokenizable(text), add_special_tokens=False)

    def encode_text(self, text: str) -> list[int]:
        """Plain text (observations): no added token (<|im_end|>, </tool_response>, ...) is matched,
        so such strings inside a page stay text."""
        return self._plain.encode(tokenizable(text), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def initial_messages(self, question: str, system: str | None = None) -> list[dict]:
        system = system if system is not None else self.system
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self._encode(self.render(messages, add_generation_prompt=True))

    def close_ids(self, turn_ids: list[int]) -> list[int]:
        """What the template puts after a model turn that ended with `turn_ids`."""
        if turn_ids and turn_ids[-1] == self.eos_id:
            return self._encode(self.after_eos) if self.after_eos else []
        return self._encode(self.close_text)

    def message_ids(self, role: str, text: str, turn_ids: list[int], images=()) -> list[int]:
        """Ids appended after a model turn for a `role` ("tool" or "user") message, up to the next
        assistant turn's generation prompt. `images` (encoded bytes or PIL) come before the text and
        need a vision model (`vision`)."""
        pre, post = self._frames[role]
        if images and self.vision is None:
            raise ValueError("an observation with images for a policy without vision (not a VL model)")
        shown = [i for im in images for i in self.vision.image_ids(im)] if images else []
        return self.close_ids(turn_ids) + pre + shown + self.encode_text(text) + post

    def message(self, role: str, text: str, images=()) -> dict:
        """The conversation entry of such a message (what `render` takes)."""
        if not images:
            return {"role": role, "content": text}
        return {"role": role, "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}


def tokenizable(text: str) -> str:
    """`text` with every surrogate code point (a JSON escape like "\\ud800" decodes to one; UTF-8 and the
    tokenizers refuse them) replaced by U+FFFD, the replacement character."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _without_added_tokens(tokenizer):
    """The tokenizer's own normalizer, pre-tokenizer and BPE model with no added tokens: control
    token strings are then tokenized like any other text. (`split_special_tokens` only covers tokens
    flagged special; Qwen's </tool_response> is an added, non-special token.)"""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(spec))
