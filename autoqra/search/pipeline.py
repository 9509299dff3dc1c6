"""The one loop owner: stages ask, the executor runs, the store records, then the stage is told.

``SearchPipeline.run`` walks the strategy's stages in order, then, for every strategy alike where the
space has a ``final`` fidelity, the final selection (:mod:`autoqra.search.final`): the best plans at
``high`` retrained at ``final``, the best ``final`` result chosen. Each ``ask`` is trimmed to the trial
budget (in high-trial cost units, see :mod:`autoqra.search.settings`; the final selection's cost is
reserved from the start) and the time limit, run through
the executor, and every result is written to the ledger (Optuna + JSONL) and the archive *before* the
stage hears of it, so a crash loses at most the trials still running. Trial seeds derive from
(run seed, fidelity): every plan at a fidelity gets the same batches and init stream (common random
numbers), and a retry or a resume reproduces a trial.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from autoqra.domain import Fidelity, Plan, TrialResult, derive_seed
from autoqra.errors import AutoQRAError
from autoqra.search.baselines import RandomStage, optuna_stage, sequential_stage, uniform_stage
from autoqra.search.codec import SearchCodec
from autoqra.search.evolution import EvolutionStage
from autoqra.search.final import FinalStage
from autoqra.search.pareto import front_indices
from autoqra.search.repair import Repairer
from autoqra.search.runner import TrialJob, TrialRunner
from autoqra.search.settings import STRATEGIES, SearchPreset
from autoqra.search.stage import FINAL_FIDELITY, HIGH_FIDELITY, LOW_FIDELITY, Archive, Ask, Evaluated, Stage
from autoqra.search.surrogate import PerformanceModel
from autoqra.search.trust_region import TrustRegionStage
from autoqra.search.utility import PriorUtility, flat_utility
from autoqra.search.warm_start import baseline_plans
from autoqra.store.ledger import Ledger, Replay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    strategy: str
    preset: SearchPreset
    budget_bytes: int
    seed: int = 0
    time_limit_s: float | None = None


@dataclass
class RunOutcome:
    archive: Archive
    chosen: Evaluated | None
    front: list[Evaluated]
    spent: float
    elapsed_s: float
    stopped_by: str
    hv_history: list[float] = field(default_factory=list)
    hv_reference: tuple[float, float] | None = None
    spearman_low_high: float | None = None
    promoted_pairs: int = 0
    chosen_by: str = HIGH_FIDELITY  # the fidelity whose result chose the plan: `final` after a final selection

    def count(self, fidelity: str) -> int:
        return len(self.archive.at(fidelity))


def fidelity_costs(fidelities: dict[str, Fidelity]) -> dict[str, float]:
    """Cost of a trial per fidelity in high-trial units (training tokens relative to ``high``)."""
    def tokens(f: Fidelity) -> int:
        return f.steps * f.batch_size * f.seq_len * f.grad_accum

    high = tokens(fidelities[HIGH_FIDELITY])
    return {name: tokens(f) / high for name, f in fidelities.items()}


def spearman_low_high(archive: Archive) -> tuple[float | None, int]:
    """Spearman rank correlation between low and high results of plans run at both."""
    from scipy.stats import spearmanr

    pairs = []
    for e in archive.at(HIGH_FIDELITY):
        low = archive.objective_of(e.ask.genome, LOW_FIDELITY) if e.ask.genome is not None else None
        if e.ok and low is not None and math.isfinite(low):
            pairs.append((low, e.objective))
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return None, len(pairs)
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(rho), len(pairs)


class SearchPipeline:
    def __init__(self, *, codec: SearchCodec, utility: PriorUtility, runner: TrialRunner,
                 fidelities: dict[str, Fidelity], config: RunConfig, ledger: Ledger | None = None,
                 sensitivity: np.ndarray | None = None, replay: Replay | None = None) -> None:
        if config.strategy not in STRATEGIES:
            raise AutoQRAError(f"unknown strategy {config.strategy!r} (strategies: {', '.join(STRATEGIES)})")
        for needed in (LOW_FIDELITY, HIGH_FIDELITY):
            if needed not in fidelities:
                raise AutoQRAError(f"the space must define the {needed!r} fidelity")
        self.codec, self.utility, self.runner, self.fidelities = codec, utility, runner, fidelities
        self.config, self.ledger, self.replay = config, ledger, replay
        self._next_key = 0
        self._replayed: list[tuple[TrialJob, TrialResult]] = []  # asked again after a resume: results at hand
        self._running: dict[int, int] = {}  # job key -> ledger trial id of a trial in flight
        self.replayed_count = 0
        self.sensitivity = sensitivity if sensitivity is not None else np.ones(codec.n_groups)
        self.costs = fidelity_costs(fidelities)
        self.archive = Archive()
        self.rng = np.random.default_rng(config.seed)
        Repairer(codec, utility, config.budget_bytes).check_reachable()
        self.final_top = config.preset.final_top if FINAL_FIDELITY in fidelities else 0
        self.stages = self._stages()
        self.final = (FinalStage(self.archive, self.final_top, config.budget_bytes, self._final_baselines())
                      if self.final_top else None)

    # -- strategies ---------------------------------------------------------------------------
    def _stages(self) -> list[Stage]:
        c, codec, budget = self.config, self.codec, self.config.budget_bytes
        if c.strategy == "autoqra":
            repairer = Repairer(codec, self.utility, budget)
            model = PerformanceModel(codec, self.utility, budget, seed=c.seed)
            evolution = EvolutionStage(codec=codec, repairer=repairer, model=model, archive=self.archive, rng=self.rng,
                                       settings=c.preset.evolution, costs=self.costs,
                                       allotment=c.preset.stage1_share * c.preset.max_cost,
                                       sensitivity=self.sensitivity)
            region = TrustRegionStage(codec=codec, repairer=repairer, model=model, archive=self.archive, rng=self.rng,
                                      batch_size=self.runner.workers, n_candidates=c.preset.tr_candidates)
            return [evolution, region]
        prior_free = Repairer(codec, flat_utility(codec), budget)
        if c.strategy == "random":
            return [RandomStage(codec, prior_free, self.archive, self.rng)]
        if c.strategy == "uniform":
            return [uniform_stage(codec, budget)]
        if c.strategy == "sequential":
            return [sequential_stage(codec, self.sensitivity, budget)]
        return [optuna_stage(c.strategy, codec, prior_free, self.archive, c.seed, c.preset.evolution.population)]

    def _final_baselines(self) -> list[Ask]:
        """``autoqra``'s baselines for the final selection: the quantize-then-LoRA plans and the uniform
        plans with adapters that fit, as its warm start holds them. The baseline strategies get none."""
        if self.config.strategy != "autoqra":
            return []
        genomes = baseline_plans(self.codec, self.sensitivity, self.config.budget_bytes)
        return [Ask(plan=self.codec.decode(g), fidelity=FINAL_FIDELITY, genome=g) for g in genomes]

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        """Run every stage, then the final selection; the executor is closed at the end, whatever happens."""
        c = self.config
        started = time.perf_counter()
        try:
            spent, stopped_by = self._run_stages(self.stages, c.preset.max_cost, 0.0, started)
            if self.final is not None and stopped_by != "time limit":
                # paid for in advance: the search stages could spend only max_cost
                spent, why = self._run_stages([self.final], c.preset.total_cost(self.costs), spent, started)
                if why == "time limit":
                    stopped_by = why
        finally:
            self.runner.close()
        return self._outcome(spent, time.perf_counter() - started, stopped_by)

    def _run_stages(self, stages: list[Stage], limit: float, spent: float, started: float) -> tuple[float, str]:
        """The asynchronous loop: keep up to ``workers`` trials in flight; as each ends, record it, tell
        its stage and ask for more. A stage's asks are trimmed to ``limit`` (high-trial units, counting
        the trials in flight) and the time limit; once either binds, nothing new starts and the trials
        in flight are finished and recorded. Stages run one after another: a stage starts when the
        previous one has been told everything it asked."""
        time_limit = self.config.time_limit_s
        for stage in stages:
            pending: dict[int, Ask] = {}
            stop: str | None = None
            while True:
                while stop is None and not stage.done and len(pending) < self.runner.workers:
                    if time_limit is not None and time.perf_counter() - started >= time_limit:
                        stop = "time limit"
                        break
                    asks = stage.ask(self.runner.workers - len(pending))
                    if not asks:
                        break
                    planned = spent + sum(self.costs[a.fidelity] for a in pending.values())
                    for ask in asks:
                        if planned + self.costs[ask.fidelity] > limit + 1e-9:
                            stop = "trial budget"
                            break
                        planned += self.costs[ask.fidelity]
                        self._submit(stage, ask, pending)
                if not pending:
                    if stop is not None:
                        return spent, stop
                    break  # the stage is done or has nothing more to ask
                spent = self._take_one(stage, pending, spent, started)
        return spent, "strategy finished"

    def _submit(self, stage: Stage, ask: Ask, pending: dict[int, Ask]) -> None:
        key = self._next_key
        self._next_key += 1
        seed = derive_seed(self.config.seed, ask.fidelity)
        peak = self._peak(ask)
        pending[key] = ask
        job = TrialJob(key=key, plan=ask.plan, fidelity=ask.fidelity, seed=seed, predicted_peak_bytes=peak)
        replayed = self.replay.take(ask.plan.plan_hash, ask.fidelity, seed) if self.replay is not None else None
        if replayed is not None:
            self._replayed.append((job, replayed))  # finished before a crash: its result, not a rerun
            return
        if self.ledger is not None:
            self._running[key] = self.ledger.start(ask.plan, stage=stage.name, fidelity=ask.fidelity,
                                                   predicted_peak_bytes=peak, brief=self._brief(ask.plan, peak))
        self.runner.submit(job)

    def _take_one(self, stage: Stage, pending: dict[int, Ask], spent: float, started: float) -> float:
        """Wait for the next trial to end (a replayed one first); record it, archive it, tell the stage."""
        if self._replayed:
            job, result = self._replayed.pop(0)
            replayed = True
        else:
            job, result = self.runner.next_result()
            replayed = False
        ask = pending.pop(job.key)
        evaluated = Evaluated(ask=ask, result=result, predicted_peak_bytes=job.predicted_peak_bytes, stage=stage.name)
        if self.ledger is not None and not replayed:
            self.ledger.finish(self._running.pop(job.key), result, predicted_peak_bytes=job.predicted_peak_bytes,
                               stage=stage.name, fidelity=ask.fidelity)
        self.archive.add(evaluated)
        spent += self.costs[ask.fidelity]
        self.replayed_count += replayed
        self._progress(evaluated, spent, time.perf_counter() - started, replayed)
        stage.tell([evaluated])
        return spent

    def _peak(self, ask: Ask) -> int:
        return self.codec.predicted_peak_bytes(ask.genome) if ask.genome is not None else self.codec.memory.total(ask.plan)

    def _brief(self, plan: Plan, peak: int) -> str:
        return f"{plan_brief(plan)}, {100 * peak / self.config.budget_bytes:.1f}% of budget"

    def _progress(self, e: Evaluated, spent: float, elapsed: float, replayed: bool = False) -> None:
        c = self.config
        best = self.archive.best(HIGH_FIDELITY, c.budget_bytes)
        outcome = f"{e.objective:.4f}" if e.ok else f"{e.result.status.value} ({e.result.error[:60]})"
        best_text = (f"best high {best.objective:.4f} at {best.predicted_peak_bytes / 2**20:.1f} MiB "
                     f"({100 * best.predicted_peak_bytes / c.budget_bytes:.1f}% of budget)" if best else "no high result yet")
        total = c.preset.total_cost(self.costs)
        wall = sum(e.result.phases.model_dump().values())
        how = "from the ledger (ran before the resume)" if replayed else f"in {wall:.0f} s"
        log.info(f"[{e.stage}] trial {len(self.archive.items)} {e.ask.fidelity:<4} {plan_brief(e.ask.plan)} "
                 f"-> {outcome} {how} | {best_text} | cost {spent:.2f}/{total:g}, {elapsed:.0f} s")

    def _outcome(self, spent: float, elapsed: float, stopped_by: str) -> RunOutcome:
        evolution = next((s for s in self.stages if isinstance(s, EvolutionStage)), None)
        return summarize(self.archive, self.config.budget_bytes, spent=spent, elapsed_s=elapsed, stopped_by=stopped_by,
                         hv_history=list(evolution.hv_history) if evolution else [],
                         hv_reference=evolution.reference if evolution else None)


def summarize(archive: Archive, budget_bytes: int, *, spent: float, elapsed_s: float, stopped_by: str,
              hv_history: list[float] | None = None, hv_reference: tuple[float, float] | None = None) -> RunOutcome:
    """What a run found in ``archive``: the high front within budget, the chosen plan (the best
    ``final`` result within budget, else the best ``high`` one), low/high agreement. Used at the end
    of a search and by ``autoqra report`` on a ledger."""
    highs = [e for e in archive.at(HIGH_FIDELITY) if e.ok and e.predicted_peak_bytes <= budget_bytes]
    front = [highs[i] for i in front_indices([(e.objective, float(e.predicted_peak_bytes)) for e in highs])]
    rho, pairs = spearman_low_high(archive)
    chosen_final = archive.best(FINAL_FIDELITY, budget_bytes)
    chosen = chosen_final or archive.best(HIGH_FIDELITY, budget_bytes)
    return RunOutcome(archive=archive, chosen=chosen, front=front,
                      chosen_by=FINAL_FIDELITY if chosen_final is not None else HIGH_FIDELITY,
                      spent=spent, elapsed_s=elapsed_s, stopped_by=stopped_by, hv_history=list(hv_history or []),
                      hv_reference=hv_reference, spearman_low_high=rho, promoted_pairs=pairs)


def plan_brief(plan: Plan) -> str:
    """``3.6 bits, rank 7.5``: nominal bits and rank averaged over block linears, plus the hash prefix."""
    bits = ranks = weight = 0.0
    for group in plan.groups:
        n = len(group.modules)
        bits += group.format.bits * n
        ranks += group.rank * n
        weight += n
    return f"{bits / weight:.1f} bits, rank {ranks / weight:.1f} [{plan.plan_hash[:8]}]"
