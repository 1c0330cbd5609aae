"""Benchmark wood_nb.metrics: confusion-matrix mIoU against torchmetrics, and the one-pass threshold
sweep against the naive per-threshold loop. Checks that the values agree, prints a table.

    python benchmarks/bench_metrics.py [--n-masks 200] [--size 256] [--classes 21] [--repeats 5]
"""
import argparse, os, platform, sys, time

import numpy as np
import torch

from wood_nb.metrics import SEED_THRESHOLDS, ConfusionMatrix, seed_from_cams, sweep_thresholds


def best_of(fn, repeats:int, warmup=None):
    "Best wall time (s) of `repeats` calls of `fn` after a warm-up call (`warmup` or `fn`), and the last result."
    (warmup or fn)()
    best, out = float('inf'), None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t0)
    return best, out


def make_data(n:int, size:int, classes:int, ignore_frac:float, seed:int):
    "Random masks with ignored pixels, predictions, and per-image max-normalised CAMs of 1-3 classes."
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, classes, (n, size, size)).astype(np.uint8)
    gt[rng.random(gt.shape) < ignore_frac] = 255
    pred = rng.integers(0, classes, (n, size, size)).astype(np.uint8)
    records = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        keys = rng.choice(np.arange(1, classes), k, replace=False)
        cams = rng.random((k, size, size), dtype=np.float32)
        cams /= cams.reshape(k, -1).max(1)[:, None, None] + 1e-5
        records.append((cams, keys, gt[i]))
    return gt, pred, records


def _naive_one(records, num_classes, t):
    "The naive way, one threshold: recompute every seed and its confusion matrix."
    acc = ConfusionMatrix(num_classes)
    for cams, keys, gt in records: acc.update(seed_from_cams(cams, keys, t), gt)
    return acc.mat


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n-masks', type=int, default=200, help='number of masks (and CAM records)')
    ap.add_argument('--size', type=int, default=256, help='mask side in pixels')
    ap.add_argument('--classes', type=int, default=21, help='classes, background included')
    ap.add_argument('--ignore-frac', type=float, default=0.05, help='share of ground-truth pixels set to 255')
    ap.add_argument('--repeats', type=int, default=5, help='best of N for the fast runs')
    ap.add_argument('--naive-repeats', type=int, default=1, help='best of N for the naive sweep (slow)')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    from torchmetrics.classification import MulticlassJaccardIndex

    gt, pred, records = make_data(a.n_masks, a.size, a.classes, a.ignore_frac, a.seed)
    tg, tp = torch.from_numpy(gt).long(), torch.from_numpy(pred).long()
    n = a.classes
    rows, ok = [], True

    # --- mIoU: ours vs torchmetrics on the same masks
    t_np, cm = best_of(lambda: ConfusionMatrix(n).update(pred, gt), a.repeats)
    t_t, cm_t = best_of(lambda: ConfusionMatrix(n).update(tp, tg), a.repeats)
    def tm(validate):
        m = MulticlassJaccardIndex(num_classes=n, average=None, ignore_index=255, validate_args=validate)
        m.update(tp, tg)
        return m.compute()
    t_tm, iou_tm = best_of(lambda: tm(True), a.repeats)
    t_tm0, iou_tm0 = best_of(lambda: tm(False), a.repeats)
    agree = (np.allclose(cm.iou(), iou_tm.numpy(), rtol=1e-6, atol=0) and np.allclose(cm.iou(), iou_tm0.numpy(), rtol=1e-6, atol=0)
             and np.array_equal(cm.mat, cm_t.mat))
    ok &= agree
    task = f'mIoU {a.n_masks}x{a.size}x{a.size}, {n} cls'
    rows += [(task, 'wood_nb ConfusionMatrix (uint8 numpy in)', t_np, t_np / t_np),
             ('', 'wood_nb ConfusionMatrix (int64 torch in)', t_t, t_t / t_np),
             ('', 'torchmetrics MulticlassJaccardIndex', t_tm, t_tm / t_np),
             ('', '  same, validate_args=False', t_tm0, t_tm0 / t_np)]

    # --- sweep: one pass vs the naive per-threshold loop
    T = len(SEED_THRESHOLDS)
    t_sw, res = best_of(lambda: sweep_thresholds(records, n), a.repeats)
    t_nv, naive = best_of(lambda: np.stack([_naive_one(records, n, t) for t in SEED_THRESHOLDS]), a.naive_repeats,
                          warmup=lambda: _naive_one(records[:5], n, 0.3))
    same = np.array_equal(res.confusion, naive)
    ok &= same
    task = f'sweep {T} thresholds, {a.n_masks} imgs'
    rows += [(task, 'wood_nb sweep_thresholds (one pass)', t_sw, 1.0),
             ('', 'naive loop (seed + confusion per t)', t_nv, t_nv / t_sw)]

    print(f'machine: {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, '
          f'numpy {np.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}')
    print(f'{"task":<30} {"implementation":<42} {"best s":>9} {"x ours":>8}')
    print('-' * 92)
    for task, impl, t, r in rows: print(f'{task:<30} {impl:<42} {t:9.4f} {r:8.1f}')
    print('-' * 92)
    print(f'mIoU ours {cm.miou():.4f} vs torchmetrics {float(np.nanmean(iou_tm.numpy())) * 100:.4f}; '
          f'per-class IoU agree: {agree}')
    print(f'sweep best t={res.best_threshold} mIoU {res.best_miou:.4f}; one-pass == naive at all {T} thresholds: {same}')
    return 0 if ok else 1


if __name__ == '__main__': sys.exit(main())
