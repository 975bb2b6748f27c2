#!/usr/bin/env python3
"""Helper of scripts/gpu_bench.sh (standard library only).

  bench_report.py record --out bench.jsonl --kind KIND --name NAME --rc RC --secs S --stdout F --stderr F [--cmd C]
      Appends one JSON line: the step's last JSON output line ("data"), its exit status, and on failure the tail
      of its stderr ("error"); prints a one-line summary.
      With --metrics-before/--metrics-after (two `scrape` files), also "server": tokens generated server-side in
      that window (first tokens + inter-token gaps of the TTFT/ITL histograms), tok/s, engine steps/s, mean ITL.
  bench_report.py scrape URL OUT.json                      Saves the server's /metrics (and the time) as JSON.
  bench_report.py meta --out bench.jsonl KEY=VALUE...      Appends {"kind": "meta", KEY: VALUE...}.
  bench_report.py table bench.jsonl --configs DIR          Prints the markdown table of the issue.
  bench_report.py est CONFIG.json [--batch B --context N]  Weight bytes read per decode step (bf16), KV bytes.

Bounds. dsfuse's JSON gives bound_tok_s = bandwidth / weight bytes per token as its backend counted them; when
the bandwidth there is not a device figure (under 1000 GB/s: a host probe) or the bytes were not counted (0), the
table recomputes the bound from the best device bandwidth available (dsfuse's, else torch's copy probe in the HF
rows, else $GPU_BW_GBS) and the weight bytes estimated from config.json. Throughput rows (B sequences) are bounded
by (weights read once per step, shared by the B sequences) + (dsfuse's f32 KV cache read at the mean context).
"""
import argparse
import json
import math
import os
import sys

LLAMA_CPP = {  # issue figures, decode batch 1 bf16, measured on an H100 (sm_90a build, flash attention)
    "deepseek-llm-7b": "182 (H100)",
    "deepseek-r1-distill-qwen-1.5b": "417 (H100)",
}
SHORT = {
    "deepseek-r1-distill-qwen-7b": "R1-Distill-Qwen-7B",
    "deepseek-r1-distill-qwen-1.5b": "R1-Distill-Qwen-1.5B",
    "deepseek-r1-distill-llama-8b": "R1-Distill-Llama-8B",
    "deepseek-llm-7b": "DeepSeek-LLM-7B",
    "deepseek-v2-lite": "DeepSeek-V2-Lite",
    "deepseek-v3": "DeepSeek-V3",
}


# ---------------------------------------------------------------- records


def last_json(path):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def tail(path, n=3):
    try:
        with open(path, errors="replace") as f:
            lines = [l.strip() for l in f.read().splitlines() if l.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[:400]


def cmd_record(a):
    data = last_json(a.stdout) if a.stdout else None
    rec = {"kind": a.kind, "name": a.name, "rc": a.rc, "secs": round(a.secs, 1)}
    if a.cmd:
        rec["cmd"] = a.cmd
    if a.note:
        rec["note"] = a.note
    if data is not None:
        rec["data"] = data
    err = None
    if a.skipped:
        err = "skipped: " + a.skipped
    elif a.rc in (124, 137):
        err = f"timeout after {a.secs:.0f} s"
    elif data is not None and data.get("error"):
        err = str(data["error"])
    elif a.rc != 0 and data is not None and data.get("errors"):
        err = f"exit {a.rc}: {data['errors']} of {data.get('requests', '?')} requests failed (see the server log)"
    elif a.rc != 0 or data is None:
        err = f"exit {a.rc}: " + (tail(a.stderr) or tail(a.stdout) or "no output")
    if err:
        rec["error"] = err
    if a.metrics_before and a.metrics_after:
        srv = server_delta(a.metrics_before, a.metrics_after)
        if srv:
            rec["server"] = srv
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    status = ("SKIPPED (" + a.skipped + ")") if a.skipped else ("ERROR " + err) if err else "ok"
    brief = ""
    if data and not err:
        keys = ("decode_tok_s", "output_tok_s", "bound_tok_s", "bandwidth_gbs", "itl_ms_p50", "copy_gbs")
        brief = " ".join(f"{k}={data[k]:.1f}" for k in keys if isinstance(data.get(k), (int, float)))
    if rec.get("server"):
        sv = rec["server"]
        brief += (f" [server side: {sv['tokens']:.0f} tokens in {sv['secs']:.0f} s = {sv['tok_s']:.1f} tok/s, "
                  f"{sv['steps_per_s']:.1f} steps/s, mean ITL {fnum(sv.get('mean_itl_ms'), 1)} ms]")
    print(f"[{a.kind}] {a.name}: {status} ({a.secs:.0f} s) {brief}".rstrip(), flush=True)


def cmd_scrape(a):
    import time
    import urllib.request

    rec = {"t": time.time()}
    try:
        with urllib.request.urlopen(a.url.rstrip("/") + "/metrics", timeout=10) as r:
            text = r.read().decode("utf-8", "replace")
        m = {}
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            key, _, val = line.rpartition(" ")
            try:
                m[key] = float(val)
            except ValueError:
                pass
        rec["m"] = m
    except Exception as e:  # noqa: BLE001
        rec["error"] = str(e)
    with open(a.out, "w") as f:
        json.dump(rec, f)


def server_delta(before, after):
    try:
        with open(before) as f:
            b = json.load(f)
        with open(after) as f:
            e = json.load(f)
    except (OSError, ValueError):
        return None
    if "m" not in b or "m" not in e:
        return None
    mb, me = b["m"], e["m"]

    def d(key):
        return me.get(key, 0.0) - mb.get(key, 0.0)

    secs = max(e["t"] - b["t"], 1e-9)
    firsts = d("dsfuse_time_to_first_token_seconds_count")
    gaps = d("dsfuse_inter_token_latency_seconds_count")
    steps = d("dsfuse_engine_steps_total")
    out = {"secs": secs, "tokens": firsts + gaps, "tok_s": (firsts + gaps) / secs, "steps": steps,
           "steps_per_s": steps / secs, "finished_requests": d('dsfuse_requests_total{status="200"}'),
           "preemptions": d("dsfuse_preemptions_total"), "running_at_end": me.get("dsfuse_running_sequences"),
           "waiting_at_end": me.get("dsfuse_queue_length")}
    if gaps > 0:
        out["mean_itl_ms"] = d("dsfuse_inter_token_latency_seconds_sum") / gaps * 1e3
    return out


def cmd_meta(a):
    rec = {"kind": "meta"}
    for kv in a.items:
        k, _, v = kv.partition("=")
        rec[k] = v
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------- weight bytes from config.json


def _get(c, k, default=None):
    v = c.get(k, default)
    return default if v is None else v


def estimate(cfg, batch=1, context=0, weight_bytes=2, kv_bytes=4):
    """(weight bytes read per decode step, KV bytes per token) for `batch` sequences at once. Embedding: one row
    per sequence; MoE: the expected number of distinct routed experts hit by `batch` tokens; KV as dsfuse stores
    it (f32: K and V per kv head for llama/qwen2, latent + rope key for MLA)."""
    H = cfg["hidden_size"]
    L = cfg["num_hidden_layers"]
    V = cfg["vocab_size"]
    nh = cfg["num_attention_heads"]
    mt = cfg.get("model_type", "llama")
    params = 0.0
    if mt in ("deepseek_v2", "deepseek_v3"):
        qr = cfg.get("q_lora_rank")
        kvr = cfg["kv_lora_rank"]
        nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        qk = nope + rope
        attn = (H * qr + qr + qr * nh * qk) if qr else H * nh * qk
        attn += H * (kvr + rope) + kvr + kvr * nh * (nope + vd) + nh * vd * H + 2 * H
        E = _get(cfg, "n_routed_experts", 0)
        k = _get(cfg, "num_experts_per_tok", 0)
        mI = _get(cfg, "moe_intermediate_size", 0)
        shared = _get(cfg, "n_shared_experts", 0)
        first_dense = _get(cfg, "first_k_dense_replace", 0)
        freq = _get(cfg, "moe_layer_freq", 1)
        hit = E * (1 - (1 - k / E) ** batch) if E else 0
        for layer in range(L):
            params += attn
            if E and layer >= first_dense and layer % freq == 0:
                params += E * H + (E if mt == "deepseek_v3" else 0)  # router (+ correction bias)
                params += 3 * H * mI * (shared + hit)
            else:
                params += 3 * H * cfg["intermediate_size"]
        kv = L * (kvr + rope) * kv_bytes
    else:
        nkv = _get(cfg, "num_key_value_heads", nh)
        hd = _get(cfg, "head_dim", H // nh)
        I = cfg["intermediate_size"]
        per = H * nh * hd + 2 * H * nkv * hd + nh * hd * H + 3 * H * I + 2 * H
        if mt == "qwen2" or cfg.get("attention_bias"):
            per += nh * hd + 2 * nkv * hd
        params = L * per
        kv = L * 2 * nkv * hd * kv_bytes
    params += V * H + H + batch * H  # lm_head, final norm, embedding rows
    return params * weight_bytes, kv


def cmd_est(a):
    with open(a.config) as f:
        cfg = json.load(f)
    w, kv = estimate(cfg, a.batch, a.context)
    print(json.dumps({"weight_bytes_per_step": w, "weight_bytes_per_token": w / a.batch, "kv_bytes_per_token": kv}))


# ---------------------------------------------------------------- table


def fnum(x, digits=0):
    if not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


def cmd_table(a):
    recs = []
    with open(a.jsonl) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass
    meta = {}
    for r in recs:
        if r.get("kind") == "meta":
            meta.update({k: v for k, v in r.items() if k != "kind"})
    by = {}
    for r in recs:
        if r.get("kind") != "meta":
            by[(r["kind"], r["name"])] = r  # the last record of a step wins

    def cfg_of(name):
        try:
            with open(os.path.join(a.configs, name + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    # Device bandwidth: dsfuse's probe when it is a device figure, else torch's copy probe, else $GPU_BW_GBS.
    ds_bw = [r["data"].get("bandwidth_gbs") for (k, _), r in by.items() if k == "dsfuse_decode" and r.get("data")]
    ds_bw = [x for x in ds_bw if isinstance(x, (int, float)) and x >= 1000]
    hf_bw = [r["data"].get("copy_gbs") for (k, _), r in by.items()
             if (k.startswith("hf_") or k == "bandwidth") and r.get("data")]
    hf_bw = [x for x in hf_bw if isinstance(x, (int, float)) and x > 0]
    env_bw = float(os.environ["GPU_BW_GBS"]) if os.environ.get("GPU_BW_GBS") else None
    if env_bw:
        bw, bw_src = env_bw, "GPU_BW_GBS"
    elif ds_bw:
        bw, bw_src = max(ds_bw), "dsfuse bench probe"
    elif hf_bw:
        bw, bw_src = max(hf_bw), "torch device copy, read+write"
    else:
        bw, bw_src = None, "none measured"

    rows = []
    decode_names = [n for (k, n) in by if k in ("dsfuse_decode", "hf_decode")]
    for name in dict.fromkeys(decode_names):
        d, h = by.get(("dsfuse_decode", name)), by.get(("hf_decode", name))
        dd = d.get("data") if d and not d.get("error") else None
        hd = h.get("data") if h and not h.get("error") else None
        tok = dd.get("decode_tok_s") if dd else None
        bound, note_b = None, ""
        if dd:
            wbpt = dd.get("weight_bytes_per_token") or 0
            own_bw = dd.get("bandwidth_gbs") or 0
            if dd.get("bound_tok_s") and wbpt > 0 and (own_bw >= 1000 or meta.get("device") == "cpu"):
                bound = dd["bound_tok_s"]
            elif bw and wbpt > 0:
                bound, note_b = bw * 1e9 / wbpt, "bound from counted bytes at the device bandwidth"
        if bound is None and bw and cfg_of(name):
            bound, note_b = bw * 1e9 / estimate(cfg_of(name))[0], "bound from config-estimated bytes"
        hf = hd.get("decode_tok_s") if hd else None
        notes = []
        if dd:
            notes.append(f"prefill {fnum(dd.get('prefill_tok_s'))} tok/s, TTFT {fnum(dd.get('ttft_ms'), 1)} ms")
        if d and d.get("error"):
            notes.append("dsfuse: " + d["error"][:120])
        if h and h.get("error"):
            notes.append("HF: " + h["error"][:120])
        if note_b:
            notes.append(note_b)
        rows.append((f"decode b=1, {SHORT.get(name, name)} bf16", tok, bound, hf, LLAMA_CPP.get(name, "—"), notes))

    serve_names = [n for (k, n) in by if k in ("dsfuse_serve", "hf_batch")]
    for name in dict.fromkeys(serve_names):
        d, h = by.get(("dsfuse_serve", name)), by.get(("hf_batch", name))
        dd = d.get("data") if d and d.get("data") else None
        hd = h.get("data") if h and not h.get("error") else None
        tok = dd.get("output_tok_s") if dd else None  # present whenever the load generator finished
        sv = d.get("server") if d else None
        server_side = False
        if tok is None and sv and sv.get("tokens"):
            tok, server_side = sv["tok_s"], True
        conc = (dd or {}).get("concurrency") or (hd or {}).get("batch") or int(meta.get("concurrency", 64))
        plen = (dd or {}).get("prompt_len") or (hd or {}).get("prompt_len") or int(meta.get("serve_prompt", 512))
        glen = (dd or {}).get("gen_len") or (hd or {}).get("gen_len") or int(meta.get("serve_gen", 256))
        bound = None
        cfg = cfg_of(name)
        if bw and cfg:
            w, kv = estimate(cfg, batch=conc)
            bound = bw * 1e9 / (w / conc + kv * (plen + glen / 2))
        hf = hd.get("output_tok_s") if hd else None
        notes = []
        if dd:
            notes.append(f"ITL p50 {fnum(dd.get('itl_ms_p50'), 1)} / p99 {fnum(dd.get('itl_ms_p99'), 1)} ms, "
                         f"TTFT p50 {fnum(dd.get('ttft_ms_p50'))} ms, {dd.get('errors', '?')} errors")
        if d and d.get("error"):
            notes.append("dsfuse: " + d["error"][:120])
        if sv:
            notes.append(f"{'dsfuse figure is server-side: ' if server_side else 'server side: '}"
                         f"{fnum(sv.get('tokens'))} tokens in {fnum(sv.get('secs'))} s, "
                         f"{fnum(sv.get('steps_per_s'), 1)} steps/s, mean ITL {fnum(sv.get('mean_itl_ms'), 1)} ms, "
                         f"{fnum(sv.get('finished_requests'))} requests done, {fnum(sv.get('preemptions'))} preemptions")
        if h and h.get("error"):
            notes.append("HF: " + h["error"][:120])
        rows.append((f"{conc} seqs {plen}→{glen}, {SHORT.get(name, name)} bf16 (output tok/s)", tok, bound, hf, "—",
                     notes))

    k = by.get(("kbench_mla", "mla"))
    if k is not None:
        kd = k.get("data") if not k.get("error") else None
        val = None
        notes = []
        if kd:
            for key in ("achieved_gbs", "tok_s", "decode_tok_s", "seqs_per_s"):
                if isinstance(kd.get(key), (int, float)):
                    val = kd[key]
                    break
            extra = [f"{key} {fnum(v, 2)}" for key, v in kd.items() if isinstance(v, (int, float))][:6]
            notes.append(", ".join(extra))
        else:
            notes.append("n/a: " + (k.get("error") or "")[:120])
        kb = (kd.get("bandwidth_gbs") or kd.get("bound_tok_s")) if kd else None
        rows.append(("MLA decode kernel alone (64 seqs × 4096 ctx, 16 heads; GB/s of f32 cache, bound = HBM probe)",
                     val, kb, None, "—", notes))

    out = []
    out.append(f"GPU: {meta.get('gpu', 'unknown')} · commit {meta.get('commit', 'unknown')} · {meta.get('date', '')}"
               f"{' · QUICK' if meta.get('quick') == '1' else ''}")
    out.append(f"Bandwidth for the bounds: {fnum(bw)} GB/s ({bw_src}); dsfuse probe(s): "
               f"{', '.join(fnum(x) for x in ds_bw) or 'n/a'}; torch copy probe: {fnum(max(hf_bw)) if hf_bw else 'n/a'}")
    out.append("")
    out.append("| row | dsfuse tok/s | bound tok/s | % of bound | HF tok/s | × HF | llama.cpp (issue figure) | notes |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, tok, bound, hf, lc, notes in rows:
        pct = f"{100 * tok / bound:.1f}%" if tok and bound else "n/a"
        x = (f"{tok / hf:.1f}×" if tok / hf >= 1 else f"{tok / hf:.2g}×") if tok and hf else "n/a"
        out.append(f"| {label} | {fnum(tok)} | {fnum(bound)} | {pct} | {fnum(hf, 1)} | {x} | {lc} | "
                   f"{'; '.join(n for n in notes if n).replace('|', '/')} |")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="sub", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--kind", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--rc", type=int, default=0)
    r.add_argument("--secs", type=float, default=0)
    r.add_argument("--stdout")
    r.add_argument("--stderr")
    r.add_argument("--cmd")
    r.add_argument("--note")
    r.add_argument("--skipped")
    r.add_argument("--metrics-before")
    r.add_argument("--metrics-after")
    sc = sub.add_parser("scrape")
    sc.add_argument("url")
    sc.add_argument("out")
    m = sub.add_parser("meta")
    m.add_argument("--out", required=True)
    m.add_argument("items", nargs="*")
    t = sub.add_parser("table")
    t.add_argument("jsonl")
    t.add_argument("--configs", default=".carry/configs")
    e = sub.add_parser("est")
    e.add_argument("config")
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--context", type=int, default=0)
    a = ap.parse_args()
    {"record": cmd_record, "meta": cmd_meta, "table": cmd_table, "est": cmd_est, "scrape": cmd_scrape}[a.sub](a)


if __name__ == "__main__":
    sys.exit(main())
