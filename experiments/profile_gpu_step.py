"""Where a trial's training step spends its time on a GPU: wall time per step against the GPU's busy time.

docs/gpu-trials.md found a `high` trial on an H200 training at 0.6-0.7 s a step (batch 4 x 64) on the
135M default model, "bound by per-layer overheads, not by the GPU's arithmetic", without a profile.
This script measures it. For the default model's shape (SmolLM2-135M, random weights from its config:
the values change no kernel) and each plan (uniform bf16 LoRA r16, NF4-DQ QLoRA r16, HQQ-4 r16,
HQQ-8 r4), it builds the model with autoqra's own backends and PEFT as a trial does, runs the trial's
training step (AdamW, gradient clipping, gradient checkpointing as the default space trains) and reports:

- **ms / step**: wall time of a step after warm-up, with the device synchronised;
- **GPU busy ms / step**: the sum of the step's kernel times from torch.profiler (what the GPU did);
- **kernels / step** (and kernel launches) and **host syncs / step** (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``,
  device-to-host copies): launch overhead and stalls, the usual suspects when busy << wall;
- the operators with the most host (CPU) time, for the first plan.

Run on a machine with a CUDA GPU (``--device cpu`` only smoke-tests the script):
    python experiments/profile_gpu_step.py [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from autoqra.domain import Plan, QuantFormat
from autoqra.space.model_spec import load_config, spec_from_config
from autoqra.space.search_space import uniform_plan
from autoqra.trials.lora import attach_lora, init_default
from autoqra.trials.quantize import quantize_model
from autoqra.trials.train import make_optimizer

SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "Memcpy DtoH")


def build(base: torch.nn.Module, plan: Plan, device: str, checkpointing: bool) -> tuple[torch.nn.Module, list]:
    """As Evaluator._build: quantize on the device, attach and initialise adapters, move, checkpoint."""
    model = copy.deepcopy(base)
    quantize_model(model, plan, "bf16", device=device)
    model = attach_lora(model, plan)
    init_default(model, torch.Generator().manual_seed(0))
    model.to(device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad]


def step(model: torch.nn.Module, params: list, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    """The trial's training step (autoqra.trials.train.train), without its loss bookkeeping."""
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def profile_plan(base: torch.nn.Module, vocab: int, plan: Plan, batch: int, seq: int, steps: int, device: str,
                 checkpointing: bool, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    model, params = build(base, plan, device, checkpointing)
    optimizer = make_optimizer("adamw", params, 1e-4, 0.0)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    for _ in range(3):  # warm-up: optimizer states, allocator, kernel caches
        step(model, params, optimizer, ids)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(model, params, optimizer, ids)
    sync(device)
    wall = (time.perf_counter() - t0) / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    profiled = 3
    with profile(activities=activities) as prof:
        for _ in range(profiled):
            step(model, params, optimizer, ids)
        sync(device)
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    averages = prof.key_averages()
    # the operators' self device time adds up to the kernels' time without counting a kernel twice
    busy_us = sum(getattr(a, "self_device_time_total", 0) for a in averages)
    syncs = sum(1 for e in events if any(name in e.name for name in SYNC_NAMES))
    launches = sum(1 for e in events if e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    by_cpu = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
    out = {"ms_per_step": wall * 1e3, "gpu_busy_ms_per_step": busy_us / 1e3 / profiled,
           "kernels_per_step": len(kernels) / profiled, "launches_per_step": launches / profiled,
           "host_syncs_per_step": syncs / profiled,
           "top_host_ops": [{"name": a.key, "calls_per_step": a.count / profiled,
                             "self_cpu_ms_per_step": a.self_cpu_time_total / 1e3 / profiled} for a in by_cpu]}
    del model, optimizer, params
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per plan after 3 warm-up steps")
    parser.add_argument("--top", type=int, default=12, help="operators listed by host time (first plan)")
    parser.add_argument("--shapes", default="4x64,16x512", help="batch x seq of each pass, comma-separated")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("profile_gpu_step: needs a CUDA GPU (none found); --device cpu only smoke-tests", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM

    config = load_config("smollm2-135m")
    spec = spec_from_config(config, "smollm2-135m")
    base = AutoModelForCausalLM.from_config(config)
    plans = {"uniform HQQ-4 r16": uniform_plan(spec, QuantFormat(name="hqq", bits=4, group_size=64), 16),
             "uniform NF4-DQ r16": uniform_plan(spec, QuantFormat(name="nf4", bits=4, double_quant=True), 16),
             "uniform HQQ-8 r4": uniform_plan(spec, QuantFormat(name="hqq", bits=8, group_size=64), 4),
             "uniform bf16 LoRA r16": uniform_plan(spec, QuantFormat(name="bf16", bits=16), 16)}
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{device_name}; torch {torch.__version__}; SmolLM2-135M shape, random weights; gradient checkpointing on; "
          f"{args.steps} timed steps after 3 warm-up", flush=True)
    rows = []
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.lower().split("x"))
        for i, (name, plan) in enumerate(plans.items()):
            r = profile_plan(base, config.vocab_size, plan, batch, seq, args.steps, args.device, True, args.top)
            rows.append({"plan": name, "batch_size": batch, "seq_len": seq, **r})
            print(f"{name:22} {batch:3}x{seq:<4} {r['ms_per_step']:8.1f} ms/step  GPU busy "
                  f"{r['gpu_busy_ms_per_step']:7.1f} ms ({r['gpu_busy_ms_per_step'] / r['ms_per_step']:5.1%})  "
                  f"{r['kernels_per_step']:6.0f} kernels ({r['launches_per_step']:.0f} launches)  "
                  f"{r['host_syncs_per_step']:5.0f} host syncs per step",
                  flush=True)
            if i == 0:
                for op in r["top_host_ops"]:
                    print(f"    {op['self_cpu_ms_per_step']:8.2f} ms host  {op['calls_per_step']:7.0f} calls  "
                          f"{op['name'][:70]}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
