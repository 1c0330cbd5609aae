"""The GPU check: the `full` demo profile and the VOC-shaped rehearsal at a few hundred images, with per-step times and
peak GPU memory next to the 2-core CPU estimates of `wood run --dry-run`.

    bash benchmarks/gpu_check.sh --out /tmp/gpu_check [--device cuda] [--num-workers 4] [--record benchmarks/records/gpu_check_h200.json]
    bash benchmarks/gpu_check.sh --out /tmp/gpu_check --device cpu --tiny        # the same code at tiny counts (a test runs this)

Sized to finish in under 8 minutes on one H200 (bfloat16 autocast in every training, DataLoader workers). Nothing is
downloaded: the rehearsal's ImageNet files are random stand-ins (`wood_nb.synth.write_standin_weights`), so its numbers
are speed and memory, not accuracy.
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

import torch

from wood_nb.cli import run_demo
from wood_nb.config import STEPS
from wood_nb.runconfig import config_from_dict, run_config
from wood_nb.pipeline import estimate_seconds, image_counts, run_pipeline
from wood_nb.synth import SynthConfig, generate_voc_rehearsal, write_standin_weights

# (benchmark knobs, run settings) of each part at each size; only counts, epochs and (tiny) crops are shrunk
VOC_COUNTS = {'gpu': dict(n_train_aug=300, n_train=100, n_val=50, n_ood=200), 'tiny': dict(n_train_aug=6, n_train=3, n_val=2, n_ood=8)}
VOC_SETS = {'gpu': {'cls.epochs': 2, 'wood_train.epochs': 2, 'boundary.epochs': 1, 'seg_train.epochs': 3, 'prototypes.k': 20,
                    'mining.threshold': 0.0},
            'tiny': {'cls.epochs': 1, 'wood_train.epochs': 1, 'boundary.epochs': 1, 'seg_train.epochs': 1, 'prototypes.k': 2,
                     'mining.threshold': 0.0, 'scales': [1.0], 'seg.scales': [1.0], 'seg.flip': False, 'batch_size': 2,
                     **{f'{s}.{k}': v for s in ('cls', 'wood_train', 'boundary', 'seg_train')
                        for k, v in (('batch_size', 2), ('crop', 96), ('long_side', [96, 128]))}}}
DEMO_TINY = SynthConfig(image_size=48, n_train=16, n_val=4, n_ood=24)
DEMO_TINY_SETS = {'prototypes.k': 4, 'mining.threshold': 0.0, **{f'{s}.{k}': v for s in ('cls', 'wood_train', 'boundary', 'seg_train')
                  for k, v in (('batch_size', 4), ('crop', 48), ('long_side', [40, 56]), ('epochs', 1))}}


def step_table(run:Path, cfg, counts:dict)->dict:
    "Per step: seconds, peak resident memory, peak GPU memory (from the step records) and the CPU estimate."
    out = {}
    for s in STEPS:
        r = json.loads((run/'steps'/f'{s}.json').read_text())
        est = estimate_seconds(cfg, s, counts)
        out[s] = {'seconds': r['seconds'], 'peak_rss_mib': r.get('peak_rss_mib'), 'peak_gpu_mib': r.get('peak_gpu_mib'),
                  'cpu_estimate_s': None if est is None else round(est, 1)}
    return out


def show(title:str, table:dict):
    print(f'\n{title}\n{"step":15s} {"seconds":>9s} {"GPU MiB":>9s} {"RSS MiB":>9s} {"2-core CPU estimate":>20s}')
    for s, r in table.items():
        g = '-' if r['peak_gpu_mib'] is None else f"{r['peak_gpu_mib']:.0f}"
        c = '-' if r['cpu_estimate_s'] is None else f"{r['cpu_estimate_s']:.0f} s"
        print(f"{s:15s} {r['seconds']:9.1f} {g:>9s} {r['peak_rss_mib'] or 0:9.0f} {c:>20s}")


def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, required=True, help='a new folder for both runs')
    p.add_argument('--device', default='cuda'); p.add_argument('--num-workers', type=int, default=4)
    p.add_argument('--tiny', action='store_true', help='tiny counts and crops (a CPU test of the script)')
    p.add_argument('--record', type=Path, default=None, help='also write the results to this JSON file')
    a = p.parse_args(argv)
    size = 'tiny' if a.tiny else 'gpu'
    dev = torch.device(a.device)
    rec = {'command': ' '.join(['benchmarks/gpu_check.sh', *(argv if argv is not None else sys.argv[1:])]), 'size': size,
           'machine': {'gpu': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None, 'cpu_cores': os.cpu_count(),
                       'torch': torch.__version__, 'python': platform.python_version()},
           'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    # 1. the full demo profile (the default 128-px benchmark, every step)
    t = time.perf_counter()
    over = {'num_workers': a.num_workers, **(DEMO_TINY_SETS if a.tiny else {})}
    run_demo(a.out/'demo', seed=0, profile='full', cfg=DEMO_TINY if a.tiny else None, overrides=over, device=dev)
    demo_cfg = config_from_dict(json.loads((a.out/'demo'/'config.json').read_text()))
    counts = image_counts(demo_cfg)
    rec['demo'] = {'wall_s': round(time.perf_counter() - t, 1), 'counts': counts, 'steps': step_table(a.out/'demo', demo_cfg, counts),
                   'metrics': {b: {k: m.get(k) for k in ('seed_miou', 'cue_activation', 'mask_miou', 'seg_miou')}
                               for b, m in json.loads((a.out/'demo'/'metrics.json').read_text()).items() if b in ('baseline', 'wood')}}
    show(f"full demo profile on {a.device}: {rec['demo']['wall_s']} s", rec['demo']['steps'])
    # 2. the VOC-shaped rehearsal with the voc preset (ResNet-50 / ResNet-101 stand-ins, VOC's image sizes and crops)
    t = time.perf_counter()
    data = generate_voc_rehearsal(a.out/'voc_data', seed=0, workers=min(8, os.cpu_count() or 1), **VOC_COUNTS[size])
    w = write_standin_weights(a.out/'weights')
    cfg = run_config('voc', {'voc_root': str(data/'voc'), 'ood_root': str(data/'ood'), 'num_workers': a.num_workers,
                             **{f'weights.{k}': str(v) for k, v in w.items()}, **VOC_SETS[size]})
    run_pipeline(cfg, a.out/'voc_run', device=dev)
    counts = image_counts(cfg)
    rec['voc'] = {'wall_s': round(time.perf_counter() - t, 1), 'counts': counts, 'steps': step_table(a.out/'voc_run', cfg, counts)}
    show(f"VOC rehearsal ({counts['train']} train_aug images) on {a.device}: {rec['voc']['wall_s']} s", rec['voc']['steps'])
    if a.record: a.record.parent.mkdir(parents=True, exist_ok=True); a.record.write_text(json.dumps(rec, indent=1) + '\n')
    print(f"\nrecord: {a.record or '(not written; pass --record FILE)'}")
    return 0


if __name__ == '__main__': sys.exit(main())
