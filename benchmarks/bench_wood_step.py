"""Cost of one W-OoD training step against one baseline classification step (not a test).

Each timed step is the whole thing: forward, backward and the SGD update. The baseline step sees B
in-distribution images; the W-OoD step sees B in-distribution plus B OoD images (the official layout),
computes the metric term against C class prototypes and K OoD centres, and, when asked, first applies
the anti-adversarial step to the OoD batch (one more forward pass and an input-gradient backward pass).
The variants run interleaved, round after round, so that drifting machine load hits them alike; the
table gives the median and the best round.

Aims: at most 2.1x the baseline without the anti-adversarial step, 3.2x with it.

Usage: python benchmarks/bench_wood_step.py [--batch 16] [--size 128] [--backbone tf_efficientnet_lite0]
       [--output-stride 16] [--freeze-bn stats] [--repeats 5] [--threads 2] [--device cpu]
On CUDA the steps run under bfloat16 autocast, as `fit` runs them, and every timing ends with a synchronise.
"""
import argparse, os, platform, statistics, time

import torch

from wood_nb.model import CAMClassifier
from wood_nb.train import multilabel_step
from wood_nb.wood import WoodConfig, wood_step


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batch', type=int, default=16); p.add_argument('--size', type=int, default=128)
    p.add_argument('--backbone', default='tf_efficientnet_lite0'); p.add_argument('--output-stride', type=int, default=16)
    p.add_argument('--freeze-bn', default='stats', choices=['none', 'stats', 'all'],
                   help="'stats' as the kit's presets (one joint forward pass); 'none' gives the two-pass layout")
    p.add_argument('--classes', type=int, default=6); p.add_argument('--K', type=int, default=50)
    p.add_argument('--repeats', type=int, default=5); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--device', default='cpu')
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    dev = torch.device(a.device); cuda = dev.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = CAMClassifier(a.backbone, a.classes, output_stride=a.output_stride, freeze_stages=1, freeze_bn=a.freeze_bn).train().to(dev)
    opt = torch.optim.SGD(model.param_groups(1e-3), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    ib = {'image': torch.randn(a.batch, 3, a.size, a.size, generator=g).to(dev),
          'label': (torch.rand(a.batch, a.classes, generator=g) > 0.6).float().to(dev)}
    ob = {'image': torch.randn(a.batch, 3, a.size, a.size, generator=g).to(dev), 'label': torch.zeros(a.batch, a.classes, device=dev)}
    cp, op = torch.randn(a.classes, model.feat_dim), torch.randn(a.K, model.feat_dim)

    def train_step(step, batch):
        def run():
            with torch.autocast('cuda', dtype=torch.bfloat16, enabled=cuda):
                loss, _ = step(model, batch)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sync()
        return run
    variants = [('baseline (BCE, B images)', train_step(multilabel_step, ib)),
                ('W-OoD, no anti-adversarial step', train_step(wood_step(WoodConfig(anti_adv_step=0.0), cp, op), (ib, ob))),
                ('W-OoD, anti-adversarial step (official)', train_step(wood_step(WoodConfig(), cp, op), (ib, ob)))]
    for _, fn in variants: fn()                                   # warm-up
    times = {n: [] for n, _ in variants}
    for _ in range(a.repeats):
        for n, fn in variants:
            sync(); t = time.perf_counter(); fn(); times[n].append(time.perf_counter() - t)

    load = os.getloadavg()
    print(f'machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, '
          f'device {dev}{" (" + torch.cuda.get_device_name(dev) + ")" if cuda else ""}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
    print(f'{a.backbone} OS{a.output_stride} ({model.feat_dim}-d features), freeze_bn={a.freeze_bn!r}, '
          f'batch {a.batch} (+{a.batch} OoD) at {a.size}px, C={a.classes}, K={a.K}; {a.repeats} interleaved rounds')
    base_med, base_min = statistics.median(times[variants[0][0]]), min(times[variants[0][0]])
    print(f"{'step':42s} {'median s':>9s} {'best s':>8s} {'ratio (median)':>15s} {'ratio (best)':>13s}")
    for n, _ in variants:
        med, best = statistics.median(times[n]), min(times[n])
        print(f'{n:42s} {med:9.3f} {best:8.3f} {med/base_med:15.2f} {best/base_min:13.2f}')
    r_no = statistics.median(times[variants[1][0]]) / base_med
    r_adv = statistics.median(times[variants[2][0]]) / base_med
    print(f'without anti-adversarial step: {r_no:.2f}x (aim: at most 2.1x) -> {"ok" if r_no <= 2.1 else "MISSED"}')
    print(f'with anti-adversarial step:    {r_adv:.2f}x (aim: at most 3.2x) -> {"ok" if r_adv <= 3.2 else "MISSED"}')


if __name__ == '__main__':
    main()
