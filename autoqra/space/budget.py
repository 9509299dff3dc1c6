"""Budget strings: what peak training memory a search may use.

``16GB`` / ``16GiB`` / ``16G``: binary gigabytes (2**30 bytes; GB and GiB mean the same here, as
on GPU spec sheets that say "16 GB"). ``16000MB``, ``512KiB``, ``1.5TB``, or raw bytes
(``17179869184``). ``4bits``: the peak of the QLoRA reference setup with the block weights costing
that many stored bits each on average (metadata included). ``qlora``: the peak of uniform
NF4 (double-quantized) QLoRA, r=16, at the same batch size and sequence length. ``80%``: that
fraction of the peak of 16-bit LoRA, r=16.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from autoqra.domain import Budget
from autoqra.errors import BudgetError
from autoqra.space.memory import MemoryModel
from autoqra.space.reference import REFERENCE_RANK, lora16_plan, qlora_plan

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kb": 2**10, "kib": 2**10,
    "m": 2**20, "mb": 2**20, "mib": 2**20,
    "g": 2**30, "gb": 2**30, "gib": 2**30,
    "t": 2**40, "tb": 2**40, "tib": 2**40,
}
_SIZE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[a-z]*)$")
_BITS = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*bits?$")
_PERCENT = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*%$")
MAX_BYTES = 2**50  # 1 PiB: anything larger is a typo
MIN_BYTES = 2**20


def parse_budget(text: str) -> Budget:
    """Parse a budget string; raise BudgetError with one line when it is malformed or out of range."""
    if not isinstance(text, str):
        raise BudgetError(f"budget must be a string, not {type(text).__name__}")
    raw = text.strip()
    s = raw.lower()
    if not s:
        raise BudgetError("budget is empty; examples: 16GB, 16000MB, qlora, 4bits, 80%")
    if s == "qlora":
        return Budget(text=raw, kind="qlora", value=1.0)
    if m := _BITS.match(s):
        bits = float(m["num"])
        if not 0 < bits <= 32:
            raise BudgetError(f"budget {raw!r}: average bits must be in (0, 32]")
        return Budget(text=raw, kind="bits", value=bits)
    if m := _PERCENT.match(s):
        pct = float(m["num"])
        if not 0 < pct <= 200:
            raise BudgetError(f"budget {raw!r}: percentage must be in (0, 200]")
        return Budget(text=raw, kind="percent", value=pct / 100)
    if m := _SIZE.match(s):
        unit = m["unit"]
        if unit not in _UNITS:
            raise BudgetError(f"budget {raw!r}: unknown unit {unit!r} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
        value = float(m["num"]) * _UNITS[unit]
        if not math.isfinite(value) or not MIN_BYTES <= value <= MAX_BYTES:
            raise BudgetError(f"budget {raw!r}: must be between 1 MiB and 1 PiB")
        return Budget(text=raw, kind="bytes", value=float(int(value)))
    raise BudgetError(f"budget {raw!r} is not understood; examples: 16GB, 16000MB, 17179869184, qlora, 4bits, 80%")


@dataclass(frozen=True)
class ResolvedBudget:
    budget: Budget
    bytes: int
    explanation: str


def qlora_reference(memory: MemoryModel) -> int:
    """Peak of uniform NF4 (double-quantized, block 64) QLoRA with r=16 on every block linear."""
    return memory.total(qlora_plan(memory.spec))


def lora16_reference(memory: MemoryModel) -> int:
    """Peak of 16-bit LoRA r=16: block weights unquantized in the compute dtype."""
    return memory.total(lora16_plan(memory.spec, memory.setup.compute_dtype))


def resolve(budget: Budget, memory: MemoryModel) -> ResolvedBudget:
    """Bytes of peak training memory that ``budget`` allows for this model and training setup."""
    if budget.kind == "bytes":
        n = int(budget.value)
        return ResolvedBudget(budget, n, f"{budget.text} = {n:,} bytes")
    if budget.kind == "qlora":
        n = qlora_reference(memory)
        return ResolvedBudget(budget, n, f"qlora = peak of uniform NF4-DQ QLoRA r={REFERENCE_RANK} = {n:,} bytes")
    if budget.kind == "percent":
        ref = lora16_reference(memory)
        n = int(budget.value * ref)
        return ResolvedBudget(
            budget, n, f"{budget.text} of the 16-bit LoRA r={REFERENCE_RANK} peak ({ref:,} bytes) = {n:,} bytes"
        )
    reference = memory.estimate(qlora_plan(memory.spec))
    weights = memory.spec.params.block_linear_weights
    n = reference.total - reference.quantized_weights + int(budget.value * weights / 8)
    return ResolvedBudget(
        budget, n, f"{budget.text} = QLoRA r={REFERENCE_RANK} peak with block weights at {budget.value:g} bits = {n:,} bytes"
    )


def format_bytes(n: int | float) -> str:
    """Human size in binary units, e.g. ``15.22 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
