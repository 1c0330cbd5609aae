"The inspection widgets driven from code: set values, click buttons, read back the state and the rendered arrays."
from pathlib import Path

import numpy as np
import pytest
import torch

from wood_nb.cam import save_cam_record
from wood_nb.core import load_mask, read_classes
from wood_nb.data import read_split
from wood_nb.inspect import (CamExplorer, CamExplorerView, CueInspector, CueInspectorView, Curator, CuratorView, LRU,
                             from_png, panels, to_png)
from wood_nb.mining import curate, rank_candidates, read_curated_list, score_pool
from wood_nb.model import CAMClassifier
from wood_nb.prototypes import compute_prototypes
from wood_nb.synth import SynthConfig, generate


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('inspect')
    bench = generate(d/'b', seed=2, cfg=SynthConfig(image_size=48, n_train=16, n_val=2, n_ood=24))
    voc = bench/'voc'
    for name, w in (('cued', 0.6), ('clean', 0.0)):                     # toy CAMs: ground truth (+ the cue)
        for i in read_split(voc, 'train'):
            m, cue = load_mask(voc/'SegmentationClass'/f'{i}.png'), load_mask(voc/'SegmentationCue'/f'{i}.png')
            keys = np.array([k for k in np.unique(m) if 0 < k < 255])
            hr = np.stack([(m == k) + w * (cue == k) for k in keys]).astype(np.float32)
            save_cam_record(d/'cam'/name/f'{i}.npz', keys, hr[:, ::4, ::4], hr)
    torch.manual_seed(0)
    classes = read_classes(voc)
    net = CAMClassifier('resnet10t', len(classes), output_stride=16, classes=classes).eval()
    return d, bench, voc, classes, net


def cue_index(ex):
    return next(j for j, i in enumerate(ex.ids)
                if set(np.unique(load_mask(ex.root/'SegmentationCue'/f'{i}.png'))) & set(ex.record('clean', i)['keys'].tolist()))


def test_panels_png_and_lru():
    p = panels([np.zeros((10, 20, 3), np.uint8)], ['x'], height=10)
    assert p.shape == (24, 20, 3) and np.array_equal(from_png(to_png(p)), p)
    c = LRU(1); c.get_or('a', lambda: 1); c.get_or('b', lambda: 2)
    assert list(c) == ['b']


def test_explorer_threshold_slider_changes_seed_and_picture(tiny):
    d, bench, voc, classes, net = tiny
    v = CamExplorerView(CamExplorer(voc, {'clean': d/'cam'/'clean', 'cued': d/'cam'/'cued'}, threshold=0.3))
    v.index.value = cue_index(v.state)
    s = v.state
    assert s.seed_miou('clean') > s.seed_miou('cued')                      # the cue spills into the seed at 0.3
    pic = from_png(v.image.value)
    v.threshold.value = 0.8
    assert s.threshold == 0.8 and s.seed_miou('clean') == s.seed_miou('cued')
    assert not np.array_equal(from_png(v.image.value), pic) and np.array_equal(from_png(v.image.value), s.render())
    v.alpha.value = 0.0
    assert s.alpha == 0.0
    n = len(s.ids); i = s.index
    v.next_btn.click(); assert s.index == v.index.value == (i + 1) % n
    v.prev_btn.click(); v.prev_btn.click(); assert s.index == (i - 1) % n


def test_explorer_errors(tiny):
    d, bench, voc, classes, net = tiny
    with pytest.raises(ValueError, match='does not exist'): CamExplorer(voc, {'x': d/'missing'})
    with pytest.raises(ValueError, match='no image with a CAM record'): CamExplorer(voc, {'clean': d/'cam'/'clean'}, split='val')
    with pytest.raises(ValueError, match='RUN/cam'): CamExplorer.from_run(d/'norun')


def test_cue_inspector_clusters_and_similarity(tiny):
    d, bench, voc, classes, net = tiny
    pf = compute_prototypes(net, voc, 'train', bench/'ood', 'ood_list.txt', d/'protos', k=3, iters=3)
    v = CueInspectorView(CueInspector(net, pf, voc, bench/'ood', n_near=3, n_exemplars=2, height=48))
    s = v.state
    near = s.nearest()
    assert [j for j, _, _ in near] == sorted(range(3), key=lambda j: float(s.analysis()['dist'][j]))
    sim = s.similarity(near[0][0])
    assert sim.shape == s.image().shape[:2] and 0 <= sim.min() <= sim.max() <= 1
    # the map is the cosine similarity of the pixel features to the centre, min-max scaled: check it at feature resolution
    fmap = s.analysis()['fmap']; q = s.centres[near[0][0]]
    cos = torch.nn.functional.cosine_similarity(fmap, q[:, None, None], dim=0)
    scaled = (cos - cos.min()) / (cos.max() - cos.min())
    up = torch.nn.functional.interpolate(scaled[None, None], size=sim.shape, mode='bilinear', align_corners=False)[0, 0].numpy()
    assert np.abs(up - sim).max() < 1e-5 and sim.max() > 0.9 and sim.min() < 0.1
    pic = from_png(v.image.value)
    v.cluster.value = near[1][0]
    assert s.cluster == near[1][0] and not np.array_equal(from_png(v.image.value), pic)
    assert all(s.assign[s.paths.index(p)] == near[1][0] for p in s.exemplars())


def test_curator_toggle_save_and_mining_list(tiny, tmp_path):
    d, bench, voc, classes, net = tiny
    ranked = rank_candidates(score_pool(net, bench/'ood'), threshold=None, top_k=9)
    v = CuratorView(Curator(bench/'ood', ranked, classes, model=net, page_size=4, thumb=32), tmp_path/'curated.txt')
    img, btn = v.tiles[1][0], v.tiles[1][1]
    path = btn._path; pic = from_png(img.value)
    btn.value = True                                                       # "holds an object"
    assert v.state.keep[path] is False and btn.description == 'object' and not np.array_equal(from_png(img.value), pic)
    v.save_btn.click()
    on_disk = read_curated_list(tmp_path/'curated.txt')
    assert on_disk == [c.path for c in ranked if c.path != path]
    assert [c.path for c in curate(ranked, 'list', bench/'ood', tmp_path/'curated.txt')] == on_disk
    v.next_btn.click(); v.next_btn.click()
    assert v.state.page == 2 and sum(b._path is not None for _, b, _ in v.tiles) == 1   # 9 candidates: 4 + 4 + 1
    assert v.tiles[1][2].layout.visibility == 'hidden'
    v.next_btn.click(); assert v.state.page == 0 and v.tiles[1][1].value is True      # wraps; the decision is kept
    btn.value = False; assert v.state.keep[path] is True
    resumed = Curator(bench/'ood', ranked, classes, start=tmp_path/'curated.txt')
    assert resumed.keep[path] is False and len(resumed.kept()) == 8
    with pytest.raises(ValueError, match='holds no candidate'): Curator(bench/'ood', [], classes)
