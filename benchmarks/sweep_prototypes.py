"""Where do the OoD prototypes matter? The W-OoD arms over benchmark regimes and seeds (an experiment, not a timing).

    python benchmarks/sweep_prototypes.py --out SWEEP [--regimes default,few_ood,...] [--seeds 0 1 2] [--parallel 2] [--tiny]

For every regime (benchmark knobs and run settings, `REGIMES` below; the hypotheses H1-H8 they test are in
`nbs/09_wood.ipynb`, "Where could the prototypes matter?") and every seed S, it generates the benchmark
(`wood synth`, the quick demo profile's 128-px counts, seed S), then with `wood run` (the kit's one runner, the quick
profile's settings, `cls.seed`, `wood_train.seed` and `prototypes.seed` = S, stopped after its `arms` step: `--to arms`)
trains one baseline, mines, clusters and trains full W-OoD (d, the run's own `wood` step) in SWEEP/<regime>/seed<S>/run;
the other arms are the run's `arms` (each fine-tuned from the same baseline into `run/arms/<arm>/`, seeds in
`run/eval/<arm>.json`):

  a  continued training, no OoD images      wood.use_metric_term=false, wood.use_ood_term=false
  b  the OoD zero-label term only           wood.use_metric_term=false
  d  full W-OoD (official settings)         -
  d2 W-OoD with the scaled metric term      wood.normalize=true, wood.lam=0.2

Jobs (one regime and seed each) run `--parallel` at a time, each process with one thread. It writes
SWEEP/sweep.json (every arm's seed mIoU and cue activation), SWEEP/sweep.md (the table, with d - b per seed) and
SWEEP/sweep.png (d - b per regime, one point a seed, the mean as a bar). Finished steps are skipped when rerun,
so an interrupted sweep resumes; `--report` only rebuilds the three files from the finished jobs. `--tiny`
shrinks counts and epochs to check the script in minutes (its numbers mean nothing).
"""
import argparse, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wood_nb.config import DEMO_PROFILES, WoodInputError
from wood_nb.core import write_json, write_text

ARMS = {'a': ['wood.use_metric_term=false', 'wood.use_ood_term=false'], 'b': ['wood.use_metric_term=false'], 'd': [],
        'd2': ['wood.normalize=true', 'wood.lam=0.2']}
REGIMES = {  # name: (hypothesis, `wood synth` knobs over the quick profile's, `wood run` settings)
    'default': ('-', {}, []),
    'few_ood': ('H1', {'n_ood': 64}, []),
    'contaminated': ('H2', {'ood_mix': [0.5, 0.2, 0.3]}, ['mining.curation=none']),
    'weak_gamma': ('H3', {}, ['wood.gamma=0.05']),
    'weak_baseline': ('H4', {}, ['cls.epochs=1']),
    'shared_cues': ('H5', {'cue_kinds': 3}, []),
    'cue_variants': ('H6', {'cue_variants': 3}, []),
    'partial_ood_cues': ('H7', {'ood_cue_scale': 0.35}, []),
}
TINY_SYNTH = dict(image_size=64, n_train=24, n_val=8, n_ood=24)
TINY_RUN = ['cls.epochs=1', 'wood_train.epochs=1', 'prototypes.k=2', 'batch_size=8', 'scales=[1.0]']


def flags(knobs:dict)->list:
    "`wood synth` options from SynthConfig knobs."
    out = []
    for k, v in knobs.items():
        out += [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, (list, tuple)) else [v])]
    return out


def run(cmd:list, log:Path):
    with open(log, 'a') as f:
        f.write('$ ' + ' '.join(cmd) + '\n'); f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}).returncode
    if rc: raise RuntimeError(f'{cmd[2] if len(cmd) > 2 else cmd} failed (exit {rc}); see {log}')


def job_files(out:Path, regime:str, seed:int)->dict:
    "Where a job's blocks lie: `run/eval/<arm>.json` (d: the run's `wood`), or the older layout of one run folder per arm."
    d = out/regime/f'seed{seed}'
    if not (d/'run').is_dir() and (d/'d').is_dir():                # a sweep run before the arms step: one folder per arm
        return {**{a: d/a/'eval'/'wood.json' for a in ARMS}, 'baseline': d/'d'/'eval'/'baseline.json'}
    return {**{a: d/'run'/'eval'/f"{'wood' if not ARMS[a] else a}.json" for a in ARMS}, 'baseline': d/'run'/'eval'/'baseline.json'}


def read_job(out:Path, regime:str, seed:int)->dict:
    "A finished job's arm blocks read back from its folder (the end of `job`, and `--report`); a missing one stops with its path."
    res = {}
    for arm, f in job_files(out, regime, seed).items():
        if not f.is_file(): raise WoodInputError(f, f'is missing: regime {regime!r}, seed {seed} has not finished.', 'run the sweep without --report first.')
        res[arm] = json.loads(f.read_text())
    return {k: {m: v.get(m) for m in ('seed_miou', 'cue_activation', 'seed_threshold')} for k, v in res.items()}


def arm_specs(arms:dict)->list:
    "`RunConfig.arms` from `ARMS`: every arm that changes something (d, which changes nothing, is the run's own W-OoD)."
    return [{'name': a, 'label': a, 'overrides': {kv.split('=')[0].removeprefix('wood.'): json.loads(kv.split('=', 1)[1]) for kv in sets}}
            for a, sets in arms.items() if sets]


def job(out:Path, regime:str, seed:int, tiny:bool)->dict:
    "One regime and seed: the benchmark, the shared steps and the four arms; returns each arm's seed block."
    _, knobs, settings = REGIMES[regime]
    d = out/regime/f'seed{seed}'; d.mkdir(parents=True, exist_ok=True); log = d/'log.txt'
    wood = [sys.executable, '-m', 'wood_nb.cli']
    synth = {**DEMO_PROFILES['quick'][0], **(TINY_SYNTH if tiny else {}), **knobs}
    if not (d/'data'/'synth.json').exists():
        run(wood + ['synth', str(d/'data'), '--seed', str(seed), *flags(synth)], log)
    quick = [f'{k}={v if isinstance(v, str) else json.dumps(v)}' for k, v in DEMO_PROFILES['quick'][1].items()]
    base = wood + ['run', '--root', str(d/'data'/'voc'), '--pool', str(d/'data'/'ood'), '--preset', 'synthetic']
    common = quick + [f'{s}.seed={seed}' for s in ('cls', 'wood_train', 'prototypes')] + (TINY_RUN if tiny else []) + settings + ['progress=false']
    sets = [x for kv in common + ['arms=' + json.dumps(arm_specs(ARMS))] for x in ('--set', kv)]
    run(base + ['--out', str(d/'run'), *sets, '--to', 'arms'], log)
    return read_job(out, regime, seed)


def table(results:dict)->str:
    rows = ['| regime | hypothesis | seed | baseline | a | b | d | d2 | d - b |', '|---|---|---|---|---|---|---|---|---|']
    for regime, per_seed in results.items():
        for seed, r in sorted(per_seed.items()):
            f = lambda k: f"{r[k]['seed_miou']:.1f} / {r[k]['cue_activation']:.3f}" if r[k].get('cue_activation') is not None else f"{r[k]['seed_miou']:.1f}"
            rows.append(f"| {regime} | {REGIMES[regime][0]} | {seed} | {f('baseline')} | {f('a')} | {f('b')} | {f('d')} | {f('d2')} | "
                        f"{r['d']['seed_miou'] - r['b']['seed_miou']:+.1f} |")
    return '\n'.join(rows)


def summary(results:dict)->str:
    "Per regime: (d) - (b) on each seed, its mean and whether it clears 3 points on every seed; (b) - (a) and (d2) - (b) means."
    rows = ['| regime | hypothesis | (d) - (b) per seed | mean | >= 3 on every seed | (b) - (a) mean | (d2) - (b) mean |', '|---|---|---|---|---|---|---|']
    for regime, per_seed in results.items():
        rs = [per_seed[k] for k in sorted(per_seed)]
        diff = lambda x, y: [r[x]['seed_miou'] - r[y]['seed_miou'] for r in rs]
        mean = lambda v: sum(v) / len(v)
        db = diff('d', 'b')
        rows.append(f"| {regime} | {REGIMES[regime][0]} | {' / '.join(f'{v:+.1f}' for v in db)} | {mean(db):+.2f} | "
                    f"{'yes' if min(db) >= 3 else 'no'} | {mean(diff('b', 'a')):+.2f} | {mean(diff('d2', 'b')):+.2f} |")
    return '\n'.join(rows)


def figure(results:dict, path:Path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.4 * len(results) + 2, 3.2))
    for i, (regime, per_seed) in enumerate(results.items()):
        diffs = [r['d']['seed_miou'] - r['b']['seed_miou'] for r in per_seed.values()]
        ax.bar(i, sum(diffs) / len(diffs), color='#9ecae1', width=0.6)
        ax.scatter([i] * len(diffs), diffs, color='#08519c', zorder=3, s=14)
    ax.axhline(0, color='k', lw=0.8); ax.axhline(3, color='#d62728', lw=0.8, ls='--', label='the 3-point bar')
    ax.set_xticks(range(len(results)), [f'{k}\n({REGIMES[k][0]})' for k in results], fontsize=8)
    ax.set_ylabel('(d) - (b), seed mIoU'); ax.legend(fontsize=8, loc='upper right'); ax.set_title('Full W-OoD over the OoD term alone')
    fig.tight_layout(); tmp = path.with_name('.' + path.name); fig.savefig(tmp, dpi=110, format='png'); plt.close(fig); tmp.replace(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, required=True, help='the sweep folder (resumed when it exists)')
    p.add_argument('--regimes', default=','.join(REGIMES), help=f'comma-separated, from {list(REGIMES)}')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--parallel', type=int, default=2, help='jobs (regime and seed) at a time, one thread each')
    p.add_argument('--tiny', action='store_true', help='tiny counts and one epoch: checks the script, numbers mean nothing')
    p.add_argument('--report', action='store_true', help='only rebuild sweep.md, sweep.json and sweep.png from the finished jobs')
    a = p.parse_args(argv)
    regimes = a.regimes.split(',')
    bad = [r for r in regimes if r not in REGIMES]
    if bad: raise WoodInputError('--regimes', f'{bad} are not regimes.', f'choose from {list(REGIMES)}.')
    if a.parallel < 1: raise WoodInputError('--parallel', f'{a.parallel} is below 1.', 'give 1 or more.')
    a.out.mkdir(parents=True, exist_ok=True)
    t0, jobs = time.perf_counter(), [(r, s) for r in regimes for s in a.seeds]
    if a.report: done = [(rs, read_job(a.out, *rs)) for rs in jobs]
    else:
        with ThreadPoolExecutor(a.parallel) as pool:
            done = list(pool.map(lambda rs: (rs, job(a.out, *rs, a.tiny)), jobs))
    results = {r: {} for r in regimes}
    for (r, s), res in done: results[r][s] = res
    cmd = 'python benchmarks/sweep_prototypes.py ' + ' '.join(x for x in (argv if argv is not None else sys.argv[1:]) if x != '--report')
    took = 'results read back' if a.report else f'{time.perf_counter() - t0:.0f} s'
    md = '\n'.join([f'# The W-OoD arms over regimes ({len(a.seeds)} seeds)', '', f'Command: `{cmd}`; {took}.', '',
                    'Seed mIoU / cue activation on the training split; d - b in seed mIoU points.', '', table(results), '',
                    '## Per regime', '', summary(results), ''])
    write_json(a.out/'sweep.json', {'command': cmd, 'tiny': a.tiny, 'regimes': {r: REGIMES[r] for r in regimes}, 'arms': ARMS, 'results': results})
    write_text(a.out/'sweep.md', md)
    figure(results, a.out/'sweep.png')
    print(md)


if __name__ == '__main__':
    try: main()
    except (WoodInputError, RuntimeError) as e: print(f'error: {e}', file=sys.stderr); sys.exit(2)
