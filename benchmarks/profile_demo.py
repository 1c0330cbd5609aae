"""The demo against its floor: where each step's wall time goes, and how far it is from the bare model compute.

    python benchmarks/profile_demo.py --out PROF [--profile quick] [--seed 0] [--set KEY=VALUE ...] [--replays 3] [--record FILE]

Runs `wood demo` in this process with timers on (it takes a little longer than `bench_demo.py`'s run; compare the
two totals) and splits each step's wall time into
- **forward**: the outermost `nn.Module` calls (a network called by the kit's code; its sub-modules are inside),
- **backward** (`Tensor.backward`) and **optimiser** steps,
- **data**: `DataLoader` iteration (reading and decoding images, transforms, collation; no workers in the demo),
- **other**: the rest: Python, file I/O, metrics, and compute outside modules (the random walk, k-means, CRF).

Then the **floor**: every distinct outermost call (same network, input shapes, memory format, grad mode) is replayed
`--replays` times in a tight loop on a copy of the network, with random inputs of the recorded shapes (and the
backward pass when the call was a training call), and its best time is multiplied by the number of such calls. The
floor is what the same models cost on this machine with nothing else around them; `wall / floor` is how far the
step is from it, and `samples/s` (summed batch sizes of the outermost calls per second) gives the throughputs.
`--record FILE` writes it all as JSON with the machine. Run it on an idle machine: anything beside it makes both the
step times and the floors meaningless.
"""
import argparse, copy, json, os, sys, time
from collections import defaultdict
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data import dataloader

sys.path.insert(0, str(Path(__file__).parent))
from bench_demo import machine   # noqa: E402

CATS = ('forward', 'backward', 'optimiser', 'data')


class StepTimer:
    "Times outermost module calls, backward passes, optimiser steps and DataLoader batches while `on`."
    def __init__(self):
        self.on, self.in_data, self.t = False, False, defaultdict(float)
        self.calls = defaultdict(lambda: [0, 0, None])   # key -> [count, samples, (module, input specs, training call)]
        self.active, self._opt = False, None              # a counted module call in flight; the optimiser step's start

    def reset(self): self.t.clear(); self.calls.clear()

    def wrap_calls(self):
        "Replace `nn.Module.__call__` by a timer of the outermost calls: one Python frame a module call, no hooks."
        plain, timer = torch.nn.Module.__call__, self
        def call(module, *args, **kw):
            # counted: the outermost call of a network with parameters (not a parameter-free transform), outside data loading
            if timer.active or not timer.on or timer.in_data or next(module.parameters(), None) is None: return plain(module, *args, **kw)
            timer.active, t = True, time.perf_counter()
            try: return plain(module, *args, **kw)
            finally:
                timer.t['forward'] += time.perf_counter() - t; timer.active = False
                c = timer.calls[call_key(module, args)]
                c[0] += 1; c[1] += batch_of(args)
                if c[2] is None: c[2] = (module, shapes_of(args), torch.is_grad_enabled() and module.training)
        torch.nn.Module.__call__ = call

    def opt_pre(self, opt, args, kwargs): self._opt = time.perf_counter() if self.on else None
    def opt_post(self, opt, args, kwargs):
        if self._opt is not None: self.t['optimiser'] += time.perf_counter() - self._opt
        self._opt = None

    def timed(self, cat, fn):
        timer = self
        def wrapper(*a, **k):
            if not timer.on: return fn(*a, **k)
            t, timer.in_data = time.perf_counter(), cat == 'data'
            try: return fn(*a, **k)
            finally:
                timer.t[cat] += time.perf_counter() - t
                if cat == 'data': timer.in_data = False
        return wrapper


def spec(x):
    if torch.is_tensor(x):
        cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return ('T', tuple(x.shape), str(x.dtype), cl)
    return ('V', repr(x)[:40])


def call_key(module, args): return (id(module), tuple(spec(a) for a in args))
def shapes_of(args): return [(a.shape, a.dtype, spec(a)[3]) if torch.is_tensor(a) else a for a in args]
def batch_of(args): return next((int(a.shape[0]) for a in args if torch.is_tensor(a) and a.dim() > 0), 1)


def make_input(s):
    if not isinstance(s, tuple) or len(s) != 3 or not isinstance(s[0], torch.Size): return s
    shape, dtype, cl = s
    x = torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def out_sum(out):
    "A scalar from every grad-carrying float tensor of a module's output (for the replayed backward pass)."
    ts = [out] if torch.is_tensor(out) else list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else []
    ts = [t for t in ts if torch.is_tensor(t) and t.requires_grad]
    return sum(t.float().sum() for t in ts) if ts else None


def floor_seconds(calls, replays:int)->float:
    "Replay each distinct call `replays` times in a tight loop on a copy of its network; best time x count, summed."
    total, copies = 0.0, {}
    for key, (n, _, (module, shapes, train)) in calls.items():
        m = copies.get(id(module))
        if m is None:
            m = copies[id(module)] = copy.deepcopy(module)
        args = [make_input(s) for s in shapes]
        best = float('inf')
        for _ in range(replays + 1):   # the first is a warm-up
            t = time.perf_counter()
            if train:
                s = out_sum(m(*args))
                if s is not None: s.backward()
            else:
                with torch.inference_mode(): m(*args)
            best = min(best, time.perf_counter() - t)
        for p in m.parameters(): p.grad = None
        total += best * n
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, required=True, help='a new folder: the run goes to OUT/run')
    p.add_argument('--profile', default='quick'); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='passed to wood demo')
    p.add_argument('--replays', type=int, default=3, help='timed replays of each distinct call for the floor (best kept)')
    p.add_argument('--record', type=Path, default=None, help='write the table as JSON here')
    a = p.parse_args()
    run = a.out/'run'
    if run.exists(): sys.exit(f'error: {run} exists: pass a new --out folder (a resumed run would time only what was left).')
    from wood_nb import cli, pipeline

    timer = StepTimer()
    timer.wrap_calls()
    torch.Tensor.backward = timer.timed('backward', torch.Tensor.backward)
    register_optimizer_step_pre_hook(timer.opt_pre)
    register_optimizer_step_post_hook(timer.opt_post)
    Iter = dataloader._BaseDataLoaderIter
    Iter.__next__ = timer.timed('data', Iter.__next__)
    rows, plain_step_fns = {}, pipeline._step_fns

    def step_fns(*args, **kw):
        fns = plain_step_fns(*args, **kw)
        def profiled(name, fn):
            def run_step():
                timer.reset(); timer.on = True
                t = time.perf_counter()
                try: return fn()
                finally:
                    wall = time.perf_counter() - t
                    timer.on = False
                    floor = floor_seconds(timer.calls, a.replays)
                    samples = sum(c[1] for c in timer.calls.values())
                    rows[name] = dict(wall_s=round(wall, 2), **{f'{c}_s': round(timer.t[c], 2) for c in CATS},
                                      other_s=round(wall - sum(timer.t[c] for c in CATS), 2), floor_s=round(floor, 2),
                                      wall_over_floor=round(wall / floor, 2) if floor > 0 else None, samples=samples,
                                      samples_per_s=round(samples / wall, 1) if wall > 0 else None,
                                      floor_samples_per_s=round(samples / floor, 1) if floor > 0 else None,
                                      distinct_calls=len(timer.calls))
                    timer.reset()
            return run_step
        return {k: profiled(k, f) for k, f in fns.items()}

    pipeline._step_fns = step_fns
    load0, t0 = os.getloadavg(), time.perf_counter()
    rc = cli.main(['demo', '--out', str(run), '--profile', a.profile, '--seed', str(a.seed), *[x for kv in a.set for x in ('--set', kv)]])
    total = time.perf_counter() - t0
    hdr = ('step', 'wall', 'forward', 'backward', 'optimiser', 'data', 'other', 'floor', 'wall/floor', 'samples/s', 'floor samples/s')
    print('| ' + ' | '.join(hdr) + ' |\n|' + '---|' * len(hdr))
    for s, r in rows.items():
        share = lambda c: f"{r[c + '_s']:.1f} ({100 * r[c + '_s'] / r['wall_s']:.0f} %)" if r['wall_s'] else '0'
        print(f"| {s} | {r['wall_s']:.1f} | " + ' | '.join(share(c) for c in (*CATS, 'other')) +
              f" | {r['floor_s']:.1f} | {r['wall_over_floor'] or '-'} | {r['samples_per_s'] or '-'} | {r['floor_samples_per_s'] or '-'} |")
    print(f'total {total:.1f} s (steps {sum(r["wall_s"] for r in rows.values()):.1f} s), load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}')
    if a.record:
        metrics = json.loads((run/'metrics.json').read_text()) if (run/'metrics.json').exists() else None
        rec = dict(command=' '.join([sys.executable, *sys.argv]), profile=a.profile, seed=a.seed, replays=a.replays, total_s=round(total, 1),
                   steps=rows, metrics=metrics, machine=machine(), load_before=[round(x, 2) for x in load0],
                   load_after=[round(x, 2) for x in os.getloadavg()], date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
        a.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.record.with_name(a.record.name + '.tmp'); tmp.write_text(json.dumps(rec, indent=1)); tmp.replace(a.record)
    return rc


if __name__ == '__main__':
    sys.exit(main())
