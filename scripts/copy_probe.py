"""Does a policy copy the answer off the page? A diagnosis of the WebSailor default outside the pipeline.

SFT in one process, as the sft stage does it (next-token NLL on the policy's own tokens only, AdamW, cosine
learning rate to 0.1x, gradient clip 1), on a run's expert trajectories; then each held-out expert trajectory is
read teacher-forced, and the argmax at every token of its final turn (`The page says: <sentence>.` then
`<answer>...</answer>`) is compared with the expert's. Reported apart for the questions whose answer no SFT
question had ("reading") and the others ("recall"): the whole final turn right, the answer's span right.

    python launch/websailor.py run.dir=/tmp/x 'pipeline.stages=[expert]' sft.expert_tasks=1000
    python scripts/copy_probe.py --traj /tmp/x/trajectories/expert.parquet --ntrain 800 --steps 400

`--model` defaults to the default's tiny model (world tokenizer); `--show N` prints N failed reading turns token
by token (expert/argmax); the probe also gives every assistant turn's exact match ("turns"). `--mix K` adds K
synthetic copy rows to every batch (a random sequence, then the same again; loss on the repeat), each drawn
from its own random alphabet of the vocabulary, so that a copy circuit (an induction head) can form during SFT;
`copy` in the probe is the argmax accuracy on held-out such repeats. `--varied` repeats a span at a varying
distance instead (only content-based copying solves it), `--spaced` puts a space token after every token,
`--copy-steps N` trains on copy rows alone first, and `--anonymize` renames every name of each SFT row at random
(a name can then be predicted only by copying it). Findings: docs/websailor_runs.md, "Why reading stays near 0"
and "The copy circuit of the last measurement was positional"; e.g. the content-based copy check:

    python scripts/copy_probe.py --traj ... --steps 0 --copy-steps 400 --batch 8 --mix-half 120 --varied
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def default_model() -> str:
    from rl.models import build_tiny_model

    return str(build_tiny_model(tokenizer="world", world_seed=0, world_size="small", vocab_size=4096,
                                hidden_size=256, num_layers=4, intermediate_size=768, max_position_embeddings=8192))


def sequence(row: dict) -> tuple[list[int], list[int]]:
    """Token ids of the whole trajectory and its loss mask (0 over the prompt)."""
    return list(row["prompt_ids"]) + list(row["response_ids"]), [0] * len(row["prompt_ids"]) + list(row["loss_mask"])


def copy_rows(rng: random.Random, vocab: list[int], count: int, half: int, space: int | None = None,
              varied: bool = False) -> list[tuple[list[int], list[int]]]:
    """`count` rows of `half` random tokens then the same again, loss on the repeat; each row draws its tokens
    from its own alphabet (16, 64, 256 tokens or the whole vocabulary), so the only way to predict the repeat
    is to look back and copy. Every row then repeats at the same distance, which a head attending a fixed
    distance back solves without matching anything: `varied` rows (2 x `half` tokens too) hold a span of 8 to
    half/2 tokens, random tokens, the span again and more random tokens, so the distance varies and only
    content-based copying (an induction head: find the earlier occurrence of the current token, write what
    followed it) predicts the repeat. With `space` (a token id) every token is followed by it, as words are in
    the world tokenizer's text: the token before each word is then the same everywhere."""
    out = []
    for _ in range(count):
        size = rng.choice([16, 64, 256, len(vocab)])
        alphabet = rng.sample(vocab, min(size, len(vocab)))
        draw = lambda k: [rng.choice(alphabet) for _ in range(k)]  # noqa: E731
        if varied:
            n = rng.randint(8, max(8, half // 2))
            a = rng.randint(0, 2 * half - 2 * n)
            b = rng.randint(0, 2 * half - 2 * n - a)
            span = draw(n)
            words = draw(a) + span + draw(b) + span + draw(2 * half - 2 * n - a - b)
            mask = [0] * (a + n + b + 1) + [1] * (n - 1) + [0] * (2 * half - 2 * n - a - b)
        else:
            words = draw(half) * 2
            mask = [0] * (half + 1) + [1] * (half - 1)
        if space is not None:
            words = [t for word in words for t in (word, space)]
            mask = [x for m in mask for x in (m, m)]
        out.append((words, mask))
    return out


def name_pool(tok) -> list[int]:
    """The token ids of the small world's entity names that no page template uses ("of" and the space are
    left out): what `--anonymize` renames."""
    from envs.world import generate_world
    from envs.world.pages import page_sentences

    world = generate_world(seed=0, size="small")
    names = sorted((e.name for e in world.entities.values()), key=len, reverse=True)
    template: set[int] = set()
    for eid in world.entities:
        for sentence in page_sentences(world, eid):
            for name in names:
                sentence = sentence.replace(name, " ")
            template.update(tok.encode(sentence, add_special_tokens=False))
    return sorted({t for name in names for t in tok.encode(name, add_special_tokens=False)} - template)


def anonymize(rng: random.Random, pool: list[int], ids: list[int]) -> list[int]:
    """The row with every name token renamed to a random other one, the same within the row (the entity
    anonymisation of reading-comprehension data): a name can then only be predicted by copying it."""
    present = sorted(set(ids) & set(pool))
    mapping = dict(zip(present, rng.sample(pool, len(present))))
    return [mapping.get(t, t) for t in ids]


@torch.no_grad()
def copy_accuracy(model, rows: list[tuple[list[int], list[int]]], space: int | None = None) -> float:
    """Argmax accuracy on the repeats (the positions with loss; the space tokens between words left out)."""
    model.eval()
    right = total = 0
    for ids, mask in rows:
        pred = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        for p in range(1, len(ids)):
            if mask[p] and ids[p] != space:
                right, total = right + (pred[p - 1] == ids[p]), total + 1
    model.train()
    return right / max(total, 1)


def token_logp(model, ids: torch.Tensor, att: torch.Tensor | None = None) -> torch.Tensor:
    """log p(ids[:, t + 1] | ids[:, :t + 1]) for every position t: [rows, length - 1]."""
    return torch.log_softmax(model(ids, attention_mask=att).logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]


def optimizer_step(model, opt, loss: torch.Tensor, lr: float) -> None:
    """AdamW at `lr`, the gradient clipped to norm 1 (as the sft stage)."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def assistant_turns(row: dict) -> list[tuple[int, int]]:
    """(start, end) of every run of loss-mask 1 in the response, as positions in the whole sequence."""
    mask, base, out, start = row["loss_mask"], len(row["prompt_ids"]), [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((base + start, base + i))
            start = None
    return out


def final_turn(row: dict) -> int:
    """Where the last assistant turn starts."""
    return assistant_turns(row)[-1][0]


def answer_span(tok, ids: list[int], start: int, gold: str) -> tuple[int, int] | None:
    """The first run of tokens in ids[start:] that decodes to `gold` and does not start with whitespace."""
    for p in range(start, len(ids)):
        if not tok.decode(ids[p:p + 1]).strip():
            continue
        for q in range(p + 1, min(len(ids), p + 16) + 1):
            if tok.decode(ids[p:q]).strip() == gold:
                return p, q
    return None


@torch.no_grad()
def probe(model, tok, rows: list[dict], seen: set[str], show: int) -> dict:
    model.eval()
    counts: dict[str, list[int]] = {"reading": [0, 0, 0], "recall": [0, 0, 0]}
    turns: dict[str, dict[int, list[int]]] = {"reading": {}, "recall": {}}  # turn number -> [right, seen]
    for row in rows:
        ids, mask = sequence(row)
        pred = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        right = lambda p: pred[p - 1] == ids[p]  # noqa: E731
        start, gold = final_turn(row), str(row["gold_answer"])
        kind = "recall" if gold in seen else "reading"
        span = answer_span(tok, ids, start, gold)
        turn_ok = all(right(p) for p in range(start, len(ids)) if mask[p])
        span_ok = span is not None and all(right(p) for p in range(*span))
        c = counts[kind]
        c[0], c[1], c[2] = c[0] + turn_ok, c[1] + span_ok, c[2] + 1
        for k, (a, b) in enumerate(assistant_turns(row), 1):
            t = turns[kind].setdefault(k, [0, 0])
            t[0], t[1] = t[0] + all(right(p) for p in range(a, b)), t[1] + 1
        if show and kind == "reading" and not span_ok:
            show -= 1
            print(f"  {row['question']} | gold {gold}")
            print("   ", " ".join(repr(tok.decode([ids[p]])) + ("" if right(p) else f"/{tok.decode([pred[p - 1]])!r}")
                              for p in range(start, len(ids))))
    model.train()
    return {k: {"final_turn": v[0] / max(v[2], 1), "answer_span": v[1] / max(v[2], 1), "n": v[2],
                "turns": {t: round(r / n, 3) for t, (r, n) in sorted(turns[k].items())}}
            for k, v in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traj", required=True, help="a run's trajectories/expert.parquet")
    ap.add_argument("--model", default=None, help="model folder (default: the WebSailor default's tiny model)")
    ap.add_argument("--init", default=None, help="a state dict to start from (e.g. a pretraining's)")
    ap.add_argument("--ntrain", type=int, default=800)
    ap.add_argument("--neval", type=int, default=200)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--show", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mix", type=int, default=0, help="synthetic copy rows added to every batch")
    ap.add_argument("--mix-half", type=int, default=64, help="length of a copy row's random half")
    ap.add_argument("--mix-weight", type=float, default=1.0, help="weight of the copy rows' loss")
    ap.add_argument("--spaced", action="store_true", help="copy rows with a space token after every token")
    ap.add_argument("--varied", action="store_true", help="copy rows that repeat a span at a varying distance")
    ap.add_argument("--copy-steps", type=int, default=0,
                    help="steps on copy rows alone (--batch of them, --copy-lr) before the SFT steps")
    ap.add_argument("--copy-lr", type=float, default=2e-3)
    ap.add_argument("--anonymize", action="store_true", help="rename the names of every SFT row (name_pool)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    path = args.model or default_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if args.init:
        model.load_state_dict(torch.load(args.init))
    rows = [r for r in pq.read_table(args.traj).to_pylist() if r["reward_answer"] == 1.0]
    if len(rows) < args.ntrain + args.neval:
        raise SystemExit(f"{args.traj}: {len(rows)} correct trajectories, fewer than --ntrain + --neval")
    train, held = rows[:args.ntrain], rows[len(rows) - args.neval:]
    seen = {str(r["gold_answer"]) for r in train}
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    space = tok.encode(" ", add_special_tokens=False)[0] if args.spaced else None
    copy_held = copy_rows(random.Random(args.seed + 1), vocab, 50, args.mix_half, space, args.varied)
    pool = name_pool(tok) if args.anonymize else []
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    t0 = time.time()
    for step in range(args.copy_steps):  # copy rows alone: a copy circuit first
        rows = copy_rows(rng, vocab, args.batch, args.mix_half, space, args.varied)
        ids, mask = torch.tensor([i for i, _ in rows]), torch.tensor([m for _, m in rows], dtype=torch.float)[:, 1:]
        loss = -(token_logp(model, ids) * mask).sum() / mask.sum()
        optimizer_step(model, opt, loss, args.copy_lr * min(1.0, (step + 1) / 10))
        if (step + 1) % 100 == 0:
            print(f"copy step {step + 1} loss {loss.item():.3f} copy {copy_accuracy(model, copy_held, space):.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    order: list[int] = []
    for step in range(args.steps):
        if len(order) < args.batch:
            order += rng.sample(range(len(train)), len(train))
        batch = [sequence(train[order.pop()]) for _ in range(args.batch)]
        if pool:
            batch = [(anonymize(rng, pool, ids), mask) for ids, mask in batch]
        batch += copy_rows(rng, vocab, args.mix, args.mix_half, space, args.varied)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros(len(batch), width)
        att = torch.zeros(len(batch), width, dtype=torch.long)
        for b, (i, m) in enumerate(batch):
            ids[b, :len(i)], mask[b, :len(i)], att[b, :len(i)] = torch.tensor(i), torch.tensor(m, dtype=torch.float), 1
        lr = args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps))) * min(1.0, (step + 1) / 10)
        logp = token_logp(model, ids, att)
        m, n = mask[:args.batch, 1:], mask[args.batch:, 1:]
        loss = -(logp[:args.batch] * m).sum() / m.sum()
        if args.mix:
            loss = loss - args.mix_weight * (logp[args.batch:] * n).sum() / n.sum()
        optimizer_step(model, opt, loss, lr)
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            last = step + 1 == args.steps
            print(f"probe after {step + 1} steps: copy {copy_accuracy(model, copy_held, space):.3f}",
                  probe(model, tok, held, seen, args.show if last else 0), flush=True)


if __name__ == "__main__":
    main()
