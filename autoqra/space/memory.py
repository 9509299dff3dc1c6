"""Peak training memory of a plan, from shapes alone (DESIGN.md §4).

The peak of a quantized-LoRA training step on the training device is modelled as

    static      quantized block weights, exactly as the backend stores them (formats.py)
                + unquantized tensors (embeddings, LM head, norms, biases, buffers) in the compute dtype
                + LoRA parameters, their gradients (counted resident: conservative by their size)
                + optimizer states
    + framework    a constant for allocator rounding and library workspaces
    + activations  tensors saved for backward at the end of the forward pass (below); with gradient
                   checkpointing, each block's input
    + the larger of the two phases of the backward pass, which never overlap:
        logits     its start: the fp32 log-softmax output the loss saved, the fp32 gradient coming
                   into it and the one it returns (the compute-dtype logits are not saved by any
                   autograd node and are freed with the model's output)
        blocks     the blocks' backward, after the logits' tensors are freed: with checkpointing
                   one block's saved tensors, re-created (``recompute``), plus the workspace:
                   dequantization buffers of the largest quantized layer and one block's backward
                   working set

Measured on an H200 (docs/memory-validation.md): summing both phases, as this model did before,
over-predicted checkpointed runs by 10-30%.

The activation terms follow what PyTorch actually saves for this stack (transformers' decoder
blocks with SDPA attention, PEFT LoRA, HQQ / bitsandbytes bases): RMSNorm keeps its input in fp32
and the rsqrt; PEFT casts each adapter's input to the adapter dtype (fp32), so with a bf16
compute dtype every LoRA-wrapped linear keeps its own fp32 copy of its input; HQQ's autograd
function keeps its input while frozen nn.Linear and bitsandbytes bases keep none; SDPA keeps q, k,
v (k and v at the KV-head count), its output and an fp32 log-sum-exp per head; a gated MLP keeps
gate, activation and up outputs. ``tests/unit/test_memory_activations.py`` checks these terms
against the bytes PyTorch's saved-tensor hooks report on tiny models. Gradient checkpointing keeps
each block's input and recomputes one block at a time during backward.

It is computed per plan in well under a millisecond for a 32-block model (the search calls it
thousands of times): everything that does not depend on the plan is precomputed once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from autoqra.domain import Plan, QuantFormat
from autoqra.errors import PlanError
from autoqra.space.formats import DTYPE_BYTES, bias_bytes, weight_storage_bytes
from autoqra.space.model_spec import LinearSpec, ModelSpec

OptimizerName = Literal["adamw", "adamw8bit", "paged_adamw8bit"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw8bit", "paged_adamw8bit")
DEFAULT_FRAMEWORK_BYTES = 64 * 2**20
#: which prices plans get: runs and comparison cells record it, and a resume across versions is refused.
#: 1: both backward phases summed, logits at dtype + 12 bytes; 2: the larger phase only, logits at 12
#: bytes (checked against an H200: docs/memory-validation.md)
MEMORY_MODEL_VERSION = 2

_BNB_8BIT_MIN_NUMEL = 4096  # bitsandbytes keeps fp32 states for smaller tensors
_BNB_8BIT_BLOCK = 256
_HQQ_DEQUANT_COPIES = 3  # unpacked codes, (codes - zero), (...) * scale live at once
_BNB_DEQUANT_COPIES = 1


@dataclass(frozen=True)
class TrainingSetup:
    """The training configuration a budget refers to."""

    batch_size: int = 8
    seq_len: int = 512
    grad_checkpointing: bool = False
    optimizer: OptimizerName = "adamw"
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    adapter_dtype: Literal["bf16", "fp16", "fp32"] = "fp32"  # PEFT upcasts adapters to fp32 by default
    framework_bytes: int = DEFAULT_FRAMEWORK_BYTES

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1:
            raise PlanError(f"batch size and sequence length must be >= 1 (got {self.batch_size}, {self.seq_len})")
        if self.optimizer not in OPTIMIZERS:
            raise PlanError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        for dtype in (self.compute_dtype, self.adapter_dtype):
            if dtype not in DTYPE_BYTES:
                raise PlanError(f"dtype must be one of {tuple(DTYPE_BYTES)}, not {dtype!r}")
        if self.framework_bytes < 0:
            raise PlanError("framework_bytes must be >= 0")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class MemoryBreakdown:
    """Predicted peak training memory, in bytes, by component."""

    quantized_weights: int
    unquantized: int
    lora_params: int
    lora_grads: int
    optimizer_states: int
    activations: int  # saved at the end of the forward pass (with checkpointing: each block's input)
    recompute: int  # one block's saved tensors, re-created in backward under checkpointing (0 without)
    logits: int
    workspace: int
    framework: int

    @property
    def static(self) -> int:
        """Bytes resident for the whole run: weights, adapters, gradients, optimizer states."""
        return self.quantized_weights + self.unquantized + self.lora_params + self.lora_grads + self.optimizer_states

    @property
    def peak_phase(self) -> Literal["logits", "blocks"]:
        """The phase of the backward pass where the peak falls (the other one's terms do not count)."""
        return "logits" if self.logits >= self.recompute + self.workspace else "blocks"

    @property
    def total(self) -> int:
        phase = self.logits if self.peak_phase == "logits" else self.recompute + self.workspace
        return self.static + self.framework + self.activations + phase

    def as_dict(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["static"] = self.static
        out["peak_phase"] = self.peak_phase
        out["total"] = self.total
        return out


class MemoryModel:
    """Predicts :class:`MemoryBreakdown` for plans of one model under one training setup."""

    def __init__(self, spec: ModelSpec, setup: TrainingSetup) -> None:
        self.spec = spec
        self.setup = setup
        self._a = DTYPE_BYTES[setup.compute_dtype]
        self._p = DTYPE_BYTES[setup.adapter_dtype]
        self._by_name: dict[str, LinearSpec] = {lin.name: lin for lin in spec.linears}
        p = spec.params
        unquantized_params = p.total - p.block_linear_weights - p.block_linear_biases
        self._unquantized_base = unquantized_params * self._a + spec.buffer_bytes
        self._storage_cache: dict[tuple[QuantFormat, int, int, bool], tuple[int, int]] = {}
        # fp32 log-softmax output + incoming gradient + returned gradient: the compute-dtype logits are
        # saved by no autograd node and are gone by then (measured with bf16 compute on an H200; in fp32
        # they are the log-softmax's input, which it does not save either)
        self._logits = setup.tokens * spec.vocab_size * 12
        self._outside_blocks = setup.tokens * (
            4 * spec.hidden_size + 4  # final norm: fp32 input and rsqrt
            + 8  # int64 labels kept by the loss
        ) + 2 * setup.seq_len * spec.head_dim * self._a  # rotary cos/sin, shared by all blocks

    # -- public -----------------------------------------------------------------------------
    def estimate(self, plan: Plan) -> MemoryBreakdown:
        a, p = self._a, self._p
        quantized = 0
        unquantized = self._unquantized_base
        lora_numel: list[int] = []
        per_block: dict[int, list[tuple[LinearSpec, QuantFormat, int]]] = {}
        largest_dequant = 0
        for group in plan.groups:
            fmt, rank = group.format, group.rank
            if not fmt.quantized and fmt.name != self.setup.compute_dtype:
                raise PlanError(
                    f"group {group.name}: unquantized format {fmt.name} differs from the compute dtype "
                    f"{self.setup.compute_dtype}; layers kept in full precision use the compute dtype"
                )
            for name in group.modules:
                lin = self._by_name.get(name)
                if lin is None:
                    raise PlanError(f"plan names module {name!r}, which {self.spec.name} does not have")
                weight, bias = self._storage(fmt, lin)
                if fmt.quantized:
                    quantized += weight
                    copies = _HQQ_DEQUANT_COPIES if fmt.name == "hqq" else _BNB_DEQUANT_COPIES
                    largest_dequant = max(largest_dequant, copies * lin.numel * a)
                else:
                    unquantized += weight
                unquantized += bias
                if rank > 0:
                    lora_numel += [rank * lin.in_features, rank * lin.out_features]
                per_block.setdefault(lin.block, []).append((lin, fmt, rank))
        if sum(len(v) for v in per_block.values()) != len(self.spec.linears):
            self.spec.check_plan(plan)

        lora_params = sum(lora_numel) * p
        # Without checkpointing nothing before the first block requires grad, so its first norm and
        # the frozen bases reading that norm's output record no autograd node and keep nothing.
        first_input_needs_grad = self.setup.grad_checkpointing
        block_acts = [
            self._block_activations(items, input_needs_grad=first_input_needs_grad or index > 0)
            for index, (_, items) in enumerate(sorted(per_block.items()))
        ]
        tokens = self.setup.tokens
        if self.setup.grad_checkpointing:
            activations = self.spec.num_blocks * tokens * self.spec.hidden_size * a
            recompute = max(block_acts)
        else:
            activations = sum(block_acts)
            recompute = 0
        activations += self._outside_blocks
        workspace = largest_dequant + tokens * a * (2 * self.spec.hidden_size + 2 * self.spec.intermediate_size)
        return MemoryBreakdown(
            quantized_weights=quantized,
            unquantized=unquantized,
            lora_params=lora_params,
            lora_grads=lora_params,
            optimizer_states=self._optimizer_bytes(lora_numel),
            activations=activations,
            recompute=recompute,
            logits=self._logits,
            workspace=workspace,
            framework=self.setup.framework_bytes,
        )

    def total(self, plan: Plan) -> int:
        return self.estimate(plan).total

    # -- parts ------------------------------------------------------------------------------
    def _storage(self, fmt: QuantFormat, lin: LinearSpec) -> tuple[int, int]:
        key = (fmt, lin.out_features, lin.in_features, lin.bias)
        hit = self._storage_cache.get(key)
        if hit is None:
            hit = (
                weight_storage_bytes(fmt, lin.out_features, lin.in_features, self._a),
                bias_bytes(fmt, lin.out_features, lin.bias, self._a),
            )
            self._storage_cache[key] = hit
        return hit

    def _optimizer_bytes(self, lora_numel: list[int]) -> int:
        step_bytes = 4 * len(lora_numel)  # torch AdamW keeps a float32 step tensor per parameter
        if self.setup.optimizer == "adamw":
            return 2 * self._p * sum(lora_numel) + step_bytes
        total = 0
        for n in lora_numel:
            if n >= _BNB_8BIT_MIN_NUMEL:
                total += 2 * n + 2 * 4 * -(-n // _BNB_8BIT_BLOCK)
            else:
                total += 2 * 4 * n
        return total + 2 * 256 * 4  # two 256-entry float32 quantization maps

    def _block_activations(self, items: list[tuple[LinearSpec, QuantFormat, int]], input_needs_grad: bool) -> int:
        """Bytes one block saves for backward (see the module docstring)."""
        spec, a, p = self.spec, self._a, self._p
        h = spec.hidden_size
        q_width = spec.num_attention_heads * spec.head_dim
        kv_width = spec.num_kv_heads * spec.head_dim
        per_token = 0
        # two RMSNorms: fp32 input + rsqrt
        per_token += (2 if input_needs_grad else 1) * (4 * h + 4)
        by_role: dict[str, list[tuple[LinearSpec, QuantFormat, int]]] = {}
        for item in items:
            by_role.setdefault(item[0].role, []).append(item)
        # SDPA: q and k (new tensors after rotary), v, output, fp32 log-sum-exp per head. (Fused qkv
        # projections, as in Phi-3, keep slightly more: measured within 3.5% on tiny Phi-3 blocks.)
        per_token += a * (2 * q_width + 2 * kv_width) + 4 * spec.num_attention_heads
        # gated MLP: gate output, activation output, up output
        per_token += 3 * a * spec.intermediate_size
        # inputs of the linears, per role (linears of one role read one tensor)
        for role, members in by_role.items():
            width = members[0][0].in_features
            lora = [m for m in members if m[2] > 0]
            base_keeps = any(m[1].name == "hqq" for m in members) and (input_needs_grad or role != "attn_in")
            keeps_input = base_keeps or (lora and a == p)
            # the attention output is already kept by SDPA
            if keeps_input and role != "attn_out":
                per_token += a * width
            if a != p:
                per_token += p * width * len(lora)
            per_token += sum(p * m[2] for m in lora)  # lora_A outputs, kept by lora_B
        return per_token * self.setup.tokens
