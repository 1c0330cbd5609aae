"IRN refinement: confident labels, the optional dense CRF, pair labels and affinities, the boundary net, the random walk, and a tiny end-to-end run."
import math
import sys

import numpy as np
import pytest
import torch

from wood_nb.cam import compute_cams, load_cam_record, strided_size
from wood_nb.core import WoodInputError, load_mask, read_classes
from wood_nb.data import VOCDataset, eval_transforms, read_split, train_transforms
from wood_nb.metrics import seed_from_cams
from wood_nb.model import CHECKPOINT_FORMATS, PACKAGE_WEIGHTS, CAMClassifier, save_classifier
from wood_nb.refine import (BOUNDARY_FORMAT, BOUNDARY_PRESETS, BoundaryNet, ConfidentLabelDataset, affinity_loss, boundary_train_config, confident_labels, crf_available,
                            crf_labels, dense_crf, eval_mask_dir, load_boundary_net, make_boundary_net, make_confident_labels,
                            make_pseudo_masks, pair_affinities, pair_labels, pair_offsets, propagate, random_walk, save_boundary_net,
                            segment_points, strided_labels, train_boundary, transition_matrix)
from wood_nb.synth import SynthConfig, generate
from wood_nb.train import TrainConfig, fit, make_loader, multilabel_step

CAMS = np.array([[[0.90, 0.50, 0.40, 0.40],
                  [0.20, 0.25, 0.05, 0.40],
                  [0.20, 0.05, 0.00, 0.30]],
                 [[0.10, 0.10, 0.60, 0.60],
                  [0.10, 0.00, 0.10, 0.10],
                  [0.00, 0.00, 0.10, 0.10]]], np.float32)


# ---------------------------------------------------------------- confident labels
def test_confident_labels_by_hand():
    np.testing.assert_array_equal(confident_labels(CAMS, [3, 5]),
                                  [[3, 3, 5, 5], [255, 255, 0, 3], [255, 0, 0, 255]])
    # the rule, pixel by pixel, against the two argmaxes over [plane, maps]
    keys = np.array([0, 3, 5])
    fg = keys[np.concatenate([np.full((1, 3, 4), 0.30, np.float32), CAMS]).argmax(0)]
    bg = keys[np.concatenate([np.full((1, 3, 4), 0.15, np.float32), CAMS]).argmax(0)]
    expect = np.where(fg > 0, fg, np.where(bg == 0, 0, 255))
    np.testing.assert_array_equal(confident_labels(CAMS, [3, 5]), expect)


def test_confident_labels_errors():
    with pytest.raises(WoodInputError, match='bg_thresh <= fg_thresh'): confident_labels(CAMS, [3, 5], 0.1, 0.2)
    with pytest.raises(WoodInputError, match='max-normalised'): confident_labels(CAMS * 5, [3, 5])
    with pytest.raises(ValueError, match='2 CAMs but 1 keys'): confident_labels(CAMS, [3])


# ---------------------------------------------------------------- dense CRF (optional)
IMG = np.zeros((20, 30, 3), np.uint8); IMG[:, 15:] = (200, 180, 40)
ROUGH = np.zeros((20, 30), np.int64); ROUGH[:, 10:] = 1


def test_crf_snaps_to_colour_edge():
    pytest.importorskip('pydensecrf')
    assert crf_available()
    want = np.where(np.arange(30) >= 15, 1, 0)[None].repeat(20, 0)
    np.testing.assert_array_equal(crf_labels(IMG, ROUGH, 2), want)
    probs = np.stack([np.where(ROUGH == 0, 0.6, 0.4), np.where(ROUGH == 1, 0.6, 0.4)])
    post = dense_crf(IMG, probs)
    np.testing.assert_allclose(post.sum(0), 1, atol=1e-4)
    np.testing.assert_array_equal(post.argmax(0), want)
    with pytest.raises(WoodInputError, match='maps are 20x30'): crf_labels(IMG[:10], ROUGH, 2)


def test_crf_missing_says_how_to_install(monkeypatch):
    for m in ('pydensecrf', 'pydensecrf.densecrf', 'pydensecrf.utils'): monkeypatch.setitem(sys.modules, m, None)
    assert not crf_available()
    with pytest.raises(WoodInputError, match=r'pip install "wood_nb\[crf\]" \(or pip install pydensecrf2\)'): crf_labels(IMG, ROUGH, 2)
    with pytest.raises(WoodInputError, match='pydensecrf2'): dense_crf(IMG, np.ones((2, 20, 30)))
    confident_labels(CAMS, [3, 5])                       # no CRF asked: nothing needed


# ---------------------------------------------------------------- pairs
def test_pair_offsets_cover_each_pair_once():
    for r in (2, 5, 10):
        offs = pair_offsets(r)
        full = set(offs) | {(-a, -b) for a, b in offs}
        assert len(full) == 2 * len(offs)
        assert full == {(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1) if 0 < a * a + b * b < r * r}
    assert len(pair_offsets(5)) == 34
    with pytest.raises(WoodInputError, match='integer >= 2'): pair_offsets(1)


def test_segments_are_8_connected():
    for dy, dx in pair_offsets(10):
        p = segment_points(dy, dx)
        assert p[0].tolist() == [0, 0] and p[-1].tolist() == [dy, dx]
        assert (np.abs(np.diff(p, axis=0)) <= 1).all()


def test_pair_labels_by_hand():
    lab = torch.tensor([[[0, 0, 255, 2], [0, 1, 1, 2]]])
    bgp, fgp, neg = pair_labels(lab, 2)
    j = pair_offsets(2).index((0, 1))
    assert bgp[0, j].long().tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    assert fgp[0, j].long().tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    assert neg[0, j].long().tolist() == [[0, 0, 0, 0], [1, 0, 1, 0]]
    assert not (bgp & fgp).any() and not (bgp & neg).any() and not (fgp & neg).any()


def test_strided_labels_take_cell_centres():
    lab = torch.arange(36).view(1, 6, 6)
    assert strided_labels(lab, 4).tolist() == [[[14, 255], [255, 255]]]
    assert strided_labels(torch.zeros(2, 50, 46, dtype=torch.long)).shape == (2, *strided_size(50, 46))


def test_affinities_blocked_by_a_wall():
    wall = torch.zeros(1, 5, 7); wall[0, :, 3] = 0.9
    aff = pair_affinities(wall, 3)
    j = pair_offsets(3).index((0, 2))
    assert aff[0, j, 2, 0].item() == pytest.approx(1.0)
    assert aff[0, j, 2, 2].item() == pytest.approx(0.1)
    assert aff[0, j, 2, 5].item() == 0.0                                   # partner outside
    assert aff[0, pair_offsets(3).index((2, -1)), 0, 4].item() == pytest.approx(0.1)


def test_loss_rewards_walls_on_unsure_cells():
    lab = torch.tensor([[[0, 0, 255, 1, 1], [0, 0, 255, 1, 1]]])
    masks = pair_labels(lab, 3)
    assert [int(m.sum()) for m in masks] == [6, 6, 4]
    wall = torch.zeros(1, 2, 5); wall[0, :, 2] = 1.0
    good, _ = affinity_loss(pair_affinities(wall, 3), *masks)
    blank, parts = affinity_loss(pair_affinities(torch.zeros(1, 2, 5), 3), *masks)
    assert good.item() < 1e-3 and blank.item() > 5
    assert parts['neg'].item() == pytest.approx(-math.log(1e-5), abs=1e-2)
    aff = pair_affinities(torch.full((1, 2, 5), 0.5, requires_grad=True), 3)
    assert torch.isfinite(torch.autograd.grad(affinity_loss(aff, *masks)[0], aff)[0]).all()


# ---------------------------------------------------------------- network
def test_boundary_net_shapes_and_freezing(tmp_path):
    torch.manual_seed(0)
    net = BoundaryNet('resnet10t', freeze_backbone=False)
    x = torch.randn(2, 3, 50, 46)
    assert net(x).shape == (2, 1, 13, 12)
    b = net.boundary(x)
    assert b.shape == (2, 13, 12) and (b >= 0).all() and (b <= 1).all()
    frozen = BoundaryNet('resnet10t', freeze_backbone=True).train()
    assert [g['name'] for g in frozen.param_groups(0.1)] == ['head'] and not frozen.encoder.training
    frozen(x).sum().backward()
    assert all(p.grad is None for p in frozen.encoder.parameters()) and frozen.fuse.weight.grad is not None
    f = save_boundary_net(net, tmp_path/'m.pt', meta={'radius': 5})
    m2 = load_boundary_net(f)
    assert m2.meta == {'radius': 5}
    assert torch.equal(m2.boundary(x), net.eval().boundary(x))
    with pytest.raises(WoodInputError, match='not a timm model'): BoundaryNet('resnet5000')
    with pytest.raises(WoodInputError, match="not 'resnet10t' ones"): BoundaryNet('resnet10t', pretrained=PACKAGE_WEIGHTS)



def test_boundary_net_from_a_classifier_checkpoint(tmp_path):
    clf = CAMClassifier('resnet10t', 3, output_stride=16); clf.mean, clf.std = (0.4,) * 3, (0.2,) * 3
    save_classifier(clf, tmp_path/'cls.pt')
    net = BoundaryNet('resnet10t', pretrained=tmp_path/'cls.pt')
    assert all(torch.equal(v, clf.backbone.state_dict()[k]) for k, v in net.encoder.state_dict().items())
    assert (net.mean, net.std) == ((0.4,) * 3, (0.2,) * 3) and net.load_report['loaded'] == len(net.encoder.state_dict())
    with pytest.raises(WoodInputError, match="holds a 'resnet10t' classifier, not a 'resnet18' one"):
        BoundaryNet('resnet18', pretrained=tmp_path/'cls.pt')
    f = save_boundary_net(net, tmp_path/'b.pt')
    with pytest.raises(WoodInputError, match='is a boundary-network checkpoint, not backbone weights'):
        BoundaryNet('resnet10t', pretrained=f)
    assert CHECKPOINT_FORMATS[BOUNDARY_FORMAT] == ('boundary-network checkpoint', 'wood_nb.refine.load_boundary_net')

def test_package_weights_reach_lite0():
    from wood_nb.core import load_weights
    from wood_nb.model import lite0_package_path, lite0_to_timm
    net = make_boundary_net('synthetic')
    sd = lite0_to_timm(load_weights(lite0_package_path()))
    assert torch.equal(net.encoder.blocks[3][0].conv_pw.weight.detach(), sd['blocks.3.0.conv_pw.weight'])
    assert net.mean == (0.5,) * 3 and net.freeze_backbone
    assert BOUNDARY_PRESETS['voc']['radius'] == 10 and boundary_train_config('voc').batch_size == 32


# ---------------------------------------------------------------- transition matrix and random walk
def test_transition_rows_sum_to_one():
    torch.manual_seed(0)
    b = torch.rand(7, 9) * 0.7
    T = transition_matrix(b, radius=4, beta=10)
    assert T.shape == (63, 63) and (T >= 0).all()
    torch.testing.assert_close(T.sum(1), torch.ones(63))
    A = pair_affinities(b[None], 4)[0]
    j = pair_offsets(4).index((2, 1))
    assert (T[0, 2 * 9 + 1] / T[0, 0]).item() == pytest.approx(A[j, 0, 0].item() ** 10, rel=1e-4)
    assert T[0, 4 * 9].item() == 0.0                                        # beyond the radius
    A_beta = T / T.diagonal()[:, None]                                      # self-affinity is 1, so T_ii = 1 / row sum
    torch.testing.assert_close(A_beta, A_beta.T)                             # the affinities behind T are symmetric
    with pytest.raises(WoodInputError, match='over max_pixels'): transition_matrix(torch.zeros(20, 20), max_pixels=100)
    Ts = transition_matrix(b, radius=4, beta=10, sparse=True)
    assert Ts.layout == torch.sparse_csr
    torch.testing.assert_close(Ts.to_dense(), T)
    assert transition_matrix(torch.zeros(20, 20), max_pixels=100, sparse=True).shape == (400, 400)   # no limit when sparse


def test_walk_fills_left_region_but_not_across_the_wall():
    h, w = 12, 16
    wall = torch.zeros(h, w); wall[:, 8] = 1.0
    seed = torch.zeros(1, h, w); seed[0, 4:8, 1:4] = 1.0
    T = transition_matrix(wall, radius=3)
    torch.testing.assert_close(T.sum(1), torch.ones(h * w))
    mask = random_walk(seed, T, keys=[5], boundary=wall)
    np.testing.assert_array_equal(random_walk(seed, transition_matrix(wall, radius=3, sparse=True), keys=[5], boundary=wall), mask)
    assert (seed_from_cams(seed.numpy(), [5], 0.22)[:, :8] == 5).mean() < 0.2
    assert (mask[:, :8] == 5).all() and (mask[:, 8:] == 0).all()
    scores = propagate(seed, T, boundary=wall)[0]
    assert scores[:, 9:].abs().max().item() == 0.0
    assert (random_walk(seed, transition_matrix(torch.zeros(h, w), radius=3), keys=[5]) == 5).all()
    assert (random_walk(seed, T, keys=[5], logt=2, boundary=wall)[:, :8] == 0).any()
    assert random_walk(seed, T, keys=[5], size=(48, 64)).shape == (48, 64)


def test_beta_cuts_weak_walls_and_methods_agree():
    h, w = 12, 16
    weak = torch.zeros(h, w); weak[:, 8] = 0.5
    seed = torch.zeros(1, h, w); seed[0, 4:8, 1:4] = 1.0
    share = {}
    for beta in (1, 10):
        p = propagate(seed, transition_matrix(weak, radius=3, beta=beta))[0]
        share[beta] = (p[:, 9:].sum() / p.sum()).item()
    assert share[10] < 0.1 < share[1]
    T = transition_matrix(weak, radius=3)
    torch.testing.assert_close(propagate(seed, T, method='square'), propagate(seed, T, method='iterate'), atol=1e-5, rtol=1e-4)
    Ts = transition_matrix(weak, radius=3, sparse=True)
    torch.testing.assert_close(propagate(seed, Ts), propagate(seed, T, method='iterate'), atol=1e-5, rtol=1e-4)
    with pytest.raises(WoodInputError, match='needs a dense matrix'): propagate(seed, Ts, method='square')


def test_normalize_class_keeps_a_weak_class():
    h, w = 8, 16
    wall = torch.zeros(h, w); wall[:, 8] = 1.0
    cams = torch.zeros(2, h, w); cams[0, :, :8] = 1.0; cams[1, 3:5, 11:13] = 0.2
    T = transition_matrix(wall, radius=3)
    glob = random_walk(cams, T, keys=[1, 2], boundary=wall, normalize='global')
    cls = random_walk(cams, T, keys=[1, 2], boundary=wall, normalize='class')
    assert (glob == 2).sum() == 0 and (cls[:, 9:] == 2).all()


def test_eval_mask_dir_by_hand(tmp_path):
    from wood_nb.core import save_mask
    root = tmp_path/'voc'
    (root/'ImageSets/Segmentation').mkdir(parents=True); (root/'ImageSets/Segmentation/train.txt').write_text('a\n')
    (root/'classes.txt').write_text('boat\ntrain\n')
    gt = np.zeros((8, 8), np.uint8); gt[2:6, 2:6] = 2; save_mask(gt, root/'SegmentationClass/a.png')
    cue = np.zeros((8, 8), np.uint8); cue[6:] = 2; save_mask(cue, root/'SegmentationCue/a.png')
    pred = gt.copy(); pred[6:, :4] = 2; save_mask(pred, tmp_path/'masks'/'a.png')
    r = eval_mask_dir(root, 'train', tmp_path/'masks')
    assert r['iou']['train'] == pytest.approx(100 * 16 / 24) and r['iou']['background'] == pytest.approx(100 * 40 / 48)
    assert r['iou']['boat'] is None and r['miou'] == pytest.approx((100 * 16 / 24 + 100 * 40 / 48) / 2)
    assert (r['cue_activation'], r['cue_activation_per_class']) == (0.5, {'train': 0.5})


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('refine')
    bench = generate(d/'b', seed=0, cfg=SynthConfig(image_size=48, n_train=16, n_val=4, n_ood=4))
    voc = bench/'voc'; classes = read_classes(voc)
    tc = TrainConfig(epochs=1, batch_size=8, lr=0.01, momentum=0.9, crop=48, long_side=(40, 56), progress=False)
    torch.manual_seed(0)
    cls = CAMClassifier('resnet10t', len(classes), output_stride=8, classes=classes)
    fit(cls, make_loader(VOCDataset(voc, 'train', transform=train_transforms(48, (40, 56), mean=cls.mean, std=cls.std), with_mask=False), tc),
        multilabel_step, tc, device='cpu')
    compute_cams(cls, VOCDataset(voc, 'train', transform=eval_transforms(mean=cls.mean, std=cls.std), with_mask=False), d/'cam', scales=(1.0,), progress=False)
    return d, voc, classes, tc


def test_end_to_end(tiny):
    d, voc, classes, tc = tiny
    kw = dict(backbone='resnet10t', pretrained=None, freeze_backbone=False)
    net = train_boundary(voc, 'train', d/'cam', d/'refine', cfg=tc, radius=3, model_kw=kw, progress=False)
    ids = read_split(voc, 'train')
    assert sorted(p.stem for p in (d/'refine'/'labels').glob('*.png')) == sorted(ids)
    r = load_cam_record(d/'cam'/f'{ids[0]}.npz')
    from wood_nb.cam import normalize_cams
    np.testing.assert_array_equal(load_mask(d/'refine'/'labels'/f'{ids[0]}.png'), confident_labels(normalize_cams(r['high_res']), r['keys']))
    assert (d/'refine'/'model.pt').exists() and (d/'refine'/'checkpoint.pt').exists()
    assert make_pseudo_masks(net, voc, 'train', d/'cam', d/'masks', radius=3, progress=False) == 16
    m = load_mask(d/'masks'/f'{ids[0]}.png')
    assert m.shape == (48, 48) and set(np.unique(m)) <= {0, *r['keys'].tolist()}
    res = eval_mask_dir(voc, 'train', d/'masks')
    assert 0 <= res['miou'] <= 100 and res['images'] == 16 and list(res['iou']) == ['background', *classes]
    assert make_pseudo_masks(net, voc, 'train', d/'cam', d/'masks', radius=3, progress=False) == 0      # resume
    with pytest.raises(WoodInputError, match='delete the folder'):
        make_pseudo_masks(net, voc, 'train', d/'cam', d/'masks', radius=4, progress=False)
    again = train_boundary(voc, 'train', d/'cam', d/'refine')                                            # loaded, not retrained
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(WoodInputError, match='no mask for 4 of the 4'): eval_mask_dir(voc, 'val', d/'masks')


def test_decoded_cache_gives_the_same_items(tiny, tmp_path):
    "Epochs after the first read decoded images from memory (up to `cache_mib`); the items are those of a fresh read."
    d, voc, classes, tc = tiny
    make_confident_labels(voc, 'train', d/'cam', tmp_path/'labels', progress=False)
    tf = train_transforms(48, (40, 56))
    cached, plain = (ConfidentLabelDataset(voc, 'train', tmp_path/'labels', tf, cache_mib=m) for m in (512, 0))
    for epoch in range(2):
        for i in range(len(plain)):
            torch.manual_seed(epoch * 100 + i); a = cached[i]
            torch.manual_seed(epoch * 100 + i); b = plain[i]
            assert torch.equal(a['image'], b['image']) and torch.equal(a['mask'], b['mask'])
    assert len(cached._cache) == len(plain) and not plain._cache
    small = ConfidentLabelDataset(voc, 'train', tmp_path/'labels', tf, cache_mib=3 * (48 * 48 * 4) / 2**20)   # room for three items
    for i in range(len(small)): small[i]
    assert len(small._cache) == 3
    net = BoundaryNet('resnet10t', freeze_backbone=False).train()
    x = torch.randn(1, 3, 32, 32)
    net.boundary(x); assert net.training                      # the mode is restored
    net.eval(); b1 = net.boundary(x); assert not net.training
    torch.testing.assert_close(b1, net.train().boundary(x))   # the same probabilities whatever the mode before


def test_missing_records_and_wrong_grids(tiny, tmp_path):
    d, voc, classes, tc = tiny
    with pytest.raises(WoodInputError, match='file is missing'):
        make_confident_labels(voc, 'val', d/'cam', tmp_path/'labels', progress=False)
    net = BoundaryNet('resnet10t', freeze_backbone=False)
    # records of another stride: the grid check names the record
    import shutil
    from wood_nb.cam import save_cam_record
    bad = tmp_path/'cam'; shutil.copytree(d/'cam', bad)
    i = read_split(voc, 'train')[0]; r = load_cam_record(bad/f'{i}.npz')
    save_cam_record(bad/f'{i}.npz', r['keys'], r['cam'][:, ::2, ::2], r['high_res'])
    with pytest.raises(WoodInputError, match=f'{i}.npz: holds stride-4 CAMs of 6x6'):
        make_pseudo_masks(net, voc, 'train', bad, tmp_path/'masks', radius=3, progress=False)
