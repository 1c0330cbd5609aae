"""Benchmark wood_nb.prototypes.kmeans against scikit-learn's KMeans (Lloyd) on the same features and the same
initial centres: best of N wall times, the ratio, and whether the results agree. Also times the k-means++
initialisations (ours on torch, scikit-learn's `kmeans_plusplus`), which start from different random draws.

    python benchmarks/bench_kmeans.py [--sizes 1000x1280 10000x2048] [--k 50] [--iters 10] [--repeats 5] [--device cpu]
"""
import argparse, os, platform, sys, time

import numpy as np
import torch


def features(n:int, d:int, kind:str, k:int, seed:int)->np.ndarray:
    "float32 features: 'clustered' (k blobs, ReLU'd like GAP features) or 'uniform' (no structure)."
    rng = np.random.default_rng(seed)
    if kind == 'uniform': return rng.random((n, d), dtype=np.float32)
    centres = rng.normal(0, 1, (k, d)).astype(np.float32)
    return np.maximum(centres[rng.integers(0, k, n)] + rng.normal(0, 0.8, (n, d)).astype(np.float32), 0)


def best_of(fns:dict, repeats:int, warmup:bool=True)->tuple[dict, dict]:
    "Best wall time of each function, the runs interleaved (so that both see the same machine load); last results."
    best, out = {n: float('inf') for n in fns}, {}
    if warmup:
        for n, f in fns.items(): out[n] = f()
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter(); out[n] = f()
            if torch.cuda.is_available(): torch.cuda.synchronize()
            best[n] = min(best[n], time.perf_counter() - t0)
    return best, out


def cpu_name()->str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'unknown CPU'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', nargs='+', default=['1000x1280', '10000x2048'], help='N x D feature tables')
    ap.add_argument('--kinds', nargs='+', default=['clustered', 'uniform'], choices=['clustered', 'uniform'])
    ap.add_argument('--k', type=int, default=50, help='clusters')
    ap.add_argument('--iters', type=int, default=10, help='Lloyd iterations (max_iter for scikit-learn, tol=0)')
    ap.add_argument('--repeats', type=int, default=5, help='best of N')
    ap.add_argument('--device', default='cpu', help="device of our k-means ('cpu', 'cuda'); scikit-learn always runs on the CPU")
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--init-timing', action=argparse.BooleanOptionalAction, default=True, help='also time the k-means++ initialisations')
    ap.add_argument('--init-repeats', type=int, default=1, help="best of N for k-means++ (scikit-learn's is slow on float32 features)")
    a = ap.parse_args(argv)
    from sklearn import __version__ as skv
    from sklearn.cluster import KMeans, kmeans_plusplus
    from threadpoolctl import threadpool_info
    from wood_nb.prototypes import kmeans

    dev = torch.device(a.device)
    omp = sorted({f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()})
    load = os.getloadavg() if hasattr(os, 'getloadavg') else ('?',)
    print(f'machine: {cpu_name()}, {os.cpu_count()} CPU cores, {platform.machine()}, load average {load[0]:.2f} at start'
          + (f', GPU {torch.cuda.get_device_name(dev)}' if dev.type == 'cuda' else ''))
    print(f'python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), '
          f'scikit-learn {skv} (thread pools {", ".join(omp)}); ours on {dev}')
    print(f'k={a.k}, {a.iters} Lloyd iterations from the same initial centres (the first k points); best of {a.repeats} '
          f'(k-means++: {a.init_repeats}), runs interleaved')
    print(f'{"features":<24} {"step":<12} {"ours s":>9} {"sklearn s":>10} {"sk/ours":>8}  {"agreement"}')
    print('-' * 110)
    ok = True
    for size in a.sizes:
        n, d = (int(v) for v in size.lower().split('x'))
        for kind in a.kinds:
            X = features(n, d, kind, a.k, a.seed)
            init = X[:a.k].copy()
            xt, it = torch.from_numpy(X).to(dev), torch.from_numpy(init).to(dev)
            sk_fit = lambda: KMeans(n_clusters=a.k, init=init, n_init=1, max_iter=a.iters, algorithm='lloyd', tol=0).fit(X)
            t, out = best_of({'ours': lambda: kmeans(xt, a.k, a.iters, it), 'sk': sk_fit}, a.repeats)
            c, lab, inertia = out['ours']; ref = out['sk']
            dc = float(np.abs(c.cpu().numpy() - ref.cluster_centers_).max())
            same = float((lab.cpu().numpy() == ref.labels_).mean())
            rel = abs(inertia - ref.inertia_)/ref.inertia_
            agree = dc < 1e-3 and same > 0.999 and rel < 1e-4
            ok &= agree
            name = f'{n}x{d} {kind}'
            print(f'{name:<24} {"Lloyd":<12} {t["ours"]:9.4f} {t["sk"]:10.4f} {t["sk"]/t["ours"]:8.2f}  '
                  f'max|dc| {dc:.1e}, labels {same:.4f}, inertia rel {rel:.1e}, sklearn n_iter {ref.n_iter_}' + ('' if agree else '  DISAGREE'))
            if not a.init_timing: continue
            t, out = best_of({'ours': lambda: kmeans(xt, a.k, 0, 'k-means++', seed=a.seed)[2],
                              'sk': lambda: kmeans_plusplus(X, a.k, random_state=a.seed)}, a.init_repeats, warmup=False)
            sk_pot = kmeans(xt, a.k, 0, torch.from_numpy(out['sk'][0]).to(dev))[2]     # inertia of scikit-learn's initial centres
            print(f'{"":<24} {"k-means++":<12} {t["ours"]:9.4f} {t["sk"]:10.4f} {t["sk"]/t["ours"]:8.2f}  '
                  f'inertia of the initial centres: ours {out["ours"]:.4g}, sklearn {sk_pot:.4g}')
    print('-' * 110)
    print('sk/ours > 1: ours is faster. Lloyd results agree with scikit-learn on every row:', ok)
    return 0 if ok else 1


if __name__ == '__main__': sys.exit(main())
