#!/usr/bin/env python3
"""Train dsfuse's embedded default model: a small DeepSeek-V3 (DeepseekV3ForCausalLM) on tinyshakespeare.

Runs on the GPU machine (torch, transformers 5.x, tokenizers, safetensors). Writes, under --out:
  default/                          the model in the Hugging Face hub layout: config.json,
                                    model.safetensors (bf16, hub key names, per-expert tensors),
                                    tokenizer.json, tokenizer_config.json, generation_config.json,
                                    README.md (model card), training_log.json
  default_model_reference.safetensors
                                    reference for the C++ engine's tests, computed from the saved
                                    directory reloaded with AutoModelForCausalLM.from_pretrained
                                    (float32): ids_0 [24], logits_0 [24,V], ids_1 [64], logits_1 [64,V],
                                    greedy_0 (ids_0 + 32 greedy tokens), greedy_margin_0 [32],
                                    hidden_0 [L+1,24,H]
Data: the corpus is split by position, first 90% train, last 10% validation; the tokenizer (byte-level
BPE with DeepSeek-V3's pre-tokenizer) is trained on the train split only.
Routing balance: e_score_correction_bias is not trained by gradient; it follows DeepSeek-V3's
aux-loss-free rule, bias += u * sign(mean_load - load) after each step (--bias-update-speed).
"""
import argparse, copy, json, math, os, re, sys, time

import torch
import torch.nn.functional as F

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SPECIALS = [BOS, EOS, PAD, USER, ASSISTANT]  # ids 0..4

# DeepSeek-V3's own pre-tokenizer (tokenizer.json of the published checkpoint), so the engine's
# tokenizer code for V3 reads this file unchanged.
V3_SPLITS = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]

# Simplified DeepSeek-V3 chat template: same special tokens and layout, without tool calls.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '" + ASSISTANT + "' + message['content'] + '" + EOS + "' }}"
    "{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}"
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="tinyshakespeare.txt")
    p.add_argument("--out", required=True, help="output root (model goes to OUT/default)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.2, help="training-only dropout (hooks), not in config")
    p.add_argument("--attn-dropout", type=float, default=0.0,
                   help="training-only dropout on attention probabilities (config keeps attention_dropout 0)")
    p.add_argument("--bias-update-speed", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--time-limit", type=float, default=480, help="seconds; stop training early past this")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--moe-intermediate", type=int, default=256)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--sample-tokens", type=int, default=200)
    p.add_argument("--deterministic", type=int, default=1, help="torch.use_deterministic_algorithms (warn only)")
    return p.parse_args()


def model_config(a, vocab_size):
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.intermediate,
        "kv_lora_rank": 64,
        "max_position_embeddings": 1024,
        "moe_intermediate_size": a.moe_intermediate,
        "moe_layer_freq": 1,
        "n_group": 4,
        "n_routed_experts": a.experts,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": a.heads,
        "num_experts_per_tok": 2,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.heads,
        "num_nextn_predict_layers": 0,
        "q_lora_rank": 128,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": 4.0,
                         "original_max_position_embeddings": 256, "beta_fast": 32, "beta_slow": 1,
                         "mscale": 1.0, "mscale_all_dim": 1.0},
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "v_head_dim": 32,
        "vocab_size": vocab_size,
    }


# ----------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(text, vocab_size):
    from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, processors, trainers
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in V3_SPLITS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # paragraphs (speaker turns) as training units: deterministic order
    chunks = [c + "\n\n" for c in text.split("\n\n")]
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    # Lay tokenizer.json out like DeepSeek-V3's: merges as "a b" strings, added tokens special.
    spec = json.loads(tok.to_str())
    merges = spec["model"]["merges"]
    if merges and isinstance(merges[0], list):
        assert all(" " not in a and " " not in b for a, b in merges)
        spec["model"]["merges"] = [f"{a} {b}" for a, b in merges]
    spec["normalizer"] = {"type": "Sequence", "normalizers": []}
    for t in spec["added_tokens"]:
        t.update(normalized=False, special=True)
    s = json.dumps(spec, ensure_ascii=False, indent=2)
    tok2 = Tokenizer.from_str(s)
    probe = text[:20000]
    assert tok2.encode(probe, add_special_tokens=False).ids == tok.encode(probe, add_special_tokens=False).ids
    assert tok2.decode(tok2.encode(probe, add_special_tokens=False).ids) == probe
    for i, sp in enumerate(SPECIALS):
        assert tok2.token_to_id(sp) == i, (sp, tok2.token_to_id(sp))
    return tok2, s


def tokenizer_config():
    def added(c):
        return {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added(BOS),
        "clean_up_tokenization_spaces": False,
        "eos_token": added(EOS),
        "legacy": True,
        "model_max_length": 1024,
        "pad_token": added(EOS),
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }


# ------------------------------------------------------------------------------------------- routing

def moe_layers(model):
    return [l for l in model.model.layers if hasattr(l.mlp, "gate")]


def bias_tensor(gate):
    for n, t in list(gate.named_buffers()) + list(gate.named_parameters()):
        if n.endswith("e_score_correction_bias"):
            return t
    raise RuntimeError("no e_score_correction_bias in gate")


@torch.no_grad()
def noaux_tc_select(logits, bias, cfg):
    """DeepSeek-V3 noaux_tc expert selection (what the load statistics count)."""
    E, G = cfg["n_routed_experts"], cfg["n_group"]
    s = logits.float().sigmoid() + bias.float()
    g = s.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)
    gidx = g.topk(cfg["topk_group"], dim=-1).indices
    gmask = torch.zeros_like(g).scatter_(1, gidx, 1.0)
    smask = gmask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
    s = s.masked_fill(smask == 0, float("-inf"))
    return s.topk(cfg["num_experts_per_tok"], dim=-1).indices


class LoadTracker:
    def __init__(self, model, cfg):
        self.cfg, self.loads, self.handles, self.active = cfg, {}, [], True
        for i, layer in enumerate(moe_layers(model)):
            self.handles.append(layer.mlp.gate.register_forward_hook(self._hook(i, layer.mlp.gate)))

    def _hook(self, i, gate):
        def fn(mod, inp, out):
            if not (self.active and mod.training):
                return
            logits = out[0] if isinstance(out, (tuple, list)) else out
            if logits.dim() != 2 or logits.shape[-1] != self.cfg["n_routed_experts"]:
                logits = logits.reshape(-1, self.cfg["n_routed_experts"])
            idx = noaux_tc_select(logits, bias_tensor(gate), self.cfg)
            cnt = torch.bincount(idx.flatten(), minlength=self.cfg["n_routed_experts"]).float()
            self.loads[i] = self.loads.get(i, 0) + cnt
        return fn

    @torch.no_grad()
    def update(self, model, speed):
        stats = []
        for i, layer in enumerate(moe_layers(model)):
            if i not in self.loads:
                continue
            load = self.loads[i]
            b = bias_tensor(layer.mlp.gate)
            b.add_((speed * torch.sign(load.mean() - load)).to(b.dtype))
            stats.append((load.max() / load.mean()).item())
        self.loads = {}
        return stats


def add_dropout_hooks(model, p):
    """Residual/embedding dropout active in training only; the saved architecture is unchanged."""
    def hook(mod, inp, out):
        if not mod.training or p == 0:
            return None
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, True),) + tuple(out[1:])
        return F.dropout(out, p, True)
    hs = [model.model.embed_tokens.register_forward_hook(hook)]
    for layer in model.model.layers:
        hs.append(layer.self_attn.register_forward_hook(hook))
        hs.append(layer.mlp.register_forward_hook(hook))
    return hs


def official_scaling(cfg):
    rs = cfg["rope_scaling"]
    f = rs["factor"]
    m = 0.1 * rs["mscale_all_dim"] * math.log(f) + 1.0 if f > 1 else 1.0
    return (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]) ** -0.5 * m * m


def patch_scaling(model, want):
    have = [float(l.self_attn.scaling) for l in model.model.layers]
    patched = False
    for l in model.model.layers:
        if abs(l.self_attn.scaling - want) > 1e-9 * want:
            l.self_attn.scaling = want
            patched = True
    return have, patched


# ---------------------------------------------------------------------------------------- hub layout

def to_hub_state(sd, cfg):
    """Rename/unfuse a state dict into the key layout of published DeepSeek-V3 checkpoints."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$", k)
        if m and v.dim() == 3:
            base, kind = m.groups()
            for e in range(v.shape[0]):
                w = v[e]
                if kind == "gate_up_proj":
                    inter = cfg["moe_intermediate_size"]
                    if w.shape[0] != 2 * inter:
                        w = w.t()
                    out[f"{base}.{e}.gate_proj.weight"] = w[:inter].contiguous()
                    out[f"{base}.{e}.up_proj.weight"] = w[inter:].contiguous()
                else:
                    if w.shape[0] != cfg["hidden_size"]:
                        w = w.t()
                    out[f"{base}.{e}.down_proj.weight"] = w.contiguous()
            continue
        if "rotary_emb" in k:  # derived buffers, not in published checkpoints
            continue
        out[k] = v.contiguous()
    return out


def safetensors_keys(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in h.items()}


# ------------------------------------------------------------------------------------------- helpers

def batches_from(tokens, bos, ctx, batch, gen, device):
    n = tokens.numel()
    ix = torch.randint(0, n - ctx, (batch,), generator=gen)
    body = torch.stack([tokens[i:i + ctx] for i in ix.tolist()])  # ctx tokens: targets
    x = torch.cat([torch.full((batch, 1), bos, dtype=torch.long), body[:, :-1]], 1)
    return x.to(device, non_blocking=True), body.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model, val, bos, ctx, device, amp=True):
    """Every validation token is a target exactly once: windows [BOS]+chunk[:-1] -> chunk."""
    was = model.training
    model.eval()
    tot, cnt = 0.0, 0
    chunks = list(torch.split(val, ctx))
    full = [c for c in chunks if len(c) == ctx]
    groups = [full[i:i + 64] for i in range(0, len(full), 64)] + [[c] for c in chunks if len(c) != ctx]
    for group in groups:
        y = torch.stack(group).to(device)
        x = torch.cat([torch.full((y.shape[0], 1), bos, dtype=torch.long, device=device), y[:, :-1]], 1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device == "cuda"):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        tot += loss.item()
        cnt += y.numel()
    model.train(was)
    return tot, cnt


@torch.no_grad()
def sample(model, tok, prompt, n, temperature, top_p, gen, device):
    ids = [0] + tok.encode(prompt, add_special_tokens=False).ids
    x = torch.tensor([ids], device=device)
    past = None
    for _ in range(n):
        o = model(input_ids=x if past is None else x[:, -1:], past_key_values=past, use_cache=True)
        past = o.past_key_values
        lg = o.logits[0, -1].float() / temperature
        probs = lg.softmax(-1)
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(0) - sp < top_p
        sp = sp * keep
        nxt = si[torch.multinomial((sp / sp.sum()).cpu(), 1, generator=gen)].item()
        ids.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]], device=device)], 1)
        if nxt == 1:
            break
    return tok.decode(ids[1:], skip_special_tokens=False)


def pick_snippet(val_text, tok, start_at, n):
    """BOS + (n-1) tokens of validation text, starting at a speaker turn at/after start_at."""
    i = val_text.find("\n\n", start_at)
    i = 0 if i < 0 else i + 2
    ids = tok.encode(val_text[i:i + 4 * n + 400], add_special_tokens=False).ids[: n - 1]
    assert len(ids) == n - 1
    return torch.tensor([0] + ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------- main

def main():
    a = parse_args()
    t_start = time.time()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from safetensors.torch import save_file, load_file
    torch.manual_seed(a.seed)
    if a.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log = {"seed": a.seed, "args": vars(a), "versions": {"torch": torch.__version__,
           "transformers": transformers.__version__}, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    try:
        import tokenizers
        log["versions"]["tokenizers"] = tokenizers.__version__
    except Exception:
        pass
    print("versions", log["versions"], "device", log["device"], flush=True)

    text = open(a.corpus, encoding="utf-8").read()
    cut = int(len(text) * 0.9)
    train_text, val_text = text[:cut], text[cut:]
    log["data"] = {"corpus_chars": len(text), "train_chars": len(train_text), "val_chars": len(val_text),
                   "split": "by position: first 90% train, last 10% validation"}

    tok, tok_json = train_tokenizer(train_text, a.vocab)
    V = tok.get_vocab_size()
    train_ids = torch.tensor(tok.encode(train_text, add_special_tokens=False).ids, dtype=torch.long)
    val_ids = torch.tensor(tok.encode(val_text, add_special_tokens=False).ids, dtype=torch.long)
    log["data"].update(vocab_size=V, train_tokens=train_ids.numel(), val_tokens=val_ids.numel(),
                       train_chars_per_token=len(train_text) / train_ids.numel())
    print("data", log["data"], f"tokenizer {time.time()-t_start:.1f}s", flush=True)

    model_dir = os.path.join(a.out, "default")
    os.makedirs(model_dir, exist_ok=True)
    cfg = model_config(a, V)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    hcfg = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(hcfg, dtype=torch.float32, attn_implementation="sdpa").to(device)
    want = official_scaling(cfg)
    have, patched = patch_scaling(model, want)
    log["softmax_scaling"] = {"transformers": have[0], "official_mscale2": want, "patched": patched,
                              "unscaled_qk_head_dim^-0.5": (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]) ** -0.5}
    print("softmax scaling", log["softmax_scaling"], flush=True)
    print("experts module:", type(moe_layers(model)[0].mlp.experts).__name__,
          {k: tuple(v.shape) for k, v in moe_layers(model)[0].mlp.named_parameters() if "experts" in k and "experts.1." not in k}, flush=True)

    for layer in moe_layers(model):
        b = bias_tensor(layer.mlp.gate)
        b.requires_grad_(False)
        b.zero_()
    n_params = sum(p.numel() for p in model.parameters()) + sum(
        bias_tensor(l.mlp.gate).numel() for l in moe_layers(model) if not isinstance(bias_tensor(l.mlp.gate), torch.nn.Parameter))
    log["params"] = n_params
    print("params", n_params, flush=True)

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95),
                            eps=1e-8, fused=device == "cuda")

    def lr_at(s):
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        pr = (s - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, pr))))

    tracker = LoadTracker(model, cfg)
    drop_hooks = add_dropout_hooks(model, a.dropout)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = a.attn_dropout  # used by HF attention only in training mode
    gen = torch.Generator().manual_seed(a.seed)
    curve, best = [], (float("inf"), -1, None)
    model.train()
    t_train = time.time()
    step = 0
    stopped_early = False
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = batches_from(train_ids, 0, a.ctx, a.batch, gen, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        imbalance = tracker.update(model, a.bias_update_speed)
        last = step == a.steps - 1 or (time.time() - t_train) > a.time_limit
        if (step + 1) % a.eval_every == 0 or last:
            tot, cnt = evaluate(model, val_ids, 0, a.ctx, device)
            vl = tot / cnt
            el = time.time() - t_train
            rec = {"step": step + 1, "steps_per_s": round((step + 1) / el, 2), "train_loss": round(loss.item(), 4), "val_loss": round(vl, 4),
                   "lr": lr_at(step), "grad_norm": round(gn.item(), 3),
                   "max_over_mean_expert_load": [round(v, 3) for v in imbalance], "elapsed_s": round(el, 1)}
            curve.append(rec)
            print(rec, flush=True)
            if vl < best[0]:
                best = (vl, step + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if last:
            stopped_early = step != a.steps - 1
            break
    train_s = time.time() - t_train
    for h in drop_hooks + tracker.handles:
        h.remove()
    log["training"] = {"steps_run": step + 1, "steps_planned": a.steps, "stopped_by_time_limit": stopped_early,
                       "train_seconds": round(train_s, 1), "tokens_per_step": a.batch * a.ctx,
                       "best_step": best[1], "curve": curve,
                       "selection": "weights of the evaluation with the lowest validation loss (checked every "
                                    f"{a.eval_every} steps)"}
    model.load_state_dict(best[2])
    model.eval()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.0

    # ------------------------------------------------------------------------------ save (hub layout)
    # What does save_pretrained itself write? (transformers 5 fuses experts in memory.)
    sp_dir = os.path.join("/tmp", "sp_check")
    m_bf = copy.deepcopy(model).to(torch.bfloat16)
    m_bf.save_pretrained(sp_dir, safe_serialization=True)
    sp_keys = {}
    for fn in sorted(os.listdir(sp_dir)):
        if fn.endswith(".safetensors"):
            sp_keys.update(safetensors_keys(os.path.join(sp_dir, fn)))
    sd = {k: v.detach().to("cpu", torch.bfloat16) for k, v in m_bf.state_dict().items()}
    del m_bf
    hub = to_hub_state(sd, cfg)
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "gate"):  # published checkpoints carry the bias: make sure we do too
            key = f"model.layers.{i}.mlp.gate.e_score_correction_bias"
            if key not in hub:
                print("NOTE:", key, "not in state_dict; added from the module", flush=True)
                hub[key] = bias_tensor(layer.mlp.gate).detach().to("cpu", torch.bfloat16).contiguous()
    fused_in_memory = any(re.search(r"experts\.(gate_up_proj|down_proj)$", k) for k in sd)
    log["save_pretrained"] = {
        "fused_experts_in_memory": fused_in_memory,
        "save_pretrained_writes_per_expert_keys": any(re.search(r"experts\.\d+\.gate_proj\.weight$", k) for k in sp_keys),
        "save_pretrained_keys_equal_ours": set(sp_keys) == set(hub),
        "only_in_save_pretrained": sorted(set(sp_keys) - set(hub))[:10],
        "only_in_ours": sorted(set(hub) - set(sp_keys))[:10],
    }
    print("save_pretrained check", log["save_pretrained"], flush=True)
    if set(sp_keys) == set(hub):
        spd = {}
        for fn in sorted(os.listdir(sp_dir)):
            if fn.endswith(".safetensors"):
                spd.update(load_file(os.path.join(sp_dir, fn)))
        log["save_pretrained"]["tensors_equal"] = all(torch.equal(spd[k], hub[k]) for k in hub)
    save_file(hub, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    weight_bytes = sum(v.numel() * v.element_size() for v in hub.values())
    log["weights"] = {"tensors": len(hub), "stored_params": sum(v.numel() for v in hub.values()),
                      "weight_bytes": weight_bytes,
                      "file_bytes": os.path.getsize(os.path.join(model_dir, "model.safetensors"))}
    print("weights", log["weights"], flush=True)
    with open(os.path.join(model_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 0.8,
                   "top_p": 0.95}, f, indent=2)
    with open(os.path.join(model_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok_json)
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, indent=2, ensure_ascii=False)

    # ------------------------------------------------------------------ reload as HF reads it; reference
    m2, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True,
                                                    attn_implementation="eager")
    m2.eval()
    have2, patched2 = patch_scaling(m2, want)
    log["reload"] = {"loading_info": {k: sorted(v)[:8] for k, v in info.items() if v},
                     "scaling_before_patch": have2[0], "patched": patched2}
    if info.get("missing_keys") or info.get("unexpected_keys"):
        raise RuntimeError(f"reload mismatch: {log['reload']}")
    re_sd = to_hub_state({k: v.to(torch.bfloat16) for k, v in m2.state_dict().items()}, cfg)
    diff = [k for k in hub if k not in re_sd or not torch.equal(re_sd[k], hub[k])]
    log["reload"]["tensors_differing_from_file"] = diff
    if diff:
        raise RuntimeError(f"reloaded tensors differ: {diff[:8]}")
    print("reload", log["reload"], flush=True)

    # validation metrics from the reloaded model (float32 weights = the bf16 file), on the GPU
    m2.to(device)
    tot, cnt = evaluate(m2, val_ids, 0, a.ctx, device, amp=False)
    vl = tot / cnt
    log["validation"] = {"loss_per_token": vl, "perplexity_per_token": math.exp(vl),
                         "bits_per_char": tot / math.log(2) / len(val_text), "tokens": cnt,
                         "chars": len(val_text),
                         "note": "reloaded bf16 weights computed in float32; context windows of "
                                 f"{a.ctx} (BOS + {a.ctx - 1}) over the held-out last 10%"}
    print("validation", log["validation"], flush=True)

    # samples (reloaded model, temperature 0.8, top-p 0.95)
    sgen = torch.Generator().manual_seed(a.seed)
    log["samples"] = {}
    for p in ["ROMEO:", "JULIET:\n", "First Citizen:"]:
        s = sample(m2, tok, p, a.sample_tokens, 0.8, 0.95, sgen, device)
        log["samples"][p] = s
        print(f"----- sample {p!r}\n{s}\n", flush=True)

    m2.to("cpu")
    ref = {}
    with torch.no_grad():
        for k, (start, n) in enumerate([(0, 24), (len(val_text) // 2, 64)]):
            ids = pick_snippet(val_text, tok, start, n)
            out = m2(input_ids=ids[None], output_hidden_states=(k == 0))
            ref[f"ids_{k}"] = ids
            ref[f"logits_{k}"] = out.logits[0].float().contiguous()
            if k == 0:
                ref["hidden_0"] = torch.stack([h[0].float() for h in out.hidden_states]).contiguous()
        ids = ref["ids_0"].clone()
        margins = []
        for _ in range(32):
            lg = m2(input_ids=ids[None]).logits[0, -1].float()
            top2 = torch.topk(lg, 2).values
            margins.append(float(top2[0] - top2[1]))
            ids = torch.cat([ids, lg.argmax().view(1)])
        ref["greedy_0"] = ids
        ref["greedy_margin_0"] = torch.tensor(margins, dtype=torch.float32)
    ref_path = os.path.join(a.out, "default_model_reference.safetensors")
    save_file(ref, ref_path, metadata={"format": "pt"})
    log["reference"] = {"file_bytes": os.path.getsize(ref_path),
                        "ids_0_text": tok.decode(ref["ids_0"][1:].tolist()),
                        "ids_1_text": tok.decode(ref["ids_1"][1:].tolist()),
                        "greedy_0_text": tok.decode(ref["greedy_0"][1:].tolist()),
                        "greedy_margin_min": min(margins)}
    print("reference", log["reference"], flush=True)

    # tokenizer checks through transformers (informational)
    try:
        from transformers import AutoTokenizer
        at = AutoTokenizer.from_pretrained(model_dir)
        probe = "ROMEO:\nBut, soft! what light through yonder window breaks?"
        lib = [0] + tok.encode(probe, add_special_tokens=False).ids
        log["auto_tokenizer"] = {"class": type(at).__name__, "encode_equals_bos_plus_tokenizers": at.encode(probe) == lib,
                                 "encode": at.encode(probe)[:12], "expected": lib[:12],
                                 "chat": at.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": "Speak."}],
                                                                tokenize=False, add_generation_prompt=True)}
    except Exception as e:
        log["auto_tokenizer"] = {"error": repr(e)}
    print("auto_tokenizer", log["auto_tokenizer"], flush=True)

    log["total_seconds"] = round(time.time() - t_start, 1)
    with open(os.path.join(model_dir, "training_log.json"), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=1, ensure_ascii=False)
    write_card(model_dir, cfg, log, a)
    print("done in", log["total_seconds"], "s", flush=True)


def write_card(model_dir, cfg, log, a):
    v = log["validation"]
    s = "\n\n".join(f"Prompt `{json.dumps(p)}`:\n\n```\n{t}\n```" for p, t in log["samples"].items())
    card = f"""# dsfuse default model (tiny DeepSeek-V3 trained on tinyshakespeare)

The model dsfuse runs when `--model` is omitted. Architecture `DeepseekV3ForCausalLM`
(model_type `deepseek_v3`), in the Hugging Face hub layout (bf16 `model.safetensors` with per-expert
tensors, `config.json`, tokenizer files), readable by `transformers` `AutoModelForCausalLM.from_pretrained`.

## Architecture
- {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, {cfg['num_attention_heads']} heads, vocab {cfg['vocab_size']}, untied `lm_head`
- MLA with q LoRA: q_lora_rank {cfg['q_lora_rank']}, kv_lora_rank {cfg['kv_lora_rank']},
  qk_nope_head_dim {cfg['qk_nope_head_dim']}, qk_rope_head_dim {cfg['qk_rope_head_dim']}, v_head_dim {cfg['v_head_dim']}
- Layer 0 dense MLP (intermediate {cfg['intermediate_size']}); layers 1..{cfg['num_hidden_layers']-1} MoE:
  {cfg['n_routed_experts']} routed experts (moe_intermediate {cfg['moe_intermediate_size']}), {cfg['num_experts_per_tok']} per token,
  {cfg['n_shared_experts']} shared expert, `noaux_tc` routing with sigmoid scores + `e_score_correction_bias`,
  n_group {cfg['n_group']}, topk_group {cfg['topk_group']}, norm_topk_prob, routed_scaling_factor {cfg['routed_scaling_factor']}
- YaRN rope: factor {cfg['rope_scaling']['factor']}, original_max_position_embeddings {cfg['rope_scaling']['original_max_position_embeddings']},
  max_position_embeddings {cfg['max_position_embeddings']}, rope_theta {cfg['rope_theta']}; no MTP layer
- Softmax scale: `(qk_nope+qk_rope)^-0.5 * mscale^2` with `mscale = 0.1*mscale_all_dim*ln(factor)+1`
  = {log['softmax_scaling']['official_mscale2']:.6g} (DeepSeek's code, vLLM, SGLang); transformers
  {log['versions']['transformers']} computes {log['softmax_scaling']['transformers']:.6g}
  ({'patched to the official value for training and the reference' if log['softmax_scaling']['patched'] else 'the same value'}).
- Parameters: {log['weights']['stored_params']:,} ({log['weights']['weight_bytes']:,} bytes of bf16 weights)

## Tokenizer
Byte-level BPE, {cfg['vocab_size']} tokens, trained on the training split only, with DeepSeek-V3's own
pre-tokenizer (same regex splits). Special tokens (ids 0-4): `{BOS}`, `{EOS}`, `{PAD}`, `{USER}`, `{ASSISTANT}`.
`add_bos_token: true` (the BOS id is prepended, as for DeepSeek-V3; `tokenizer.json`'s post-processor is
ByteLevel only, like the published file). The chat template is a simplified DeepSeek-V3 template
(system prompt, `{USER}`, `{ASSISTANT}`, `{EOS}` after each assistant turn; no tool calls).

## Training
- Data: `tinyshakespeare.txt` ({log['data']['corpus_chars']:,} characters, public domain), split by
  position: first 90% train ({log['data']['train_tokens']:,} tokens), last 10% validation ({log['data']['val_tokens']:,} tokens).
- Command (dsfuse's `tools/train_default_model.py`, seed {a.seed}):
  `python3 tools/train_default_model.py --corpus tinyshakespeare.txt --out OUT --seed {a.seed} --batch {a.batch} --steps {a.steps} --dropout {a.dropout} --attn-dropout {a.attn_dropout} --weight-decay {a.weight_decay} --eval-every {a.eval_every}`
  on {log['device']} ({log['training']['train_seconds']} s of training).
- AdamW (lr {a.lr}, betas 0.9/0.95, weight decay {a.weight_decay}), {a.warmup} warm-up steps, cosine to
  {a.min_lr_frac}x, batch {a.batch} x {a.ctx} tokens (each window starts with BOS), bf16 autocast,
  training-only dropout {a.dropout} on embeddings and residual branches and {a.attn_dropout} on attention
  probabilities (not part of the saved config); weights kept from the
  evaluation with the lowest validation loss (step {log['training']['best_step']} of {log['training']['steps_run']}).
- `e_score_correction_bias` is not trained by gradient: DeepSeek-V3's aux-loss-free rule,
  bias += {a.bias_update_speed} * sign(mean_load - load) per MoE layer after each step.

## Results (held-out last 10%)
- validation loss {v['loss_per_token']:.4f} nats/token, perplexity {v['perplexity_per_token']:.2f} per token,
  {v['bits_per_char']:.4f} bits per character

## Samples (temperature 0.8, top-p 0.95, 200 tokens)

{s}

## Files
`training_log.json` holds the loss curve, the checks made and these samples. The reference for dsfuse's
tests is `tests/data/default_model_reference.safetensors` (float32 logits from the reloaded model).

## License
Trained on tinyshakespeare (Shakespeare's works, public domain). The weights and tokenizer are part of dsfuse.
"""
    with open(os.path.join(model_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)


if __name__ == "__main__":
    main()
