"""Where does the `extract` task's seed-to-seed spread at `final` come from?

`docs/results-memory-v1.md` shows that on `extract` the QLoRA -> 16-bit LoRA gap is inside the references' seed
spread at `final`, so that grid does not separate plans. Two causes are possible, and they call for
different fixes:

- the evaluation set is too small (48 short records: few scored tokens), so the same trained model
  would score differently on another 48 records; or
- training itself is what varies from seed to seed (a model learns, or not, a hard field of the record).

For each reference plan (QLoRA NF4-DQ r16, 16-bit LoRA r16) and each `final` seed, this trains the
plan exactly as a `final` trial does (same data, same schedule), then scores it on the trial's own 48
evaluation records and on ``--eval`` further records that no training record shares, field by field
(name, sku, count, due, city, and the end-of-record token). Every figure is a real training run here.

Resumable: one JSON per (plan, seed) under ``--out``; a rerun skips finished ones and prints the table.

    .venv/bin/python experiments/extract_noise.py            # ~3 min per run on the 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("name", "sku", "count", "due", "city", "eos")


def field_of(answer: str, start: int) -> str:
    """The record field the answer character at ``start`` belongs to (answers are ``" k=v; k=v; ..."``)."""
    field = "name"
    for part_start, key in _field_starts(answer):
        if start >= part_start:
            field = key
    return field


def _field_starts(answer: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for part in answer.split(";"):
        key = part.strip().split("=", 1)[0]
        out.append((pos, key))
        pos += len(part) + 1
    return out


def score(model: Any, tokenizer: Any, items: list[Any], device: str, batch: int = 8) -> dict[str, Any]:
    """Summed loss and token count per field, and the per-record mean losses, over ``items``."""
    import torch

    sums = {f: 0.0 for f in FIELDS}
    counts = {f: 0 for f in FIELDS}
    per_record: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            rows, spans = [], []
            for item in chunk:
                p = tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
                enc = tokenizer(item.answer, add_special_tokens=False, return_offsets_mapping=True)
                a = enc["input_ids"] + [tokenizer.eos_token_id]
                fields = [field_of(item.answer, s) for s, _ in enc["offset_mapping"]] + ["eos"]
                rows.append(p + a)
                spans.append((len(p), fields))
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
            for i, (n_prompt, fields) in enumerate(spans):
                record = 0.0
                for j, field in enumerate(fields):
                    pos = n_prompt + j
                    nll = -float(logp[i, pos - 1, rows[i][pos]])
                    sums[field] += nll
                    counts[field] += 1
                    record += nll
                per_record.append(record / len(fields))
    total = sum(sums.values()) / sum(counts.values())
    return {"loss": total, "fields": {f: sums[f] / max(counts[f], 1) for f in FIELDS},
            "tokens": counts, "per_record": per_record}


def run_one(plan_name: str, seed: int, n_extra: int) -> dict[str, Any]:
    from autoqra.space.model_spec import model_spec
    from autoqra.space.reference import lora16_plan, qlora_plan
    from autoqra.space.search_space import load_space
    from autoqra.trials.data import extract_split
    from autoqra.trials.evaluator import Evaluator, EvaluatorConfig

    space = load_space("default")
    spec, t, final = model_spec(space.model), space.training, space.fidelities["final"]
    plan = qlora_plan(spec) if plan_name == "qlora-nf4dq-r16" else lora16_plan(spec, t.compute_dtype)
    evaluator = Evaluator(EvaluatorConfig.for_space(space, "extract"))
    started = time.perf_counter()
    model, tokenizer = evaluator.build_model(plan, seed)
    data = evaluator.task_data(tokenizer, final)
    outcome, metrics, _, _ = evaluator.train_and_score(model, tokenizer, data, final, seed)
    # the trial's own records, then further records that share no prompt with the trial's training set
    rows = final.steps * final.batch_size * final.grad_accum
    train, own = extract_split(0, max(rows, 64), final.eval_examples)
    _, wide = extract_split(0, 0, final.eval_examples + n_extra)
    seen = {p.prompt for p in train}
    extra = [p for p in wide[final.eval_examples:] if p.prompt not in seen]
    return {"plan": plan_name, "plan_hash": plan.plan_hash, "seed": seed, "status": outcome.status.value,
            "trial_eval_loss": metrics.eval_loss, "own": score(model, tokenizer, own, evaluator.device),
            "extra": score(model, tokenizer, extra, evaluator.device), "wall_s": time.perf_counter() - started}


def report(cells: list[dict[str, Any]]) -> str:
    lines = ["| plan | seed | trial loss (48) | own 48 | extra | " + " | ".join(FIELDS) + " (extra) |",
             "|---|---|---|---|---|" + "---|" * len(FIELDS)]
    for c in cells:
        fields = " | ".join(f"{c['extra']['fields'][f]:.4f}" for f in FIELDS)
        lines.append(f"| {c['plan']} | {c['seed']} | {c['trial_eval_loss']:.4f} | {c['own']['loss']:.4f} | "
                     f"{c['extra']['loss']:.4f} ({len(c['extra']['per_record'])}) | {fields} |")
    by_plan: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        by_plan.setdefault(c["plan"], []).append(c)
    lines.append("")
    for plan, group in by_plan.items():
        if len(group) < 2:
            continue
        for which in ("own", "extra"):
            losses = [c[which]["loss"] for c in group]
            # the spread a fixed model would show from the finite set alone: std of the record means / sqrt(n)
            sampling = statistics.mean(statistics.stdev(c[which]["per_record"]) / len(c[which]["per_record"]) ** 0.5
                                       for c in group)
            lines.append(f"- {plan}, {which}: seed-to-seed std {statistics.stdev(losses):.4f}; "
                         f"sampling error of one model on this set {sampling:.4f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "extract_noise")
    parser.add_argument("--eval", type=int, default=432, help="further evaluation records (default 432)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--plans", nargs="+", default=["qlora-nf4dq-r16", "lora16-r16"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cells = []
    for plan in args.plans:
        for seed in args.seeds:
            path = args.out / f"{plan}.s{seed}.json"
            if not path.is_file():
                print(f"training {plan} seed {seed} at final ...", flush=True)
                cell = run_one(plan, seed, args.eval)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cell) + "\n")
                tmp.replace(path)
                print(f"  own {cell['own']['loss']:.4f}, extra {cell['extra']['loss']:.4f} "
                      f"({cell['wall_s']:.0f} s)", flush=True)
            cells.append(json.loads(path.read_text()))
    print(report(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
