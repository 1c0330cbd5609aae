"""The W-OoD ablation on the embedded synthetic benchmark (an experiment, not a test).

Every arm fine-tunes the same baseline for the same number of steps, then its CAM seeds on the
training split are scored against the ground truth (seed mIoU) and the cue masks (cue activation):

  a_continued      continued training without OoD images (the control)
  b_ood_only       + the OoD images as all-zero negatives (gamma term only)
  c_metric_only    + the metric term only (prototypes of the mined OoD images)
  d_wood           full W-OoD (both terms)
  e_wood_random    full W-OoD with a random sample of the pool instead of the mined, curated images
  c2/d2 (--scaled-lam L)  c and d with the scaled metric term (unit-vector distances, lambda L)

The run is the kit's one runner, `run_pipeline`, stopped after its `arms` step (`wood run --to arms`):
baseline, its seeds, mining, prototypes and full W-OoD are the run's own steps, so `d_wood` (and any arm
that changes nothing) is the run's `wood/` and `eval/wood.json`; every other arm is an arm of the `arms`
step (`arms/<name>/`, `cam/<name>/`, `eval/<name>.json`). It writes RUN/ablation.md (the table, the
mining summary, the settings, the machine, the wall times), RUN/ablation.json and RUN/figures/ (baseline
against full W-OoD CAMs, the loss terms, the mined candidates, the OoD clusters), and prints the table.
Every step is skipped when finished with the same settings, so an interrupted run resumes; a rerun of a
finished run only prints the table again. A run folder of the older layout (before the arms step) is not
resumed: give a new --out.

Usage: python benchmarks/ablation_wood.py --out RUN [--data DIR] [--seed 0] [--epochs 5]
       [--baseline MODEL.pt] [--scaled-lam 0.2] [--arms a_continued,d_wood] [--num-workers N]
       [--lam 0.007] [--gamma 0.25] [--scales 1.0 0.5 1.5 2.0] [--device auto]
--parallel is gone: the arms now run one after another in the pipeline's `arms` step (only 1 is accepted).
"""
import argparse, json, os, platform, sys, time
from dataclasses import asdict
from pathlib import Path

import torch

from wood_nb.cam import DEFAULT_SCALES
from wood_nb.core import WoodInputError, claim_dir, own, write_json, write_text
from wood_nb.pipeline import run_config, run_pipeline
from wood_nb.report import chain_figures
from wood_nb.synth import SynthConfig, generate
from wood_nb.wood import ablation_arms, ablation_table


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
    p.add_argument('--parallel', type=int, default=1, help='only 1: the arms run one after another in the run\'s arms step')
    p.add_argument('--num-workers', type=int, default=0, help='DataLoader workers of every training')
    p.add_argument('--gen-workers', type=int, default=2, help='processes that render the benchmark')
    p.add_argument('--device', default=None, help="'cpu', 'cuda' (default: CUDA when present)")
    return p.parse_args(argv)


def is_wood(arm)->bool:
    "An arm that changes nothing and uses the mined images is the run's own W-OoD step."
    return not arm.overrides and arm.ood == 'mined'


def settings(a, data:Path):
    "The chosen arms and the run's `RunConfig` (the synthetic preset, these seeds and epochs, the other arms as its `arms`)."
    arms = ablation_arms(a.scaled_lam or None)
    if a.arms:
        want = a.arms.split(','); known = {x.name for x in arms}
        bad = [w for w in want if w not in known]
        if bad: raise WoodInputError('--arms', f'{bad} are not arms.', f'choose from {sorted(known)}.')
        arms = [x for x in arms if x.name in want]
    if a.parallel != 1: raise WoodInputError('--parallel', f'{a.parallel} arms at a time are no longer run.', 'leave it at 1 (the arms step runs them one after another).')
    ov = {'voc_root': str(data/'voc'), 'ood_root': str(data/'ood'), 'scales': list(a.scales), 'num_workers': a.num_workers, 'progress': False,
          'cls.seed': a.seed, 'wood_train.seed': a.seed, 'arms': [asdict(x) for x in arms if not is_wood(x)]}
    for key, v in (('wood_train.epochs', a.epochs), ('cls.epochs', a.baseline_epochs), ('wood.lam', a.lam), ('wood.gamma', a.gamma),
                   ('weights.baseline', str(a.baseline) if a.baseline else None)):
        if v is not None: ov[key] = v
    return arms, run_config('synthetic', ov)


def results(run:Path, arms:list, cfg)->dict:
    "The baseline's and every arm's evaluation block (with label, OoD source, overrides), the mining summary, the step times."
    read = lambda f: json.loads((run/f).read_text())
    blocks = {x.name: dict(label=x.label, ood=x.ood, overrides=x.overrides, **read(f"eval/{'wood' if is_wood(x) else x.name}.json")) for x in arms}
    times = {s.stem: json.loads(s.read_text())['seconds'] for s in sorted((run/'steps').glob('*.json')) if not s.stem.endswith('.started')}
    return {'baseline': read('eval/baseline.json'), 'mining': read('mining/mining.json'), 'arms': blocks, 'timings_s': times,
            'wood_config': json.loads(json.dumps(asdict(cfg.wood)))}


def machine(device):
    if device.type == 'cuda': return f'{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, torch {torch.__version__}'
    return f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, torch {torch.__version__}'


def report(a, argv, res:dict, cfg, data:Path, device, walls:dict)->str:
    "ablation.md's text."
    tc, m = cfg.wood_train, res['mining']
    mining = (f"Mining (threshold 0.5, curation by the pool's metadata): {m['candidates']} of {m['pool']} pool images scored "
              f"above the threshold, {m['kept']} kept after curation, {m['removed_by_curation']} removed; share of hard OoD "
              f"images among the kept {m.get('hard_share_kept', float('nan')):.3f}, of contaminated (foreground) "
              f"{m.get('foreground_share_kept', float('nan')):.3f}; hard recall {m.get('hard_recall', float('nan')):.3f}. "
              f"Kinds kept: {m.get('kinds', {}).get('kept')}.")
    cmd = 'python benchmarks/ablation_wood.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    return '\n'.join([f'# W-OoD ablation on the synthetic benchmark (training seed {a.seed})', '',
                      f'Benchmark: {data} (`synth.json`: seed {json.loads((data/"synth.json").read_text())["seed"]}).', '', f'Command: `{cmd}`', '',
                      f'Machine: {machine(device)}.', '', ablation_table(res), mining, '',
                      f'Fine-tuning: {tc.epochs} epochs from the baseline, batch {tc.batch_size} in-distribution (+ {tc.batch_size} OoD), '
                      f'lr {tc.lr}; base loss settings {json.dumps(res["wood_config"])}; CAM scales {a.scales} with flips.', '',
                      f'Wall times (s): {json.dumps(walls)}; per step of the run (the run that finished it): {json.dumps(res["timings_s"])}.', ''])


def main(argv=None):
    a = parse(argv); t0 = time.perf_counter()
    data = a.data or a.out/'data'
    arms, cfg = settings(a, data)
    claim_dir(a.out, 'run', [a.data] if a.data else []); own(a.out, ['ablation.md', 'ablation.json', 'figures'] + ([] if a.data else ['data']))
    if not (data/'synth.json').exists():
        print(f'generating the default benchmark (seed {a.seed}) into {data} ...', flush=True)
        generate(data, seed=a.seed, cfg=SynthConfig(), workers=a.gen_workers)
    device = torch.device(a.device) if a.device else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    run_pipeline(cfg, a.out, to_step='arms', device=a.device)
    walls = {'total': round(time.perf_counter() - t0, 1)}
    res = results(a.out, arms, cfg)
    md = report(a, argv, res, cfg, data, device, walls)
    cmd = md.split('Command: `')[1].split('`')[0]
    write_text(a.out/'ablation.md', md)
    write_json(a.out/'ablation.json', dict(res, command=cmd, machine=machine(device), wall_s=walls,
                                           fine_tune=asdict(cfg.wood_train) | {'long_side': list(cfg.wood_train.long_side)}))
    print(md)
    show = next((x for x in arms if x.name == 'd_wood'), arms[-1])
    figs = chain_figures(data/'voc', data/'ood', a.out, arm='wood' if is_wood(show) else show.name, device=a.device)
    print('figures:', ', '.join(str(f) for f in figs.values()))
    return res


if __name__ == '__main__':
    try: main()
    except WoodInputError as e: print(f'error: {e}', file=sys.stderr); sys.exit(2)
