"""Train-step time of the synthetic preset at 1 and at 2 intra-op threads (not a test).

On a 2-core machine, two threads per process are fast when nothing else runs and catastrophic when
another process holds a core (OpenMP threads wait on each other). Run it beside a busy process to see
the second case: `python benchmarks/bench_threads.py --size 64`. Each thread count runs in its own
process (the thread pool is fixed at the first parallel op), and the table prints the median of the
timed steps after one warm-up.

Usage: python benchmarks/bench_threads.py [--size 64] [--batch 16] [--steps 3] [--threads 1 2]
"""
import argparse, json, os, statistics, subprocess, sys

CHILD = r'''
import json, sys, time, torch, torch.nn.functional as F
from wood_nb.model import make_classifier
size, batch, steps = map(int, sys.argv[1:4])
m = make_classifier('synthetic', 6); m.train()
x = torch.randn(batch, 3, size, size); y = (torch.rand(batch, 6) > 0.5).float()
ts = []
for i in range(steps + 1):
    t = time.perf_counter(); F.multilabel_soft_margin_loss(m(x), y).backward(); ts.append(time.perf_counter() - t)
print(json.dumps({'threads': torch.get_num_threads(), 'steps_s': ts[1:]}))
'''

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, default=64); p.add_argument('--batch', type=int, default=16)
    p.add_argument('--steps', type=int, default=3); p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    a = p.parse_args()
    print(f'machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} before the run')
    rows = {}
    for n in a.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
        out = subprocess.run([sys.executable, '-c', CHILD, str(a.size), str(a.batch), str(a.steps)], env=env, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1]); rows[n] = statistics.median(r['steps_s'])
        print(f'{n} thread(s): median forward + backward {rows[n]:.3f} s ({", ".join(f"{t:.2f}" for t in r["steps_s"])})')
    if 1 in rows:
        for n, v in rows.items():
            if n != 1: print(f'{n} threads / 1 thread: {v / rows[1]:.2f}x')

if __name__ == '__main__': main()
