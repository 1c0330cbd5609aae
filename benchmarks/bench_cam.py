"""CAM extraction speed, measured side by side in one run (not a test).

1. Multi-scale + flip CAMs (`wood_nb.cam.multiscale_cams`, scales 1.0 0.5 1.5 2.0 + flips) against the bare
   backbone forward passes on the same inputs (the floor: resizing, the head and the sums are our overhead).
2. Single-scale CAMs against torchcam's `CAM` and pytorch-grad-cam's `GradCAM` on the same model and batch
   (skipped, with the reason, where those packages are not installed: `pip install torchcam grad-cam`).

Usage: python benchmarks/bench_cam.py [--batch 16] [--size 128] [--repeats 5] [--backbone tf_efficientnet_lite0]
"""
import argparse, copy, platform, time

import torch
import torch.nn.functional as F

from wood_nb.cam import DEFAULT_SCALES, multiscale_cams
from wood_nb.model import CAMClassifier


def best_of(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batch', type=int, default=16); p.add_argument('--size', type=int, default=128)
    p.add_argument('--repeats', type=int, default=5); p.add_argument('--backbone', default='tf_efficientnet_lite0')
    p.add_argument('--classes', type=int, default=6); p.add_argument('--threads', type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    model = CAMClassifier(a.backbone, a.classes, output_stride=16).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    print(f'machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; '
          f'{a.backbone} OS16, batch {a.batch} at {a.size}px, best of {a.repeats}')
    rows = []

    inputs = []
    for s in DEFAULT_SCALES:
        xs = x if s == 1 else F.interpolate(x, size=(round(a.size*s), round(a.size*s)), mode='bilinear', align_corners=False)
        inputs.append(torch.cat([xs, xs.flip(-1)]))

    @torch.no_grad()
    def bare():
        for xs in inputs: model.features(xs)
    ours = best_of(lambda: multiscale_cams(model, x, DEFAULT_SCALES, flip=True), a.repeats)
    floor = best_of(bare, a.repeats)
    rows += [('4 scales + flip', 'backbone forward only (floor)', floor), ('', 'wood_nb multiscale_cams', ours)]
    # the CPU fast path of compute_cams: channels-last weights and inputs (NHWC), against its own floor
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    inputs_cl = [xs.contiguous(memory_format=torch.channels_last) for xs in inputs]
    @torch.no_grad()
    def bare_cl():
        for xs in inputs_cl: fast_model.features(xs)
    fast = best_of(lambda: multiscale_cams(fast_model, x, DEFAULT_SCALES, flip=True, channels_last=True), a.repeats)
    floor_cl = best_of(bare_cl, a.repeats)
    rows += [('', 'backbone forward only, channels-last', floor_cl), ('', 'wood_nb multiscale_cams, channels-last', fast)]

    single = best_of(lambda: torch.no_grad()(model.cams)(x), a.repeats)
    rows.append(('1 scale, no flip', 'wood_nb CAMClassifier.cams', single))
    try:
        from torchcam.methods import CAM
        layer = model.backbone.bn2 if hasattr(model.backbone, 'bn2') else list(model.backbone.children())[-1]
        ext = CAM(model, target_layer=layer, fc_layer=model.classifier)
        def tc():
            with torch.no_grad(): out = model(x)
            return ext(class_idx=0, scores=out, normalized=False)
        rows.append(('', 'torchcam CAM (class 0)', best_of(tc, a.repeats)))
        ext.remove_hooks()
    except Exception as e: rows.append(('', f'torchcam CAM: skipped ({type(e).__name__}: {str(e)[:60]})', float('nan')))
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        layer = model.backbone.bn2 if hasattr(model.backbone, 'bn2') else list(model.backbone.children())[-1]
        gc = GradCAM(model=model, target_layers=[layer])
        rows.append(('', 'pytorch-grad-cam GradCAM (class 0)', best_of(lambda: gc(x, targets=[ClassifierOutputTarget(0)]*a.batch), a.repeats)))
    except Exception as e: rows.append(('', f'grad-cam GradCAM: skipped ({type(e).__name__}: {str(e)[:60]})', float('nan')))

    print(f"{'task':18s} {'implementation':45s} {'best s':>8s} {'ratio':>7s}")
    base = {'4 scales + flip': floor, '1 scale, no flip': single}; cur = None
    for task, name, t in rows:
        cur = task or cur
        print(f'{task:18s} {name:45s} {t:8.4f} {t/base[cur]:7.2f}')
    print(f'multi-scale overhead over the bare forward passes: {ours/floor:.3f}x (aim: at most 1.15x)')
    print(f'channels-last: multiscale_cams {ours/fast:.2f}x faster than contiguous; overhead over its own bare passes {fast/floor_cl:.3f}x')


if __name__ == '__main__':
    main()
