"""Random-walk cost per image (not a test): transition matrix, then T^(2^logt) by squaring (IRN) against
applying T to the K maps 2^logt times, dense and sparse, on stride-4 grids of a 128-px synthetic image, a
256-px image and a 500x375 VOC image.

All methods give the same scores (the largest relative difference to the dense iteration is printed);
`propagate(method='auto')` picks the cheaper dense method, and a sparse T is always iterated. Squaring
costs logt n^3, dense iterating 2^logt K n^2, sparse iterating 2^logt K nnz; squaring a VOC-sized grid on a
CPU takes minutes and is skipped unless --square-all is given.

Usage: python benchmarks/bench_refine.py [--threads 2] [--classes 2] [--logt 8] [--radius 5] [--square-all]
"""
import argparse, platform, time

import torch

from wood_nb.refine import propagate, transition_matrix


def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--threads', type=int, default=2); p.add_argument('--classes', type=int, default=2)
    p.add_argument('--logt', type=int, default=8); p.add_argument('--radius', type=int, default=5)
    p.add_argument('--square-all', action='store_true', help='also square the VOC-sized matrix (minutes on a CPU)')
    p.add_argument('--device', default='cpu')
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    dev = torch.device(a.device)
    print(f'machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, device {dev}; '
          f'K={a.classes} maps, radius {a.radius}, 2^{a.logt} steps')
    print(f'{"grid":>10} {"cells":>7} {"T MiB":>7} {"build s":>8} {"square s":>9} {"iterate s":>10} {"sparse build s":>15} {"sparse iterate s":>17} {"max diff":>9}')
    for name, (h, w) in [('128 px', (32, 32)), ('256 px', (64, 64)), ('VOC 500', (94, 125))]:
        b = (torch.rand(h, w, device=dev) * 0.3).clamp(0, 1)
        cams = torch.rand(a.classes, h, w, device=dev)
        T, t_build = timed(lambda: transition_matrix(b, a.radius, max_pixels=h * w))
        it, t_it = timed(lambda: propagate(cams, T, a.logt, method='iterate'))
        Ts, t_sbuild = timed(lambda: transition_matrix(b, a.radius, sparse=True))
        sp, t_sp = timed(lambda: propagate(cams, Ts, a.logt))
        rel = lambda x: (x - it).abs().max().item() / it.abs().max().item()
        diffs = [rel(sp)]
        if h * w <= 4096 or a.square_all:
            sq, t_sq = timed(lambda: propagate(cams, T, a.logt, method='square'))
            diffs.append(rel(sq)); t_sq = f'{t_sq:.3f}'
        else: t_sq = 'skipped'
        if dev.type == 'cuda': torch.cuda.synchronize()
        print(f'{name:>10} {h * w:>7} {4 * (h * w) ** 2 / 2**20:>7.0f} {t_build:>8.3f} {t_sq:>9} {t_it:>10.3f} {t_sbuild:>15.3f} {t_sp:>17.3f} {max(diffs):>9.1e}')


if __name__ == '__main__': main()
