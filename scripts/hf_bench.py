#!/usr/bin/env python3
"""HF Transformers baseline for scripts/gpu_bench.sh: random bf16 weights of a real config.json, on one GPU.

  python3 scripts/hf_bench.py --config C.json --mode decode [--prompt-len 128 --gen-len 64] [--static-cache]
  python3 scripts/hf_bench.py --config C.json --mode batch --batch 64 --prompt-len 512 --gen-len 256
  python3 scripts/hf_bench.py --mode bandwidth

Prints one JSON line: {"model","mode","batch","prompt_len","gen_len","decode_tok_s","prefill_s","total_s",
"output_tok_s","peak_mem_gb", ...}; on any failure (out of memory included) the same line with "error" set, and
exit status 1. Every run also measures a device-to-device copy (read + write bytes / time) as "copy_gbs" before
the model is built (disable with --no-bw-probe).

Timing (both modes): one warm-up generate, then a generate with max_new_tokens=1 (t_prefill: the prompt's forward
and the first token) and one with max_new_tokens=gen_len (t_total), both greedy with min_new_tokens equal to
max_new_tokens so that EOS cannot stop them early. decode_tok_s = batch * (gen_len - 1) / (t_total - t_prefill):
the gen_len - 1 tokens after the first, over the time after the prefill. output_tok_s = batch * gen_len / t_total.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network: never wait on the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DROP_KEYS = ("auto_map", "quantization_config")  # remote code; DeepSeek-V3's FP8 block quantization


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="config.json of a Hugging Face model (llama, qwen2, deepseek_v2, deepseek_v3)")
    ap.add_argument("--mode", choices=("decode", "batch", "bandwidth"), default="decode")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="sequences (default: 1 for decode, 64 for batch)")
    ap.add_argument("--static-cache", action="store_true", help='generate(cache_implementation="static")')
    ap.add_argument("--compile", action="store_true",
                    help="with --static-cache, let generate() torch.compile the forward (5.x does by default; "
                         "without this flag it is disabled: compiling a 7B model takes minutes)")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bw-probe", action="store_true", help="skip the device copy bandwidth probe")
    ap.add_argument("--bw-bytes", type=int, default=2 << 30, help="bytes per copy in the bandwidth probe")
    a = ap.parse_args()
    if a.batch is None:
        a.batch = 64 if a.mode == "batch" else 1
    if a.mode != "bandwidth" and not a.config:
        ap.error("--config is required for --mode decode|batch")
    if a.gen_len < 2 and a.mode != "bandwidth":
        ap.error("--gen-len must be at least 2 (decode speed is measured after the first token)")
    return a


def emit(rec, code):
    print(json.dumps(rec), flush=True)
    sys.exit(code)


def copy_bandwidth_gbs(torch, nbytes, iters=10):
    """Device-to-device copy: (read + write) bytes / time, best-of via CUDA events over `iters` copies."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    a.fill_(1)
    b = torch.empty_like(a)
    for _ in range(2):
        b.copy_(a)
    torch.cuda.synchronize()
    best = None
    for _ in range(3):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(iters):
            b.copy_(a)
        e1.record()
        torch.cuda.synchronize()
        s = e0.elapsed_time(e1) / 1e3
        best = s if best is None else min(best, s)
    del a, b
    torch.cuda.empty_cache()
    return 2.0 * nbytes * iters / best / 1e9


def load_config(path):
    """The hub config.json minus remote code / quantization, as a transformers config (native classes only)."""
    from transformers import AutoConfig

    with open(path) as f:
        d = json.load(f)
    for k in DROP_KEYS:
        d.pop(k, None)
    d["torch_dtype"] = "bfloat16"  # read by 4.x and (as the legacy key of `dtype`) by 5.x
    d.pop("dtype", None)
    d["use_cache"] = True
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(d, f)
        try:
            return AutoConfig.from_pretrained(tmp)
        except Exception as first:  # e.g. a transformers without this model_type under AutoConfig
            try:
                mt = d.pop("model_type")
                return AutoConfig.for_model(mt, **d)
            except Exception:
                raise first


def build_model(torch, cfg, attn):
    """Instantiates the model directly on the GPU in bf16 (no CPU init, no copy), then random weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("cuda"):
        try:  # transformers >= 4.56 / 5.x: `dtype`
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=attn)
        except TypeError:  # older: `torch_dtype`
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation=attn)
    model.eval()
    fill_random_(torch, model)
    return model


def fill_random_(torch, model, std=0.02, chunk=1 << 28, seed=0):
    """In place, chunk by chunk on the GPU (no host memory, seconds for 16B parameters): matrices ~ N(0, std);
    1-D norm weights 1; other 1-D parameters (biases, router correction bias) 0. Not degenerate: activations stay
    O(1) through the layers, so attention and routing do real work."""
    gen = torch.Generator(device="cuda")
    gen.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            if not p.data.is_contiguous():
                p.data.normal_(0.0, std, generator=gen)
                continue
            flat = p.data.view(-1)
            if p.dim() <= 1:
                if "norm" in name:
                    flat.fill_(1.0)
                else:
                    flat.zero_()
                continue
            for i in range(0, flat.numel(), chunk):
                flat[i : i + chunk].normal_(0.0, std, generator=gen)
    torch.cuda.synchronize()


def first_id(x):
    if isinstance(x, (list, tuple)):
        return x[0] if x else None
    return x


def main():
    a = parse_args()
    rec = {
        "model": os.path.splitext(os.path.basename(a.config))[0] if a.config else None,
        "mode": a.mode,
        "batch": a.batch,
        "prompt_len": a.prompt_len,
        "gen_len": a.gen_len,
        "static_cache": a.static_cache,
        "decode_tok_s": None,
        "prefill_s": None,
        "total_s": None,
        "output_tok_s": None,
        "peak_mem_gb": None,
    }
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        rec["error"] = f"import torch: {e}"
        emit(rec, 1)
    try:
        import transformers

        rec["transformers"] = transformers.__version__
    except Exception as e:  # noqa: BLE001
        rec["error"] = f"import transformers: {e}"
        if a.mode != "bandwidth":
            emit(rec, 1)
    rec["torch"] = torch.__version__
    if not torch.cuda.is_available():
        rec["error"] = "no CUDA device visible to torch"
        emit(rec, 1)
    rec["gpu"] = torch.cuda.get_device_name(0)

    try:
        if not a.no_bw_probe or a.mode == "bandwidth":
            rec["copy_gbs"] = copy_bandwidth_gbs(torch, a.bw_bytes)
        if a.mode == "bandwidth":
            emit(rec, 0)

        torch.manual_seed(a.seed)
        t0 = time.perf_counter()
        cfg = load_config(a.config)
        model = build_model(torch, cfg, a.attn)
        rec["load_s"] = time.perf_counter() - t0
        rec["params"] = sum(p.numel() for p in model.parameters())
        rec["architecture"] = type(model).__name__

        eos = first_id(getattr(cfg, "eos_token_id", None))
        if eos is None:
            eos = first_id(getattr(model.generation_config, "eos_token_id", None))
        if eos is not None:
            model.generation_config.pad_token_id = eos  # no "Setting pad_token_id" warning per generate
        V = int(cfg.vocab_size)
        gen = torch.Generator(device="cuda")
        gen.manual_seed(a.seed + 1)
        ids = torch.randint(0, V, (a.batch, a.prompt_len), device="cuda", generator=gen)
        mask = torch.ones_like(ids)
        extra = {}
        if a.static_cache:
            extra["cache_implementation"] = "static"
            if not a.compile:
                extra["disable_compile"] = True  # GenerationConfig field (4.5x+, 5.x): no automatic compile
        rec["compile"] = bool(a.static_cache and a.compile)

        def generate(n):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, **extra)  # generate() runs under no_grad itself
            torch.cuda.synchronize()
            return time.perf_counter() - t, out

        generate(min(4, a.gen_len))  # warm-up: cuBLAS handles, kernels, allocator
        torch.cuda.reset_peak_memory_stats()
        t_prefill, _ = generate(1)
        t_total, out = generate(a.gen_len)
        new = int(out.shape[1]) - a.prompt_len
        if new != a.gen_len:
            rec["warning"] = f"generated {new} tokens, expected {a.gen_len}"
        rec["prefill_s"] = t_prefill
        rec["total_s"] = t_total
        rec["decode_tok_s"] = a.batch * (a.gen_len - 1) / max(t_total - t_prefill, 1e-9)
        rec["output_tok_s"] = a.batch * a.gen_len / t_total
        rec["prefill_tok_s"] = a.batch * a.prompt_len / t_prefill
        rec["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        emit(rec, 0)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 (OOM is torch.OutOfMemoryError, a RuntimeError)
        oom = "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        rec["error"] = ("OOM: " if oom else f"{type(e).__name__}: ") + msg
        with contextlib.suppress(Exception):
            rec["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        traceback.print_exc(file=sys.stderr)
        emit(rec, 1)


if __name__ == "__main__":
    main()
