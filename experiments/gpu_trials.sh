# Real `autoqra trial` runs on CUDA, on a random-weight SmolLM2-135M (experiments/random_weights_model.py):
# trial speed and the measured peak (torch.cuda.max_memory_allocated) against the memory model's
# prediction, with gradient checkpointing as the default space's budget assumes. The task data (news)
# comes from gensim's wheel as always. Results: one TrialResult JSON per trial in OUT.
#   bash experiments/gpu_trials.sh SOURCE_MODEL_FOLDER OUT
# (SOURCE_MODEL_FOLDER holds config.json and the tokenizer, e.g. ~/.cache/autoqra/models/smollm2-135m-instruct)
set -o pipefail
src=${1:?source model folder}; out=${2:?output folder}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore AUTOQRA_CACHE=${AUTOQRA_CACHE:-/tmp/aqcache}
python3 experiments/random_weights_model.py "$src" /tmp/random-smollm2 2>&1 | tail -1
i=0
for args in "--format nf4 --double-quant --rank 16 --fidelity high" "--format hqq --bits 4 --rank 16 --fidelity high" \
            "--format nf4 --double-quant --rank 16 --fidelity final" "--format hqq --bits 8 --rank 4 --fidelity final"; do
  i=$((i+1))
  SECONDS=0
  # shellcheck disable=SC2086  # $args is a list of options
  timeout 150 python3 -m autoqra trial --model /tmp/random-smollm2 --task news $args --device cuda --grad-checkpointing \
    --out "$out/trial-$i.json" 2>&1 | grep -v -E "^\s*$|warn"
  echo "wall ${SECONDS} s for: $args"
done
