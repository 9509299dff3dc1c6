"""Predicted vs measured peak training memory on a CUDA GPU; writes docs/memory-validation.md.

For the default model's shape (SmolLM2-135M) and a 1.1B-parameter Llama shape, both with random
weights built from their configs, and for each plan (uniform bf16 LoRA r=16, uniform NF4-DQ QLoRA
r=16, a mixed HQQ 2/4/8-bit plan with ranks 4-16), with and without gradient checkpointing: build
the model with autoqra's real backends and PEFT, run AdamW steps at the training setup's batch size
and sequence length, and compare ``torch.cuda.max_memory_allocated`` (steps 2-3, after the first
step has created gradients and optimizer states) with the memory model's total. Target: within ±5%.

Run on a machine with a CUDA GPU: python experiments/validate_memory_gpu.py [--out docs/memory-validation.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.space.memory import MemoryModel, TrainingSetup
from autoqra.space.model_spec import load_config, spec_from_config
from autoqra.space.search_space import uniform_plan
from autoqra.trials.lora import attach_lora
from autoqra.trials.quantize import quantize_model


def llama_1b_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)


def mixed_hqq(spec) -> Plan:
    ladder = [(2, 16), (4, 8), (8, 4), (4, 16)]
    groups = []
    for i, (name, modules) in enumerate(spec.block_groups()):
        bits, rank = ladder[i % len(ladder)]
        groups.append(PlanGroup(name=name, modules=modules, format=QuantFormat(name="hqq", bits=bits), rank=rank))
    return Plan(model=spec.name, granularity="block", groups=tuple(groups))


def measure(config, plan: Plan, setup: TrainingSetup, steps: int = 3) -> int:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    quantize_model(model, plan, setup.compute_dtype, device="cuda")
    model = attach_lora(model, plan).cuda()
    if setup.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (setup.batch_size, setup.seq_len), device="cuda")
    peak = 0
    for step in range(steps):
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, optimizer
    torch.cuda.empty_cache()
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/memory-validation.md"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("validate_memory_gpu: needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    models = {"smollm2-135m (config, random weights)": load_config("smollm2-135m"),
              "llama-1.1b (config, random weights)": llama_1b_config()}
    rows = []
    for model_name, config in models.items():
        spec = spec_from_config(config, model_name.split()[0])
        plans = {
            "uniform bf16 LoRA r=16": uniform_plan(spec, QuantFormat(name="bf16", bits=16), 16),
            "uniform NF4-DQ r=16": uniform_plan(spec, QuantFormat(name="nf4", bits=4, double_quant=True), 16),
            "mixed HQQ 2/4/8, r 4-16": mixed_hqq(spec),
        }
        for ckpt in (False, True):
            setup = TrainingSetup(batch_size=args.batch_size, seq_len=args.seq_len, grad_checkpointing=ckpt,
                                  compute_dtype="bf16")
            memory = MemoryModel(spec, setup)
            for plan_name, plan in plans.items():
                t0 = time.perf_counter()
                predicted = memory.total(plan)
                measured = measure(config, plan, setup)
                ratio = predicted / measured
                rows.append((model_name, plan_name, ckpt, predicted, measured, ratio))
                print(f"{model_name:40} {plan_name:26} ckpt={ckpt!s:5} predicted {predicted / 2**30:7.3f} GiB "
                      f"measured {measured / 2**30:7.3f} GiB ratio {ratio:.3f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    device = torch.cuda.get_device_name()
    lines = [
        "# Memory model vs measured peak on a GPU",
        "",
        f"Produced by `python experiments/validate_memory_gpu.py` on {device}, torch {torch.__version__}; "
        f"batch {args.batch_size} x seq {args.seq_len}, bf16 compute, AdamW, PEFT LoRA (fp32 adapters). "
        "Measured: `torch.cuda.max_memory_allocated()` over training steps 2-3. Target: within ±5%.",
        "",
        "| model | plan | grad ckpt | predicted GiB | measured GiB | predicted / measured |",
        "|---|---|---|---|---|---|",
    ]
    for model_name, plan_name, ckpt, predicted, measured, ratio in rows:
        lines.append(f"| {model_name} | {plan_name} | {'on' if ckpt else 'off'} | {predicted / 2**30:.3f} | "
                     f"{measured / 2**30:.3f} | {ratio:.3f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
