"""Segmentation-recipe sweep on a finished run's pseudo-masks: several `TrainConfig`s trained in parallel processes.

    python benchmarks/sweep_seg.py --run RUN --out SWEEP --spec NAME:model=wood,lr=2e-3,head_mult=1,epochs=12,seed=0 [--spec ...] [--device cuda]

Spec fields: `model` (baseline or wood), `init` (imagenet, or classifier: the model's own classifier backbone), `balanced` (0/1), `output_stride`, `long_side=LO-HI`, and any number field of
`TrainConfig` (lr, head_mult, epochs, seed, batch_size, crop, ...). On a 2-core CPU use `--device cpu --parallel 2 --threads 1`.

Each spec trains DeepLab-v2 (`wood_nb.pipeline.segment_step`, the synthetic preset with the fields given) on
`RUN/refine/<model>/masks`, predicts val and scores it; the script prints one row per spec (val mIoU, cue
activation, final training loss and pixel accuracy) and writes SWEEP/sweep.json. A finished spec is read back.
"""
import argparse, json, multiprocessing as mp, sys, time
from pathlib import Path


def parse_spec(s:str)->tuple[str, dict]:
    name, _, body = s.partition(':')
    kw = {}
    for part in filter(None, body.split(',')):
        k, _, v = part.partition('=')
        if k == 'long_side': kw[k] = tuple(int(x) for x in v.split('-')); continue   # long_side=48-192
        kw[k] = v if k in ('model', 'init') else (v.lower() in ('1', 'true', 'yes') if k == 'balanced' else (int(v) if k in ('epochs', 'seed', 'batch_size', 'num_workers', 'crop', 'output_stride') else float(v)))
    return name, kw


def work(args):
    name, kw, run, out, device, threads = args
    import torch
    torch.set_num_threads(threads)
    from wood_nb.pipeline import segment_step
    from wood_nb.segment import seg_train_config, load_segmenter
    kw = dict(kw); model = kw.pop('model', 'wood'); balanced = kw.pop('balanced', False); ostride = kw.pop('output_stride', None)
    init = kw.pop('init', 'imagenet')                              # 'classifier': the backbone of the model's own classifier
    mkw = {**({'output_stride': ostride} if ostride else {}),
           **({'pretrained': str(Path(run)/('cls' if model == 'baseline' else 'wood')/'model.pt')} if init == 'classifier' else {})}
    cfg = seg_train_config('synthetic', progress=False, **kw)
    t = time.perf_counter()
    r = segment_step(Path(run)/'data'/'voc', Path(run)/'refine'/model/'masks', Path(out)/name, balanced=balanced, cfg=cfg, device=device,
                     model_kw=mkw or None)
    hist = load_segmenter(Path(out)/name/'model.pt', num_classes=len(r['iou']) - 1).meta.get('history') or [{}]
    return name, {'model': model, 'init': init, 'balanced': balanced, 'output_stride': ostride, **kw, 'seg_miou': round(r['miou'], 2), 'cue_activation': r.get('cue_activation'),
                  'final_loss': hist[-1].get('loss'), 'final_pixel_acc': hist[-1].get('pixel_acc'), 'seconds': round(time.perf_counter() - t, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', type=Path, required=True); p.add_argument('--out', type=Path, required=True)
    p.add_argument('--spec', action='append', required=True); p.add_argument('--device', default='cuda')
    p.add_argument('--parallel', type=int, default=8, help='specs trained at once')
    p.add_argument('--threads', type=int, default=2, help='torch threads of each process (1 on a 2-core CPU with --parallel 2)')
    a = p.parse_args()
    specs = [parse_spec(s) for s in a.spec]
    for _, kw in specs:
        m = a.run/'refine'/kw.get('model', 'wood')/'masks'
        if not m.is_dir(): sys.exit(f'error: {m} does not exist: run `wood demo --out {a.run}` (with refinement) first.')
    ctx = mp.get_context('spawn')
    with ctx.Pool(min(a.parallel, len(specs))) as pool:
        res = dict(pool.map(work, [(n, kw, str(a.run), str(a.out), a.device, a.threads) for n, kw in specs]))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/'sweep.json').write_text(json.dumps(res, indent=1))
    print(f"{'spec':12s} {'model':8s} {'lr':>7s} {'head':>5s} {'ep':>3s} {'seed':>4s} {'bal':>4s} {'val mIoU':>9s} {'cue':>6s} {'loss':>6s} {'pix acc':>7s} {'s':>6s}")
    for n, r in res.items():
        print(f"{n:12s} {r['model']:8s} {r.get('lr', '-')!s:>7s} {r.get('head_mult', '-')!s:>5s} {r.get('epochs', '-')!s:>3s} {r.get('seed', 0)!s:>4s} "
              f"{'y' if r['balanced'] else 'n':>4s} {r['seg_miou']:9.1f} {r['cue_activation'] or 0:6.3f} {r['final_loss'] or 0:6.3f} {r['final_pixel_acc'] or 0:7.3f} {r['seconds']:6.1f}")


if __name__ == '__main__':
    main()
