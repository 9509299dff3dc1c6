"""Predicted vs measured peak training memory on a CUDA GPU; writes docs/memory-validation.md.

For the default model's shape (SmolLM2-135M) and a 1.1B-parameter Llama shape, both with random
weights built from their configs (the values do not change any byte count), and for each plan
(uniform bf16 LoRA r=16, uniform NF4-DQ QLoRA r=16, a mixed HQQ 2/4/8-bit plan with ranks 4-16),
with and without gradient checkpointing: build the model with autoqra's real backends and PEFT as a
trial does, run the trial's training step (AdamW, gradient clipping) at the setup's batch size and
sequence length, and compare ``torch.cuda.max_memory_allocated`` over steps 2-3 (after the first step
has created the optimizer states) with the memory model's total. Also measured: the bytes resident
between steps (weights, adapters, gradients, optimizer states) against the model's static part, and
``max_memory_reserved`` (what the caching allocator holds; the CUDA context comes on top of both).
Target: total within ±5%.

Each row is independent: one that fails (a backend missing on the machine, say) is printed and
recorded as failed, and the others still run.

Run on a machine with a CUDA GPU:
    python experiments/validate_memory_gpu.py [--out docs/memory-validation.md] [--json rows.json]
and, anywhere, the document again from saved runs (one section per card):
    python experiments/validate_memory_gpu.py --from-json experiments/results/memory-validation/h200.json \\
        experiments/results/memory-validation/h100.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.space.memory import MEMORY_MODEL_VERSION, MemoryModel, OptimizerName, TrainingSetup
from autoqra.space.model_spec import ModelSpec, load_config, spec_from_config
from autoqra.space.search_space import uniform_plan
from autoqra.trials.lora import attach_lora, init_default
from autoqra.trials.quantize import quantize_model
from autoqra.trials.train import make_optimizer

GiB = 2**30


def llama_1b_config(vocab_size: int = 32000):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=vocab_size, tie_word_embeddings=False)


def mixed_hqq(spec: ModelSpec) -> Plan:
    ladder = [(2, 16), (4, 8), (8, 4), (4, 16)]
    groups = []
    for i, (name, modules) in enumerate(spec.block_groups()):
        bits, rank = ladder[i % len(ladder)]
        groups.append(PlanGroup(name=name, modules=modules, format=QuantFormat(name="hqq", bits=bits), rank=rank))
    return Plan(model=spec.name, granularity="block", groups=tuple(groups))


@dataclass(frozen=True)
class Measured:
    peak: int  # max_memory_allocated over steps 2-3
    resident: int  # memory_allocated after step 1's optimizer step (grads and states alive)
    reserved: int  # max_memory_reserved over the whole row


def measure(base: torch.nn.Module, vocab_size: int, plan: Plan, setup: TrainingSetup, steps: int = 3,
            device: str = "cuda") -> Measured:
    """One trial-shaped training run of ``plan`` on a copy of ``base``, on ``device`` (CUDA; another device
    only to smoke-test this script, with the cuda statistics patched)."""
    model = copy.deepcopy(base)  # quantize_model consumes the linears it replaces
    torch.cuda.reset_peak_memory_stats()
    # as Evaluator._build: quantize on the device, attach adapters, initialise them, move, checkpoint
    quantize_model(model, plan, setup.compute_dtype, device=device)
    model = attach_lora(model, plan)
    init_default(model, torch.Generator().manual_seed(0))
    model.to(device)
    if setup.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(setup.optimizer, params, 1e-4, 0.0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (setup.batch_size, setup.seq_len), generator=generator).to(device)
    resident = 0
    for step in range(steps):
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        # as autoqra.trials.train.train
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        del loss
        if step == 0:
            torch.cuda.synchronize()
            resident = torch.cuda.memory_allocated()
    torch.cuda.synchronize()
    out = Measured(peak=torch.cuda.max_memory_allocated(), resident=resident,
                   reserved=torch.cuda.max_memory_reserved())
    del model, optimizer, params
    torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/memory-validation.md"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--from-json", type=Path, nargs="+", default=None,
                        help="write --out from the rows one or more GPU runs saved with --json, one section per "
                             "card (no GPU needed)")
    args = parser.parse_args()
    if args.from_json is not None:
        runs = [(path, json.loads(path.read_text())) for path in args.from_json]
        write_report(args.out, runs)
        print(f"wrote {args.out} from {', '.join(str(path) for path in args.from_json)}")
        return 0
    if not torch.cuda.is_available():
        print("validate_memory_gpu: needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    free, total = torch.cuda.mem_get_info()  # before any allocation: what the CUDA context itself takes
    context = total - free - torch.cuda.memory_reserved()
    print(f"{torch.cuda.get_device_name()}: CUDA context and driver hold {context / GiB:.3f} GiB before any tensor",
          flush=True)
    models = {"smollm2-135m": (load_config("smollm2-135m"), "config of the embedded default, random weights"),
              "llama-1.1b": (llama_1b_config(), "TinyLlama-1.1B shape, random weights"),
              # a 4096-token vocabulary puts the peak in the blocks' backward, not at the logits (as for
              # Llama-2-7B under HQQ): the other branch of the model
              "llama-1.1b-v4096": (llama_1b_config(4096), "TinyLlama-1.1B shape, 4096-token vocabulary")}
    rows: list[dict] = []
    started = time.perf_counter()
    for model_name, (config, _about) in models.items():
        from transformers import AutoModelForCausalLM

        spec = spec_from_config(config, model_name)
        t0 = time.perf_counter()
        base = AutoModelForCausalLM.from_config(config)  # fp32 on CPU, as trials load weights; values irrelevant
        print(f"{model_name}: built a {sum(p.numel() for p in base.parameters()) / 1e9:.2f}B-parameter base "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        plans = {
            "uniform bf16 LoRA r=16": uniform_plan(spec, QuantFormat(name="bf16", bits=16), 16),
            "uniform NF4-DQ r=16": uniform_plan(spec, QuantFormat(name="nf4", bits=4, double_quant=True), 16),
            "mixed HQQ 2/4/8, r 4-16": mixed_hqq(spec),
        }
        cases: list[tuple[str, Plan, TrainingSetup]] = []
        for ckpt in (False, True):
            for plan_name, plan in plans.items():
                cases.append((plan_name, plan, TrainingSetup(batch_size=args.batch_size, seq_len=args.seq_len,
                                                             grad_checkpointing=ckpt, compute_dtype="bf16")))
        optimizer: OptimizerName = "adamw8bit"
        cases.append(("uniform NF4-DQ r=16", plans["uniform NF4-DQ r=16"],
                      TrainingSetup(batch_size=args.batch_size, seq_len=args.seq_len, grad_checkpointing=True,
                                    compute_dtype="bf16", optimizer=optimizer)))
        if model_name == "smollm2-135m":  # the setup the default space's budgets refer to (4 x 64, checkpointing)
            for plan_name, plan in plans.items():
                cases.append((plan_name, plan, TrainingSetup(batch_size=4, seq_len=64, grad_checkpointing=True,
                                                             compute_dtype="bf16")))
        for plan_name, plan, setup in cases:
            t0 = time.perf_counter()
            breakdown = MemoryModel(spec, setup).estimate(plan)
            row = {"model": model_name, "plan": plan_name, "batch_size": setup.batch_size, "seq_len": setup.seq_len,
                   "grad_checkpointing": setup.grad_checkpointing, "optimizer": setup.optimizer,
                   "predicted": breakdown.as_dict()}
            try:
                measured = measure(base, config.vocab_size, plan, setup)
            except Exception as exc:  # recorded in the table and printed, not swallowed: the other rows still run
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                print(f"{model_name:13} {plan_name:24} {setup.batch_size}x{setup.seq_len} ckpt={setup.grad_checkpointing!s:5} "
                      f"{setup.optimizer:9} FAILED {row['error']}", flush=True)
                torch.cuda.empty_cache()
                rows.append(row)
                continue
            row.update(measured_peak=measured.peak, measured_resident=measured.resident,
                       measured_reserved=measured.reserved, ratio=breakdown.total / measured.peak,
                       static_ratio=breakdown.static / measured.resident)
            rows.append(row)
            print(f"{model_name:13} {plan_name:24} {setup.batch_size}x{setup.seq_len} ckpt={setup.grad_checkpointing!s:5} "
                  f"{setup.optimizer:9} {breakdown.peak_phase:6} predicted {breakdown.total / GiB:7.3f} GiB measured {measured.peak / GiB:7.3f} "
                  f"GiB ratio {row['ratio']:.3f} | static {breakdown.static / GiB:.3f} vs resident "
                  f"{measured.resident / GiB:.3f} ({row['static_ratio']:.3f}) | reserved {measured.reserved / GiB:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        del base
    import transformers

    run = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
           "memory_model": MEMORY_MODEL_VERSION, "context_bytes": context}
    write_report(args.out, [(None, {**run, "rows": rows})])
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps({**run, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


def write_report(out: Path, runs: list[tuple[Path | None, dict]]) -> None:
    """The document: what was measured, then one table per run (a card); ``runs`` pairs each run's saved JSON
    (None for the run in progress) with its content as ``--json`` writes it."""
    first = runs[0][1]
    sources = [path for path, _ in runs if path is not None]
    if sources:
        made = (f"Produced by `python experiments/validate_memory_gpu.py --json FILE` on each card below, rewritten "
                f"from the saved files by `python experiments/validate_memory_gpu.py --from-json "
                f"{' '.join(str(path) for path in sources)}`")
    else:
        made = f"Produced by `python experiments/validate_memory_gpu.py` on {first['device']}"
    lines = [
        "# Memory model vs measured peak on a GPU",
        "",
        f"{made}. Memory model version {first['memory_model']} (`autoqra/space/memory.py`); bf16 compute, PEFT "
        "LoRA (fp32 adapters), the trial's training step (AdamW unless named, gradient clipping); random weights "
        "from configs. **measured peak**: `torch.cuda.max_memory_allocated()` over training steps 2-3; "
        "**resident**: `memory_allocated()` after step 1's optimizer step (weights, adapters, gradients, "
        "optimizer states), against the model's static part; **reserved**: `max_memory_reserved()` (the caching "
        "allocator's hold; the CUDA context comes on top). Target: predicted / measured peak within ±5%.",
    ]
    if len(runs) > 1:
        lines += ["", _agreement(runs)]
    for path, run in runs:
        lines += ["", f"## {run['device']}", "",
                  f"torch {run['torch']}, transformers {run['transformers']}, memory model version "
                  f"{run['memory_model']}; the CUDA context held {run['context_bytes'] / GiB:.2f} GiB before any "
                  f"tensor" + (f"; saved in `{path}`." if path is not None else "."), ""]
        lines += _table(run["rows"])
    out.write_text("\n".join(lines) + "\n")


def _agreement(runs: list[tuple[Path | None, dict]]) -> str:
    """One sentence on how the cards' measurements compare row by row (the caching allocator is deterministic,
    so equal software gives equal byte counts on different cards)."""
    base_path, base = runs[0]
    parts = []
    for _path, run in runs[1:]:
        keyed = {(r["model"], r["plan"], r["batch_size"], r["seq_len"], r["grad_checkpointing"], r["optimizer"]): r
                 for r in base["rows"]}
        same_peak = same_reserved = compared = 0
        for r in run["rows"]:
            other = keyed.get((r["model"], r["plan"], r["batch_size"], r["seq_len"], r["grad_checkpointing"],
                               r["optimizer"]))
            if other is None or "error" in r or "error" in other:
                continue
            compared += 1
            same_peak += (r["measured_peak"] == other["measured_peak"]
                          and r["measured_resident"] == other["measured_resident"])
            same_reserved += r["measured_reserved"] == other["measured_reserved"]
        parts.append(f"on the {run['device']}, {same_peak} of {compared} rows measured byte for byte the same peak "
                     f"and resident bytes as on the {base['device']}, and {same_reserved} the same reserved bytes")
    return "Across cards: " + "; ".join(parts) + "."


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | plan | batch x seq | grad ckpt | optimizer | peak phase (predicted) | predicted GiB | measured peak GiB | predicted / measured "
        "| static / resident | reserved GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = (f"| {r['model']} | {r['plan']} | {r['batch_size']} x {r['seq_len']} | "
                f"{'on' if r['grad_checkpointing'] else 'off'} | {r['optimizer']} | {r['predicted']['peak_phase']} | "
                f"{r['predicted']['total'] / GiB:.3f} |")
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} | | | |")
        else:
            lines.append(f"{head} {r['measured_peak'] / GiB:.3f} | {r['ratio']:.3f} | {r['static_ratio']:.3f} | "
                         f"{r['measured_reserved'] / GiB:.3f} |")
    ok = [r["ratio"] for r in rows if "error" not in r]
    if ok:
        within = sum(abs(x - 1) <= 0.05 for x in ok)
        lines += ["", f"{within} of {len(ok)} measured rows within ±5% (ratios {min(ok):.3f} to {max(ok):.3f}); "
                  f"{len(rows) - len(ok)} failed."]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
