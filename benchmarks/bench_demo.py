"""Wall time and peak memory of `wood demo`, step by step, against the 10-minute budget of a 2-core CPU.

    python benchmarks/bench_demo.py --out BENCH [--profile quick] [--seed 0] [--set KEY=VALUE ...] [--record FILE]

Runs `wood demo --out BENCH/run` in a fresh child process (so the peak memory is that of the demo alone), then
reads the run's step records (`steps/<step>.json`: seconds and peak RSS of each step) and prints one row per
step, the total wall time (benchmark generation, checks and report included), the child's peak RSS, and the
ratio of the total to the budget (600 s). `--record FILE` also writes all of it as JSON, with the machine it
came from (CPU model, cores, load average before and after, torch version and threads); commit such records
under `benchmarks/records/`. An existing BENCH/run is refused (timing a resumed run would measure nothing).
"""
import argparse, json, os, platform, resource, subprocess, sys, time
from pathlib import Path

BUDGET_S = 600.0   # `wood demo` with defaults: at most 10 minutes on two CPU cores under ordinary load (the target idle: 5)


def cpu_model()->str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def machine()->dict:
    import torch
    return dict(cpu=cpu_model(), cores=os.cpu_count(), arch=platform.machine(), python=platform.python_version(),
                torch=torch.__version__, torch_threads=torch.get_num_threads(), omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                mem_gib=round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, required=True, help='a new folder: the run goes to OUT/run')
    p.add_argument('--profile', default='quick'); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='passed to wood demo')
    p.add_argument('--device', default=None, help='passed to wood demo (default: its own choice)')
    p.add_argument('--record', type=Path, default=None, help='write the result as JSON here')
    a = p.parse_args()
    run = a.out/'run'
    if run.exists(): sys.exit(f'error: {run} exists: pass a new --out folder (a resumed run would time only what was left).')
    cmd = [sys.executable, '-m', 'wood_nb.cli', 'demo', '--out', str(run), '--profile', a.profile, '--seed', str(a.seed)]
    for s in a.set: cmd += ['--set', s]
    if a.device: cmd += ['--device', a.device]
    a.out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with open(a.out/'demo.log', 'w') as log: rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (2**20 if sys.platform == 'darwin' else 2**10)
    if rc != 0: sys.exit(f'error: wood demo exited with {rc}; see {a.out/"demo.log"}')
    steps = {}
    for f in sorted((run/'steps').glob('*.json')):
        r = json.loads(f.read_text())
        steps[f.stem] = {'seconds': r['seconds'], 'peak_rss_mib': r.get('peak_rss_mib')}
    m = json.loads((run/'metrics.json').read_text()); order = m.get('timings_s', {})
    res = dict(command=' '.join(['python'] + cmd[1:]), profile=a.profile, seed=a.seed, sets=a.set, wall_s=round(wall, 1), peak_rss_mib=round(child_rss, 1),
               budget_s=BUDGET_S, ratio_to_budget=round(wall / BUDGET_S, 3), steps={s: steps[s] for s in order if s in steps},
               outside_steps_s=round(wall - sum(s['seconds'] for s in steps.values()), 1),
               results={n: {k: m[n].get(k) for k in ('seed_miou', 'cue_activation', 'mask_miou', 'seg_miou', 'seg_cue_activation')}
                        for n in ('baseline', 'wood')},
               machine=machine(), load_before=[round(x, 2) for x in load0], load_after=[round(x, 2) for x in load1],
               date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    print(f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}; "
          f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    print(f"{'step':16s} {'seconds':>8s} {'peak MiB':>9s}")
    for s, r in res['steps'].items(): print(f"{s:16s} {r['seconds']:8.1f} {r['peak_rss_mib'] or 0:9.0f}")
    print(f"{'(outside steps)':16s} {res['outside_steps_s']:8.1f}")
    print(f"total {wall:.1f} s, peak RSS {child_rss:.0f} MiB; budget {BUDGET_S:.0f} s: ratio {wall / BUDGET_S:.2f} "
          f"({'within' if wall <= BUDGET_S else 'over'} budget)")
    for n in ('baseline', 'wood'):
        r = res['results'][n]
        print(f"{n:9s} seeds {r['seed_miou']}  cue {r['cue_activation']}  masks {r['mask_miou']}  seg {r['seg_miou']}")
    if a.record:
        a.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.record.with_name(f'.{a.record.name}.part')
        tmp.write_text(json.dumps(res, indent=1)); os.replace(tmp, a.record)
        print(f'record: {a.record}')


if __name__ == '__main__':
    main()
