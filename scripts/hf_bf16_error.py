#!/usr/bin/env python3
"""How far HF Transformers' own bf16 compute is from its float32 reference, on fixtures in the shared layout:
the yardstick for dsfuse's bf16-mode parity figures (same relative error, ||a - b|| / ||b|| over all logits).

  python3 scripts/hf_bf16_error.py MODEL_DIR...   (GPU machine; dirs holding reference.safetensors)

Loads each checkpoint with from_pretrained(dtype=bfloat16, sdpa) on the GPU and prints one line per reference
sequence: full-forward logits of ids_k vs logits_k.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_bench  # noqa: E402,F401  (sets the hub offline)
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


@torch.no_grad()
def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for d in sys.argv[1:]:
        ref = load_file(os.path.join(d, "reference.safetensors"))
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
        for k in range(3):
            if f"ids_{k}" not in ref:
                break
            ids, want = ref[f"ids_{k}"], ref[f"logits_{k}"]
            got = m(ids[None].cuda()).logits[0].float().cpu()
            err = float((got - want).norm() / want.norm())
            print(f"[hf-bf16] {os.path.basename(d.rstrip('/')):24s} logits_{k} T={ids.numel():<3d} full {err:.3e}",
                  flush=True)
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
