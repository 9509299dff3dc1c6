"""How fast this machine computes in bf16 against fp32, and which dtype trials therefore use.

Times a matmul at the default model's MLP shape (tokens x 576 @ 576 x 1536) in fp32 and bf16 (fp16
too with --fp16) on the CPU, and on CUDA when present, and prints what ``execution_dtype`` picks for
a bf16 setup. On a CPU without oneDNN's bf16 path, torch's bf16 matmul is a scalar fallback; trials
then compute in fp32 from bf16-rounded weights (``autoqra.trials.backends.execution_dtype``).

    python experiments/dtype_speed.py [--tokens 256] [--repeats 20] [--fp16]
"""

from __future__ import annotations

import argparse
import time


def _time(device: str, dtype: object, tokens: int, repeats: int) -> float:
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(tokens, 576, generator=generator, device=device).to(dtype)
    b = torch.randn(576, 1536, generator=generator, device=device).to(dtype)
    for _ in range(2):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    import torch

    from autoqra.trials.backends import execution_dtype

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fp16", action="store_true", help="time fp16 too")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for device in devices:
        fp32 = _time(device, torch.float32, args.tokens, args.repeats)
        print(f"{device}: fp32 {fp32 * 1e3:.2f} ms per matmul ({args.tokens}x576 @ 576x1536)")
        names = [("bf16", torch.bfloat16)] + ([("fp16", torch.float16)] if args.fp16 else [])
        for name, dtype in names:
            seconds = _time(device, dtype, args.tokens, args.repeats)
            print(f"{device}: {name} {seconds * 1e3:.2f} ms, {seconds / fp32:.1f}x fp32's time; a {name} setup's "
                  f"trials compute in {execution_dtype(name, device)}")


if __name__ == "__main__":
    main()
