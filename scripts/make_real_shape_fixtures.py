#!/usr/bin/env python3
"""Real-shape parity fixtures, made on the GPU machine with HF Transformers (the shared fixtures are tiny: none
has head dim 128 or enough query heads to take the CUDA backend's tensor-core attention).

  python3 scripts/make_real_shape_fixtures.py CONFIG_DIR OUT_DIR

For each shape below: the real config.json from CONFIG_DIR (../shared/configs, or .carry/configs on the GPU
machine) cut to 2 layers and a 4,096-token vocabulary (every attention / MLP shape as published), random weights
(N(0, 0.02) matrices, N(0, 0.1) biases, unit norms) rounded to bf16, stored in the hub layout, reloaded with
`from_pretrained` in float32 and run on the GPU in float32 (TF32 off). Writes OUT_DIR/models/<name>/ with
config.json, model.safetensors, generation_config.json and reference.safetensors in the shared fixtures' layout:
ids_k (int64) / logits_k (f32 [T, V]) for k = 0..2 (37, 6 and 300 tokens), greedy_0 (ids_0 + 16 greedy tokens by
full re-forwards) and greedy_margin_0. The tests read them from $DSFUSE_REAL_SHAPES (tests/test_parity.cpp,
RealShapes.*). About 1 GB per model; never in the repository.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from hf_bench import fill_random_, load_config  # noqa: E402  (also sets the hub offline)

SHAPES = {  # name -> config file: 28 query / 4 kv heads (groups of 7) and 32 / 8 (groups of 4), head dim 128
    "r1-distill-qwen-7b-2l": "deepseek-r1-distill-qwen-7b.json",
    "r1-distill-llama-8b-2l": "deepseek-r1-distill-llama-8b.json",
}
LENS = [37, 6, 300]
VOCAB = 4096


@torch.no_grad()
def reference(model, seed):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(2, VOCAB, (n,), generator=gen) for n in LENS]
    ref = {}
    for k, ids in enumerate(seqs):
        ref[f"ids_{k}"] = ids.clone()
        ref[f"logits_{k}"] = model(ids[None].cuda()).logits[0].float().cpu().contiguous()
    ids, margins = seqs[0].clone(), []
    for _ in range(16):
        lg = model(ids[None].cuda()).logits[0, -1].float().cpu()
        top2 = torch.topk(lg, 2).values
        margins.append(float(top2[0] - top2[1]))
        ids = torch.cat([ids, lg.argmax().view(1)])
    ref["greedy_0"] = ids
    ref["greedy_margin_0"] = torch.tensor(margins, dtype=torch.float32)
    return ref


def write(name, cfg_file, out, seed):
    t0 = time.time()
    d = os.path.join(out, "models", name)
    os.makedirs(d, exist_ok=True)
    with open(cfg_file) as f:
        raw = json.load(f)
    raw.update(num_hidden_layers=2, vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, torch_dtype="bfloat16")
    if "max_window_layers" in raw:
        raw["max_window_layers"] = 2
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, f, indent=2)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(load_config(os.path.join(d, "config.json")), dtype=torch.float32)
    fill_random_(torch, model, seed=seed)
    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.data.normal_(0.0, 0.1, generator=gen)
    sd = {k: v.detach().to(torch.bfloat16).cpu().contiguous() for k, v in model.state_dict().items()}
    if raw.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)
    del model
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    # Reload what was written, the way HF reads a hub checkpoint: the reference is what HF itself computes.
    m2, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                    output_loading_info=True)
    missing = info.get("missing_keys") or []
    if missing:
        raise RuntimeError(f"{name}: HF reports missing keys after reload: {sorted(missing)[:8]}")
    m2 = m2.cuda().eval()
    ref = reference(m2, seed + 2)
    save_file(ref, os.path.join(d, "reference.safetensors"))
    n = sum(v.numel() for v in sd.values())
    print(f"{name}: {n / 1e6:.0f}M params, greedy margin min {ref['greedy_margin_0'].min():.4g}, "
          f"{time.time() - t0:.1f} s", flush=True)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print("transformers", __import__("transformers").__version__, "torch", torch.__version__, flush=True)
    for i, (name, f) in enumerate(SHAPES.items()):
        write(name, os.path.join(sys.argv[1], f), sys.argv[2], 1000 + 10 * i)


if __name__ == "__main__":
    main()
