"""Time wood_nb.segment against baselines in the same run.

1. Multi-scale + flip inference (`predict`) against its floor: the bare forward passes of the same
   scaled and flipped batches (aim: at most 1.15x, i.e. resizing, softmax and averaging are cheap).
2. One training step (forward + backward) with balanced cross-entropy against plain cross-entropy
   (aim: at most 1.05x: the class weights are one bincount).

Usage: python benchmarks/bench_segment.py [--backbone resnet10t] [--size 128] [--batch 8] [--repeats 5]
"""
import argparse, os, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import torch
import torch.nn.functional as F

from wood_nb.segment import DeepLabV2, predict, seg_loss

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def best(fns:list, repeats:int)->list[float]:
    "Best wall time of each function, the functions interleaved in every round (a shared machine's load hits all alike)."
    for f in fns: f()                             # warm-up
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, ts):
            t0 = time.perf_counter(); f(); t.append(time.perf_counter() - t0)
    return [min(t) for t in ts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--backbone', default='resnet10t')
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = DeepLabV2(a.backbone, 20).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)

    @torch.no_grad()
    def floor():
        for s in SCALES:
            xs = F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False) if s != 1 else x
            net(torch.cat([xs, xs.flip(-1)]), upsample=False)

    t_floor, t_pred = best([floor, lambda: predict(net, x, SCALES, flip=True)], a.repeats)
    print(f'{a.backbone} OS8, batch {a.batch} at {a.size} px, best of {a.repeats}, torch threads {torch.get_num_threads()}')
    print('| task | implementation | best s | ratio |\n|---|---|---|---|')
    print(f'| 5 scales + flip | bare forward passes (floor) | {t_floor:.4f} | 1.00 |')
    print(f'| | wood_nb `predict` | {t_pred:.4f} | {t_pred / t_floor:.2f} |')

    net.train()
    y = torch.randint(0, 21, (a.batch, a.size, a.size)); y[:, :4] = 255
    def step(balanced):
        def f():
            seg_loss(net(x), y, balanced=balanced).backward(); net.zero_grad(set_to_none=True)
        return f
    t_plain, t_bal = best([step(False), step(True)], a.repeats)
    print(f'| train step | plain cross-entropy | {t_plain:.4f} | 1.00 |')
    print(f'| | balanced cross-entropy | {t_bal:.4f} | {t_bal / t_plain:.2f} |')
    print(f'predict overhead {t_pred / t_floor:.3f}x (aim <= 1.15x): {"met" if t_pred / t_floor <= 1.15 else "not met"}; '
          f'balanced CE {t_bal / t_plain:.3f}x (aim <= 1.05x): {"met" if t_bal / t_plain <= 1.05 else "not met"}')


if __name__ == '__main__':
    main()
