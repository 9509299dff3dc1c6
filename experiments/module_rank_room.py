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
    blocks = spec.num_blocks

    def plan(r_attn: int, r_mlp: int, n_low: int) -> Plan:
        """One group per linear (as ``spec.groups("module")``): blocks below ``n_low`` at HQQ-4."""
        groups = tuple(PlanGroup(name=lin.name, modules=(lin.name,), format=hqq4 if lin.block < n_low else hqq8,
                                 rank=r_attn if lin.role.startswith("attn") else r_mlp) for lin in spec.linears)
        return Plan(model=spec.name, granularity="module", groups=groups)

    print(f"{spec.name}, space {args.space}, optimizer {setup.optimizer}, budget {args.budget} = "
          f"{format_bytes(budget)}; {blocks} blocks, HQQ-8 g64 everywhere, then blocks moved to HQQ-4 g64 "
          f"until it fits")
    print(f"{'r_attn':>6} {'r_mlp':>5} {'all HQQ-8':>11} {'of budget':>9} {'blocks at HQQ-4':>16} {'peak then':>10}")
    for r_attn, r_mlp in PAIRS:
        full = memory.total(plan(r_attn, r_mlp, 0))
        totals = (memory.total(plan(r_attn, r_mlp, k)) for k in range(blocks + 1))
        fit = next(((k, total) for k, total in enumerate(totals) if total <= budget), None)
        moved = "never" if fit is None else str(fit[0])
        peak = "-" if fit is None else format_bytes(fit[1])
        print(f"{r_attn:>6} {r_mlp:>5} {format_bytes(full):>11} {full / budget:>9.1%} {moved:>16} {peak:>10}")


if __name__ == "__main__":
    main()
