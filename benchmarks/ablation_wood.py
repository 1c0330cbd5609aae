"""The W-OoD ablation on the embedded synthetic benchmark (an experiment, not a test).

Every arm fine-tunes the same baseline for the same number of steps, then its CAM seeds on the
training split are scored against the ground truth (seed mIoU) and the cue masks (cue activation):

  a_continued      continued training without OoD images (the control)
  b_ood_only       + the OoD images as all-zero negatives (gamma term only)
  c_metric_only    + the metric term only (prototypes of the mined OoD images)
  d_wood           full W-OoD (both terms)
  e_wood_random    full W-OoD with a random sample of the pool instead of the mined, curated images
  c2/d2 (--scaled-lam L)  c and d with the scaled metric term (unit-vector distances, lambda L)

It writes RUN/ablation.md (the table, the mining summary, the settings, the machine, the wall
times), RUN/ablation.json and RUN/figures/ (baseline against full W-OoD CAMs, the loss terms, the
mined candidates, the OoD clusters), and prints the table. Every step is skipped when its output exists, so
an interrupted run resumes; a rerun of a finished run only prints the table again.

Usage: python benchmarks/ablation_wood.py --out RUN [--data DIR] [--seed 0] [--epochs 5]
       [--baseline MODEL.pt] [--scaled-lam 0.2] [--arms a_continued,d_wood] [--parallel N] [--num-workers N]
       [--lam 0.007] [--gamma 0.25] [--scales 1.0 0.5 1.5 2.0] [--device auto]
--parallel N fine-tunes N arms at a time in separate processes (after the shared steps), which
pays on a GPU; on two CPU cores leave it at 1.
"""
import argparse, json, os, platform, subprocess, sys, time
from dataclasses import asdict
from pathlib import Path

import torch

from wood_nb.cam import DEFAULT_SCALES
from wood_nb.core import WoodInputError, write_json, write_text
from wood_nb.synth import SynthConfig, generate
from wood_nb.train import TrainConfig
from wood_nb.wood import WoodConfig, ablation_arms, ablation_table, chain_figures, run_wood_chain


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', type=Path, required=True, help='the ablation run folder')
    p.add_argument('--data', type=Path, default=None, help='a folder written by `wood synth` (default: generate OUT/data)')
    p.add_argument('--seed', type=int, default=0, help='benchmark, baseline and fine-tuning seed')
    p.add_argument('--epochs', type=int, default=None, help='fine-tuning epochs (default: the preset\'s 5, as the official recipe)')
    p.add_argument('--baseline', type=Path, default=None, help='start every arm from this trained baseline model.pt (default: train one in OUT/cls)')
    p.add_argument('--baseline-epochs', type=int, default=None, help='baseline epochs (default: the preset\'s 5)')
    p.add_argument('--scaled-lam', type=float, default=0.2, help='also run c and d with the scaled metric term at this lambda (0: skip)')
    p.add_argument('--arms', default=None, help='comma-separated arm names (default: all)')
    p.add_argument('--lam', type=float, default=None); p.add_argument('--gamma', type=float, default=None)
    p.add_argument('--scales', type=float, nargs='+', default=list(DEFAULT_SCALES))
    p.add_argument('--parallel', type=int, default=1, help='arms fine-tuned at a time, in separate processes')
    p.add_argument('--num-workers', type=int, default=0, help='DataLoader workers of every training')
    p.add_argument('--gen-workers', type=int, default=2, help='processes that render the benchmark')
    p.add_argument('--device', default=None, help="'cpu', 'cuda' (default: CUDA when present)")
    p.add_argument('--table', action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings(a):
    arms = ablation_arms(a.scaled_lam or None)
    if a.arms:
        want = a.arms.split(','); known = {x.name for x in arms}
        bad = [w for w in want if w not in known]
        if bad: raise WoodInputError('--arms', f'{bad} are not arms.', f'choose from {sorted(known)}.')
        arms = [x for x in arms if x.name in want]
    wcfg = WoodConfig(**{k: v for k, v in (('lam', a.lam), ('gamma', a.gamma)) if v is not None})
    tcfg = TrainConfig.preset('synthetic', seed=a.seed, num_workers=a.num_workers, progress=False,
                              **({'epochs': a.epochs} if a.epochs else {}))
    btcfg = TrainConfig.preset('synthetic', seed=a.seed, num_workers=a.num_workers, progress=False,
                               **({'epochs': a.baseline_epochs} if a.baseline_epochs else {}))
    return arms, wcfg, tcfg, btcfg


def machine(device):
    if device.type == 'cuda': return f'{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, torch {torch.__version__}'
    return f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, torch {torch.__version__}'


def main(argv=None):
    a = parse(argv); t0 = time.perf_counter()
    arms, wcfg, tcfg, btcfg = settings(a)
    data = a.data or a.out/'data'
    if not (data/'synth.json').exists():
        print(f'generating the default benchmark (seed {a.seed}) into {data} ...', flush=True)
        generate(data, seed=a.seed, cfg=SynthConfig(), workers=a.gen_workers)
    kw = dict(wcfg=wcfg, tcfg=tcfg, baseline_tcfg=btcfg, baseline=a.baseline, scales=tuple(a.scales), device=a.device)
    device = torch.device(a.device) if a.device else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    walls = {}
    if a.parallel > 1 and len(arms) > 1:
        run_wood_chain(data/'voc', data/'ood', a.out, arms, prepare_only=True, **kw)
        walls['shared_steps'] = round(time.perf_counter() - t0, 1)
        base = [sys.executable, __file__, '--out', str(a.out), '--data', str(data), '--seed', str(a.seed), '--no-table',
                '--scaled-lam', str(a.scaled_lam), '--num-workers', str(a.num_workers), '--scales', *map(str, a.scales)]
        for k in ('epochs', 'baseline_epochs', 'baseline', 'lam', 'gamma', 'device'):
            if getattr(a, k) is not None: base += ['--' + k.replace('_', '-'), str(getattr(a, k))]
        todo, running = list(arms), {}
        while todo or running:
            while todo and len(running) < a.parallel:
                arm = todo.pop(0); log = open(a.out/f'{arm.name}.log', 'w')
                running[arm.name] = (subprocess.Popen(base + ['--arms', arm.name], stdout=log, stderr=subprocess.STDOUT), time.perf_counter(), log)
            time.sleep(2)
            for name, (proc, ts, log) in list(running.items()):
                if proc.poll() is None: continue
                log.close(); del running[name]; walls[name] = round(time.perf_counter() - ts, 1)
                if proc.returncode: raise SystemExit(f'arm {name} failed (exit {proc.returncode}); see {a.out/(name + ".log")}')
                print(f'arm {name} done in {walls[name]} s', flush=True)
    res = run_wood_chain(data/'voc', data/'ood', a.out, arms, **kw)
    if not a.table: return res
    walls['total'] = round(time.perf_counter() - t0, 1)
    table = ablation_table(res); m = res['mining']
    mining = (f"Mining (threshold 0.5, curation by the pool's metadata): {m['candidates']} of {m['pool']} pool images scored "
              f"above the threshold, {m['kept']} kept after curation, {m['removed_by_curation']} removed; share of hard OoD "
              f"images among the kept {m.get('hard_share_kept', float('nan')):.3f}, of contaminated (foreground) "
              f"{m.get('foreground_share_kept', float('nan')):.3f}; hard recall {m.get('hard_recall', float('nan')):.3f}. "
              f"Kinds kept: {m.get('kinds', {}).get('kept')}.")
    cmd = 'python benchmarks/ablation_wood.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    md = '\n'.join([f'# W-OoD ablation on the synthetic benchmark (training seed {a.seed})', '',
                    f'Benchmark: {data} (`synth.json`: seed {json.loads((data/"synth.json").read_text())["seed"]}).', '', f'Command: `{cmd}`', '',
                    f'Machine: {machine(device)}.', '', table, mining, '',
                    f'Fine-tuning: {tcfg.epochs} epochs from the baseline, batch {tcfg.batch_size} in-distribution (+ {tcfg.batch_size} OoD), '
                    f'lr {tcfg.lr}; base loss settings {json.dumps(res["wood_config"])}; CAM scales {a.scales} with flips.', '',
                    f'Wall times (s): {json.dumps(walls)}; per step of this process: {json.dumps(res["timings_s"])}.', ''])
    write_text(a.out/'ablation.md', md)
    write_json(a.out/'ablation.json', dict(res, command=cmd, machine=machine(device), wall_s=walls,
                                           fine_tune=asdict(tcfg) | {'long_side': list(tcfg.long_side)}))
    print(md)
    show = 'd_wood' if 'd_wood' in res['arms'] else list(res['arms'])[-1]
    figs = chain_figures(data/'voc', data/'ood', a.out, arm=show, device=a.device)
    print('figures:', ', '.join(str(f) for f in figs.values()))
    return res


if __name__ == '__main__':
    try: main()
    except WoodInputError as e: print(f'error: {e}', file=sys.stderr); sys.exit(2)
