"""A model folder with random weights from another folder's config, and that folder's tokenizer.

The GPU trials of ``experiments/gpu_trials.sh`` train on it where the embedded model's weights cannot
be carried (its GGUF is 98 MB): speed and memory depend on shapes alone, not on the weights' values.

    python experiments/random_weights_model.py SOURCE_FOLDER OUT_FOLDER
(SOURCE_FOLDER: the converted embedded model, ~/.cache/autoqra/models/smollm2-135m-instruct, or any
folder with config.json and tokenizer files)
"""

import shutil
import sys
from pathlib import Path


def main(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    print("saved", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
