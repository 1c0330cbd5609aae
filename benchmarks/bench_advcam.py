"""AdvCAM cost against plain multi-scale CAMs, per image, measured side by side in one run (not a test).

Both on the same model and images: `multiscale_cams` (all classes, one forward per scale and flip) and
`advcam_maps` (anti-adversarial climbing of each image's K classes, `steps` steps, at every scale),
with the scales and flips given. AdvCAM costs about (steps + 1) forward and `steps` backward passes per
class per scale, so the ratio should be near K x (steps + 1) x (1 + backward/forward).

Usage: python benchmarks/bench_advcam.py [--batch 4] [--size 96] [--classes-per-image 2] [--steps 27]
       [--backbone test_resnet] [--scales 1.0 0.5 1.5 2.0] [--repeats 2]
"""
import argparse, platform, time

import torch

from wood_nb.cam import DEFAULT_SCALES, advcam_maps, multiscale_cams
from wood_nb.model import CAMClassifier

from bench_cam import best_of  # the same best-of-N timer (benchmarks/ is on sys.path when a script here runs)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batch', type=int, default=4); p.add_argument('--size', type=int, default=96)
    p.add_argument('--classes-per-image', type=int, default=2); p.add_argument('--steps', type=int, default=27)
    p.add_argument('--backbone', default='test_resnet'); p.add_argument('--output-stride', type=int, default=16)
    p.add_argument('--num-classes', type=int, default=20)
    p.add_argument('--scales', type=float, nargs='+', default=list(DEFAULT_SCALES))
    p.add_argument('--repeats', type=int, default=2); p.add_argument('--threads', type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    model = CAMClassifier(a.backbone, a.num_classes, output_stride=a.output_stride).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    targets = [list(range(a.classes_per_image))]*a.batch
    scales = tuple(a.scales)
    print(f'machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; {a.backbone} '
          f'OS{a.output_stride}, {a.batch} images at {a.size}px, {a.classes_per_image} classes each, scales {scales} + flip, '
          f'{a.steps} steps, best of {a.repeats}')
    plain = best_of(lambda: multiscale_cams(model, x, scales, flip=True), a.repeats)/a.batch
    adv = best_of(lambda: advcam_maps(model, x, targets, scales, flip=True, steps=a.steps), a.repeats)/a.batch
    print(f'| method | s / image | ratio |\n|---|---|---|\n| multiscale_cams | {plain:.4f} | 1.0 |\n'
          f'| advcam_maps | {adv:.4f} | {adv/plain:.1f} |')
    print(f'AdvCAM / CAM per image: {adv/plain:.1f}x; per class: {adv/plain/a.classes_per_image:.1f}x '
          f'(forward-pass count ratio {a.classes_per_image*(a.steps + 1)}x before the backward passes)')


if __name__ == '__main__':
    main()
