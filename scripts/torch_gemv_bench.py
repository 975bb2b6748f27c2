# Reference for the decode GEMV: torch F.linear (cuBLAS, bf16) at batch 1 and 4 on N x K shapes, replayed in a
# CUDA graph over enough weight copies to miss L2 (as `dsfuse kbench gemv --graph` times dsfuse). GPU machine only:
#   python3 scripts/torch_gemv_bench.py 4096x11008 12288x4096
import torch, sys
shapes = [s.split('x') for s in sys.argv[1:]] or []
torch.manual_seed(0)
# probe: a large device copy
a = torch.empty(1 << 30, dtype=torch.uint8, device='cuda'); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
torch.cuda.synchronize(); e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
e0.record()
for _ in range(10): b.copy_(a)
e1.record(); torch.cuda.synchronize()
bw = 2 * 10 * (1 << 30) / (e0.elapsed_time(e1) / 1e3) / 1e9
print(f"copy probe {bw:.0f} GB/s")
del a, b
for n, k in shapes:
    n, k = int(n), int(k)
    copies = max(2, (1 << 30) // (n * k * 2))
    ws = [torch.randn(n, k, device='cuda', dtype=torch.bfloat16) * 0.05 for _ in range(copies)]
    for T in (1, 4):
        x = torch.randn(T, k, device='cuda', dtype=torch.bfloat16)
        ys = [None] * copies
        for i in range(copies): ys[i] = torch.nn.functional.linear(x, ws[i])
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(copies): ys[i] = torch.nn.functional.linear(x, ws[i])
        g.replay(); torch.cuda.synchronize()
        e0.record()
        for _ in range(5): g.replay()
        e1.record(); torch.cuda.synchronize()
        s = e0.elapsed_time(e1) / 1e3 / (5 * copies)
        print(f"torch gemv N={n} K={k} T={T} {s*1e6:8.2f} us {n*k*2/s/1e9:7.1f} GB/s ({100*n*k*2/s/1e9/bw:.1f}% of copy probe)")
    del ws
    torch.cuda.empty_cache()
