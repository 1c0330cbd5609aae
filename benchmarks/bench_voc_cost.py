"""Cost of the `voc` preset at VOC's image sizes on this machine, per image and per step, and its extrapolation to PASCAL VOC.

    python benchmarks/bench_voc_cost.py --out /tmp/voc_cost --record benchmarks/records/voc_cost_2core.json

Runs `wood run --preset voc` on a VOC-shaped rehearsal set (`wood_nb.synth.generate_voc_rehearsal`: ~500x375 images,
stand-in ResNet-50 / ResNet-101 weights) with every training at one epoch and the preset's crops, CAM scales, walk and
test scales, then times the random walk and the multi-scale segmentation prediction again on their own (each in a fresh
process, which also gives the walk's peak memory). Per-image costs:
- training steps: seconds per image and epoch (the step's time over images x epochs);
- `refine`: confident labels + one boundary epoch + random walk, per image and model; the walk's share is measured apart;
- `segment`: one training epoch + multi-scale prediction of `val`, per model; the prediction's share is measured apart.
The extrapolation multiplies by VOC's counts (train_aug 10,582 images, train 1,464, val 1,449) and the preset's epochs;
the OoD pool is given per 1,000 candidates (the pool size depends on the list you use). It assumes time linear in images
and epochs, which holds for these per-image loops; under torchrun every step is sharded or data-parallel, so N processes
divide it by at most N.
"""
import argparse, json, os, platform, resource, shutil, subprocess, sys, time
from pathlib import Path

VOC = dict(train_aug=10582, train=1464, val=1449)
SMALL = dict(n_train_aug=10, n_train=4, n_val=2, n_ood=10)
HERE = Path(__file__).resolve().parent


def run(cmd:list, env=None)->subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', **(env or {})})
    if r.returncode: sys.exit(f'failed: {" ".join(map(str, cmd))}\n{r.stderr[-3000:]}')
    return r


def child_walk(run_dir:str, voc:str, out:str)->None:
    "In a fresh process: the random walk of the W-OoD model's CAMs with the trained boundary network; prints seconds and peak RSS."
    import torch
    from wood_nb.refine import BOUNDARY_PRESETS, load_boundary_net, make_pseudo_masks
    net, w = load_boundary_net(Path(run_dir)/'refine'/'wood'/'model.pt'), BOUNDARY_PRESETS['voc']['walk']
    t = time.perf_counter()
    n = make_pseudo_masks(net, voc, 'train_aug', Path(run_dir)/'cam'/'wood', out, radius=w['radius'], logt=w['logt'], beta=10.0,
                          bg_plane=0.22, device=torch.device('cpu'), progress=False)
    print(json.dumps({'images': n, 'seconds': time.perf_counter() - t, 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_predict(run_dir:str, voc:str, out:str)->None:
    "In a fresh process: multi-scale + flip prediction of `val` with the W-OoD segmenter; prints seconds and peak RSS."
    import torch
    from wood_nb.core import read_classes
    from wood_nb.pipeline import SEG_EVAL_SCALES
    from wood_nb.segment import load_segmenter, predict_split
    classes = read_classes(voc)
    m = load_segmenter(Path(run_dir)/'seg'/'wood'/'model.pt', num_classes=len(classes), classes=classes)
    t = time.perf_counter()
    n = predict_split(m, voc, 'val', out, scales=SEG_EVAL_SCALES['voc'], flip=True, device=torch.device('cpu'), progress=False)
    print(json.dumps({'images': n, 'seconds': time.perf_counter() - t, 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, required=True); p.add_argument('--record', type=Path, default=None)
    for k, v in SMALL.items(): p.add_argument('--' + k.replace('_', '-'), type=int, default=v)
    a = p.parse_args(argv)
    from wood_nb.config import STEPS
    from wood_nb.synth import generate_voc_rehearsal, write_standin_weights
    n = {k: getattr(a, k) for k in SMALL}
    data = a.out/'data'
    if not (data/'voc').is_dir(): generate_voc_rehearsal(data, seed=0, workers=2, **n)
    w = write_standin_weights(a.out/'weights') if not (a.out/'weights').is_dir() else {
        'classifier': a.out/'weights'/'resnet50.pth', 'boundary': a.out/'weights'/'resnet50.pth', 'segmenter': a.out/'weights'/'resnet101.pth'}
    sets = ['batch_size=2', 'prototypes.k=2', 'mining.threshold=0.0', 'progress=false'] + [
        f'{s}.{k}={v}' for s in ('cls', 'wood_train', 'boundary', 'seg_train') for k, v in (('epochs', 1), ('batch_size', 2))] + [
        f'weights.{k}={v}' for k, v in w.items()]
    run([sys.executable, '-m', 'wood_nb.cli', 'run', '--preset', 'voc', '--root', data/'voc', '--pool', data/'ood',
         '--out', a.out/'run', '--device', 'cpu', *[x for s in sets for x in ('--set', s)]])
    rec = {s: json.loads((a.out/'run'/'steps'/f'{s}.json').read_text()) for s in STEPS}
    kept = json.loads((a.out/'run'/'mining'/'mining.json').read_text())['kept']
    for d in ('walk', 'pred'): shutil.rmtree(a.out/d, ignore_errors=True)          # the benchmark's own scratch folders: timed afresh
    walk = json.loads(run([sys.executable, __file__, '--child', 'walk', a.out/'run', data/'voc', a.out/'walk']).stdout.strip().splitlines()[-1])
    pred = json.loads(run([sys.executable, __file__, '--child', 'predict', a.out/'run', data/'voc', a.out/'pred']).stdout.strip().splitlines()[-1])
    N = n['n_train_aug']
    sec = {s: rec[s]['seconds'] for s in STEPS}
    walk_img, pred_img = walk['seconds'] / walk['images'], pred['seconds'] / pred['images']
    per = {  # seconds per image (training: per image and epoch)
        'baseline (train, per image-epoch)': sec['baseline'] / N,
        'CAMs, 4 scales + flip (per image)': (sec['baseline_seeds'] + sec['wood_seeds']) / (2 * N),
        'mining (per pool image)': sec['mining'] / n['n_ood'],
        'prototypes (per image)': sec['prototypes'] / (N + kept),
        'W-OoD (train, per image-epoch)': sec['wood'] / N,
        'refine: labels + boundary epoch (per image)': max(sec['refine'] / (2 * N) - walk_img, 0.0),
        'refine: random walk (per image)': walk_img,
        'DeepLab-v2 (train, per image-epoch)': max(sec['segment'] / 2 - pred_img * n['n_val'], 0.0) / N,
        'DeepLab-v2 prediction, 5 scales + flip (per image)': pred_img,
    }
    from wood_nb.runconfig import run_config
    cfg = run_config('voc')
    voc_s = {   # the real VOC at the preset's epochs, one process
        'baseline': per['baseline (train, per image-epoch)'] * VOC['train_aug'] * cfg.cls.epochs,
        'baseline_seeds': per['CAMs, 4 scales + flip (per image)'] * VOC['train_aug'],
        'mining (per 1,000 pool images)': per['mining (per pool image)'] * 1000,
        'prototypes (+ per 1,000 kept)': per['prototypes (per image)'] * VOC['train_aug'],
        'wood': per['W-OoD (train, per image-epoch)'] * VOC['train_aug'] * cfg.wood_train.epochs,
        'wood_seeds': per['CAMs, 4 scales + flip (per image)'] * VOC['train_aug'],
        'refine (2 models)': 2 * VOC['train_aug'] * (per['refine: labels + boundary epoch (per image)'] * cfg.boundary.epochs + walk_img),
        'segment (2 models)': 2 * (per['DeepLab-v2 (train, per image-epoch)'] * VOC['train_aug'] * cfg.seg_train.epochs + pred_img * VOC['val']),
    }
    out = {'command': 'python benchmarks/bench_voc_cost.py ' + ' '.join(map(str, argv if argv is not None else sys.argv[1:])),
           'counts': n, 'kept': kept, 'steps_s': round(sum(sec.values()), 1), 'step_seconds': sec,
           'step_peak_rss_mib': {s: rec[s].get('peak_rss_mib') for s in STEPS}, 'walk': walk, 'predict': pred,
           'per_image_s': {k: round(v, 3) for k, v in per.items()}, 'voc_one_process_s': {k: round(v) for k, v in voc_s.items()},
           'machine': {'cores': os.cpu_count(), 'python': platform.python_version(), 'arch': platform.machine()},
           'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    print(f"rehearsal run: {sum(sec.values()):.0f} s in its nine steps (step records) for {N} train_aug images ({n['n_train']} with masks), {n['n_val']} val, {n['n_ood']} pool images")
    print('\n| cost on this machine | seconds |\n|---|---|')
    for k, v in per.items(): print(f'| {k} | {v:.2f} |')
    print(f"\nrandom walk at VOC size: peak memory of a fresh process {walk['peak_rss_mib']:.0f} MiB; prediction {pred['peak_rss_mib']:.0f} MiB")
    print('\n| PASCAL VOC, one process on this machine | time |\n|---|---|')
    for k, v in voc_s.items(): print(f'| {k} | ' + (f'{v/3600:.1f} h' if v >= 3600 else f'{v/60:.0f} min') + ' |')
    print(f"| total without mining | {sum(v for k, v in voc_s.items() if not k.startswith('mining'))/3600:.0f} h |")
    if a.record: a.record.parent.mkdir(parents=True, exist_ok=True); a.record.write_text(json.dumps(out, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    if len(sys.argv) > 2 and sys.argv[1] == '--child':
        {'walk': child_walk, 'predict': child_predict}[sys.argv[2]](*sys.argv[3:6]); sys.exit(0)
    sys.exit(main())
