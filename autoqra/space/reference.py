"""The uniform reference plans budgets and baselines are stated against (one home for each).

- QLoRA: every block linear in bitsandbytes NF4 with double-quantized absmax (block 64), LoRA r=16:
  the paper's "<= 4-bit" setting and the ``qlora`` budget.
- 16-bit LoRA: every block linear kept in the compute dtype, LoRA r=16: the ``80%`` budget's base.
"""

from __future__ import annotations

from autoqra.domain import Plan, QuantFormat
from autoqra.space.model_spec import ModelSpec
from autoqra.space.search_space import uniform_plan

QLORA_FORMAT = QuantFormat(name="nf4", bits=4, double_quant=True)
REFERENCE_RANK = 16


def qlora_plan(spec: ModelSpec, granularity: str = "block") -> Plan:
    """Uniform NF4-DQ QLoRA, r=16, on every block linear of ``spec``."""
    return uniform_plan(spec, QLORA_FORMAT, REFERENCE_RANK, granularity)


def lora16_plan(spec: ModelSpec, compute_dtype: str, granularity: str = "block") -> Plan:
    """16-bit LoRA, r=16: block weights unquantized in the compute dtype."""
    return uniform_plan(spec, QuantFormat(name=compute_dtype), REFERENCE_RANK, granularity)  # type: ignore[arg-type, call-arg]
