"""How much rank a budget leaves at 8 bits when attention and MLP linears get their own ranks.

The default space gives the seven linears of a block one rank. At ``qlora`` the best plans found sit
at HQQ-8 with rank 4 (docs/results.md), and the references say the rest of the QLoRA -> 16-bit gap is
rank. This asks the memory model alone (no training) whether per-module ranks open room: for each
(attention rank, MLP rank) pair it builds a module-granularity plan with HQQ-8 g64 everywhere, rank
``r_attn`` on q/k/v/o and ``r_mlp`` on gate/up/down, then moves whole blocks to HQQ-4 g64 until the
predicted peak fits the budget, and prints how many blocks had to give up bits.

``--optimizer adamw8bit`` asks the same under 8-bit AdamW states. A relative budget such as ``qlora``
is QLoRA's own peak under the same setup, so it shrinks with them.

    python experiments/module_rank_room.py [--budget qlora] [--space default] [--optimizer adamw8bit]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ((4, 4), (8, 8), (16, 0), (16, 4), (16, 8), (0, 16), (16, 16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="qlora")
    parser.add_argument("--space", default="default")
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), help="default: the space's")
    args = parser.parse_args()

    from dataclasses import replace

    from autoqra.domain import Plan, PlanGroup, QuantFormat
    from autoqra.space.budget import format_bytes, parse_budget, resolve
    from autoqra.space.memory import MemoryModel
    from autoqra.space.model_spec import model_spec
    from autoqra.space.search_space import load_space

    space = load_space(args.space)
    spec = model_spec(space.model)
    setup = replace(space.setup, optimizer=args.optimizer) if args.optimizer else space.setup
    memory = MemoryModel(spec, setup)
    budget = resolve(parse_budget(args.budget), memory).bytes
    hqq8 = QuantFormat(name="hqq", bits=8, group_size=64)
    hqq4 = QuantFormat(name="hqq", bits=4, group_size=64)
    blocks = spec.groups("block")
    block_of = {module: i for i, (_, modules) in enumerate(blocks) for module in modules}

    def plan(r_attn: int, r_mlp: int, n_low: int) -> Plan:
        groups = []
        for name, modules in spec.groups("module"):
            fmt = hqq4 if block_of[modules[0]] < n_low else hqq8
            rank = r_attn if ".self_attn." in name else r_mlp
            groups.append(PlanGroup(name=name, modules=modules, format=fmt, rank=rank))
        return Plan(model=spec.name, granularity="module", groups=tuple(groups))

    print(f"{spec.name}, space {args.space}, optimizer {setup.optimizer}, budget {args.budget} = "
          f"{format_bytes(budget)}; {len(blocks)} blocks, HQQ-8 g64 everywhere, then blocks moved to HQQ-4 g64 "
          f"until it fits")
    print(f"{'r_attn':>6} {'r_mlp':>5} {'all HQQ-8':>11} {'of budget':>9} {'blocks at HQQ-4':>16} {'peak then':>10}")
    for r_attn, r_mlp in PAIRS:
        full = memory.total(plan(r_attn, r_mlp, 0))
        n_low = next((k for k in range(len(blocks) + 1) if memory.total(plan(r_attn, r_mlp, k)) <= budget), None)
        moved = "never" if n_low is None else str(n_low)
        peak = "-" if n_low is None else format_bytes(memory.total(plan(r_attn, r_mlp, n_low)))
        print(f"{r_attn:>6} {r_mlp:>5} {format_bytes(full):>11} {full / budget:>9.1%} {moved:>16} {peak:>10}")


if __name__ == "__main__":
    main()
