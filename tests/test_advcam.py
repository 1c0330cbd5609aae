"AdvCAM (wood_nb.cam.advcam_maps / anti_adversarial_climb / compute_cams(method='advcam')): fast checks on a tiny random classifier."
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wood_nb.cam import (advcam_maps, anti_adversarial_climb, compute_cams, load_cam_record, multiscale_cams,
                         save_cam_record, strided_size)
from wood_nb.core import WoodInputError, load_npz
from wood_nb.model import CAMClassifier


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return CAMClassifier('test_resnet', num_classes=3, output_stride=8).eval()


@pytest.fixture(scope='module')
def imgs():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def close(a, b, rel=1e-4):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max() <= rel*max(b.abs().max().item(), 1e-12), (a - b).abs().max()


def reference_climb(model, x, c, flip, steps, xi, lam, thr):
    "The algorithm as written in the brief, one (image, class) at a time, the pair as a list of tensors."
    xs = [x.clone(), x.flip(-1).clone()] if flip else [x.clone()]
    total, A0, M = None, None, None
    for t in range(steps + 1):
        xs = [v.detach().requires_grad_(True) for v in xs]
        outs = [model.forward_all(v[None]) for v in xs]
        y = sum(o['logits'][0] for o in outs)
        cams = [model.fmap_to_cams(o['fmap'])[0, c] for o in outs]
        A = cams[0] + cams[1].flip(-1) if flip else cams[0]
        total = A.detach().clone() if total is None else total + A.detach()
        if t == 0: A0, M = A.detach(), torch.zeros_like(A)
        M = M.clone(); M[A.detach()/max(A.detach().max().item(), 1e-12) > thr] = 1
        if t == steps: break
        L = y[c] - (y.sum() - y[c]) - lam*(M*(A - A0).abs()).sum()
        gs = torch.autograd.grad(L, xs)
        gmax = max(g.abs().max() for g in gs)
        lo, hi = min(v.min() for v in xs).detach(), max(v.max() for v in xs).detach()
        xs = [torch.clamp(v.detach() + xi*g/(gmax + 1e-12), lo.item(), hi.item()) for v, g in zip(xs, gs)]
    return total


@pytest.mark.parametrize('flip', [True, False])
def test_steps0_is_plain_cam(net, imgs, flip):
    lo, hi = multiscale_cams(net, imgs, (1.0, 0.5), flip=flip)
    l, h = advcam_maps(net, imgs, [[0, 2], [1]], scales=(1.0, 0.5), flip=flip, steps=0)
    assert [t.shape for t in h] == [(2, 64, 64), (1, 64, 64)] and l[0].shape == (2,) + strided_size(64, 64)
    close(h[0], hi[0, [0, 2]]); close(h[1], hi[1, [1]]); close(l[0], lo[0, [0, 2]]); close(l[1], lo[1, [1]])


@pytest.mark.parametrize('flip', [True, False])
def test_batched_climb_matches_reference(net, imgs, flip):
    r = anti_adversarial_climb(net, torch.cat([imgs, imgs[:1]]), [0, 2, 1], flip=flip, steps=4, step_size=0.08, weight=7.0, mask_thresh=0.5)
    for n, (i, c) in enumerate([(0, 0), (1, 2), (0, 1)]):
        close(r['maps'][n], reference_climb(net, imgs[i], c, flip, 4, 0.08, 7.0, 0.5), rel=1e-3)


def test_climb_raises_class_logit_and_stays_in_range(net, imgs):
    r = anti_adversarial_climb(net, imgs, [0, 2], steps=10, weight=0.0)
    assert (r['score'][-1] > r['score'][0]).all(), r['score']
    for i in range(2):
        assert imgs[i].min() <= r['images'][i].min() and r['images'][i].max() <= imgs[i].max()


def test_mask_regulariser_holds_high_region(net, imgs):
    def change(w):
        r = anti_adversarial_climb(net, imgs, [0, 2], steps=8, weight=w)
        return (r['mask']*(r['last'] - r['first']).abs()).sum().item()
    free, held = change(0.0), change(1e4)
    assert held < 0.5*free, (held, free)


def test_per_sample_independence_and_chunking(net, imgs):
    both = advcam_maps(net, imgs, [[0, 2], [1]], scales=(1.0, 0.5), steps=5)[1]
    chunked = advcam_maps(net, imgs, [[0, 2], [1]], scales=(1.0, 0.5), steps=5, max_pairs=2)[1]
    for i, t in enumerate([[0, 2], [1]]):
        alone = advcam_maps(net, imgs[i:i+1], [t], scales=(1.0, 0.5), steps=5, max_pairs=1)[1][0]
        close(both[i], alone); close(chunked[i], alone)
    plain = multiscale_cams(net, imgs, (1.0, 0.5))[1]
    assert (both[0][0] - plain[0, 0]).abs().max() > 0.01*plain[0, 0].abs().max()


def test_model_state_untouched(net, imgs):
    ref = advcam_maps(net, imgs, [[0], [1]], scales=(1.0,), steps=3)[1]
    assert not net.training and all(p.grad is None for p in net.parameters())
    req = [p.requires_grad for p in net.parameters()]
    net.train()
    try:
        h = advcam_maps(net, imgs, [[0], [1]], scales=(1.0,), steps=3)[1]
        assert net.training
    finally: net.eval()
    close(h[0], ref[0]); close(h[1], ref[1])
    assert [p.requires_grad for p in net.parameters()] == req and all(p.grad is None for p in net.parameters())


def test_input_errors(net, imgs):
    with pytest.raises(ValueError, match='1 target lists for a batch of 2'): advcam_maps(net, imgs, [[0]], steps=1)
    with pytest.raises(ValueError, match=r'outside 0\.\.2'): advcam_maps(net, imgs, [[0], [3]], steps=1)
    with pytest.raises(WoodInputError, match='steps'): advcam_maps(net, imgs, [[0], [1]], steps=-1)
    with pytest.raises(WoodInputError, match='max_pairs'): advcam_maps(net, imgs, [[0], [1]], max_pairs=0)
    with pytest.raises(WoodInputError, match='forward_all'): advcam_maps(torch.nn.Conv2d(3, 3, 1), imgs, [[0], [1]])
    assert advcam_maps(net, imgs, [[], []], scales=(1.0,), steps=1)[1][0].shape == (0, 64, 64)


class NoiseDS(torch.utils.data.Dataset):
    def __init__(self, n=4): self.ids = [f'im{i}' for i in range(n)]
    def __len__(self): return len(self.ids)
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {'id': self.ids[i], 'image': torch.randn(3, 32 + 16*(i % 2), 32, generator=g), 'label': torch.tensor([1., float(i % 2), 1.])}


def test_compute_cams_advcam_records(net, tmp_path):
    assert compute_cams(net, NoiseDS(), tmp_path/'cam', scales=(1.0,), progress=False) == 4
    assert compute_cams(net, NoiseDS(), tmp_path/'adv', scales=(1.0,), batch_size=3, progress=False,
                        method='advcam', adv=dict(steps=3, max_pairs=3)) == 4
    assert compute_cams(net, NoiseDS(), tmp_path/'adv', scales=(1.0,), progress=False, method='advcam', adv=dict(steps=3)) == 0   # resume
    for i in NoiseDS().ids:
        c, a = load_cam_record(tmp_path/'cam'/f'{i}.npz'), load_cam_record(tmp_path/'adv'/f'{i}.npz')
        assert set(load_npz(tmp_path/'adv'/f'{i}.npz')) == {'keys', 'cam', 'high_res'}
        np.testing.assert_array_equal(a['keys'], c['keys'])
        assert a['cam'].shape == c['cam'].shape and a['high_res'].shape == c['high_res'].shape
    direct = advcam_maps(net, NoiseDS()[1]['image'][None], [[0, 1, 2]], (1.0,), steps=3)
    rec = load_cam_record(tmp_path/'adv'/'im1.npz')
    close(rec['high_res'], direct[1][0], rel=2e-3); close(rec['cam'], direct[0][0], rel=2e-3)
    assert not net.training and all(p.grad is None for p in net.parameters())


def test_compute_cams_bad_options(net, tmp_path):
    with pytest.raises(WoodInputError, match="'cam' or 'advcam'") as e: compute_cams(net, NoiseDS(), tmp_path, method='gradcam', progress=False)
    assert 'method' in str(e.value)
    with pytest.raises(WoodInputError, match=r"unknown AdvCAM settings \['iters'\]"):
        compute_cams(net, NoiseDS(), tmp_path, method='advcam', adv=dict(iters=3), progress=False)
    with pytest.raises(WoodInputError, match="method='advcam'"): compute_cams(net, NoiseDS(), tmp_path, adv=dict(steps=2), progress=False)


def test_record_keeps_large_values(tmp_path):
    save_cam_record(tmp_path/'big.npz', [2], np.full((1, 2, 2), 1e5), np.full((1, 5, 5), 3.0))
    raw = load_npz(tmp_path/'big.npz')
    assert raw['cam'].dtype == np.float32 and raw['high_res'].dtype == np.float16
    assert np.isfinite(load_cam_record(tmp_path/'big.npz')['cam']).all()
