"""Benchmark: building a trial model from a plan (cold vs warm quantized-layer cache) and training
step time of 16-bit LoRA vs uniform 4-bit vs a mixed plan, on the embedded default model.

Targets (issue 3): warm-cache build <= 2 s and at least 5x faster than cold.
Run: .venv/bin/python experiments/trial_bench.py [--steps 5] [--batch-size 4] [--seq-len 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autoqra.domain import Plan, PlanGroup, QuantFormat
from autoqra.space.model_spec import model_spec
from autoqra.space.search_space import uniform_plan
from autoqra.trials.data import build_task
from autoqra.trials.layer_cache import LayerCache
from autoqra.trials.lora import attach_lora
from autoqra.trials.models import load_causal_lm, resolve_weights
from autoqra.trials.quantize import quantize_model


def mixed(spec) -> Plan:
    ladder = [(QuantFormat(name="hqq", bits=2), 16), (QuantFormat(name="hqq", bits=4), 8),
              (QuantFormat(name="hqq", bits=8), 4), (QuantFormat(name="nf4", bits=4, double_quant=True), 16),
              (QuantFormat(name="bf16", bits=16), 0)]
    return Plan(model=spec.name, granularity="block", groups=tuple(
        PlanGroup(name=n, modules=m, format=ladder[i % len(ladder)][0], rank=ladder[i % len(ladder)][1])
        for i, (n, m) in enumerate(spec.block_groups())))


def build(weights, plan, cache, device):
    t0 = time.perf_counter()
    model, tok = load_causal_lm(weights, "fp32")
    quantize_model(model, plan, "bf16", device, cache=cache)
    model = attach_lora(model, plan).to(device)
    return model, tok, time.perf_counter() - t0


def step_time(model, data, steps, batch, device) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    times = []
    for i in range(steps + 1):
        rows = torch.randint(data.train_ids.shape[0], (batch,), generator=gen)
        ids = data.train_ids[rows].to(device)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocator and kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    weights = resolve_weights("smollm2-135m")
    spec = model_spec("smollm2-135m")
    plans = {
        "16-bit LoRA r=16": uniform_plan(spec, QuantFormat(name="bf16", bits=16), 16),
        "uniform HQQ 4-bit r=16": uniform_plan(spec, QuantFormat(name="hqq", bits=4), 16),
        "mixed HQQ 2/4/8 + NF4 + bf16": mixed(spec),
    }
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, bf16 compute, "
          f"batch {args.batch_size} x seq {args.seq_len}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = LayerCache(Path(tmp), weights.fingerprint)
        _, _, cold = build(weights, plans["mixed HQQ 2/4/8 + NF4 + bf16"], cache, args.device)
        warm_mem = [build(weights, plans["mixed HQQ 2/4/8 + NF4 + bf16"], cache, args.device)[2] for _ in range(3)]
        disk = LayerCache(Path(tmp), weights.fingerprint)
        warm_disk = build(weights, plans["mixed HQQ 2/4/8 + NF4 + bf16"], disk, args.device)[2]
        print(f"build mixed plan: cold cache {cold:.2f} s; warm (memory) {statistics.median(warm_mem):.2f} s "
              f"= {cold / statistics.median(warm_mem):.1f}x faster; warm (disk, new process cache) "
              f"{warm_disk:.2f} s = {cold / warm_disk:.1f}x faster")
        data = None
        results = {}
        for name, plan in plans.items():
            model, tok, _ = build(weights, plan, cache, args.device)
            if data is None:
                data = build_task("news", tok, args.seq_len, 8, train_rows=0)
            results[name] = step_time(model, data, args.steps, args.batch_size, args.device)
            del model
        base = results["16-bit LoRA r=16"]
        for name, seconds in results.items():
            print(f"step {name:30} {seconds:.3f} s  ({seconds / base:.2f}x of 16-bit LoRA)")


if __name__ == "__main__":
    main()
