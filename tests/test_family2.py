"The second benchmark family (benchmarks/family2.py): layout accepted by the validators, determinism, cue masks, pool kinds."
import csv, importlib.util, sys, xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wood_nb.core import load_mask, tree_digest
from wood_nb.data import VOCDataset, validate, validate_ood

_spec = importlib.util.spec_from_file_location('family2', Path(__file__).resolve().parents[1]/'benchmarks'/'family2.py')
family2 = sys.modules.setdefault('family2', importlib.util.module_from_spec(_spec))   # registered first: its dataclass looks itself up
_spec.loader.exec_module(family2)

TINY = family2.Family2Config(image_size=48, n_train=16, n_val=8, n_ood=16)


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return family2.generate(tmp_path_factory.mktemp('f2')/'bench', seed=3, cfg=TINY)


def test_validators_accept_it(bench):
    assert validate(bench/'voc') == []
    assert validate_ood(bench/'ood') == []
    ds = VOCDataset(bench/'voc', 'train', with_cue=True)
    s = ds[0]
    assert ds.classes == list(family2.CLASSES) and s['image'].shape == (3, 48, 48) and s['cue'].shape == (48, 48)
    assert len((bench/'voc/ImageSets/Segmentation/train.txt').read_text().split()) == 16
    assert len((bench/'voc/ImageSets/Segmentation/val.txt').read_text().split()) == 8


def test_same_seed_same_bytes_other_seed_other_bytes(bench, tmp_path):
    assert tree_digest(family2.generate(tmp_path/'again', seed=3, cfg=TINY)) == tree_digest(bench)
    assert tree_digest(family2.generate(tmp_path/'other', seed=4, cfg=TINY)) != tree_digest(bench)


def test_masks_cues_and_xml_agree(bench):
    voc, C = bench/'voc', len(family2.CLASSES)
    for i in (voc/'ImageSets/Segmentation/train.txt').read_text().split() + (voc/'ImageSets/Segmentation/val.txt').read_text().split():
        m, q = load_mask(voc/'SegmentationClass'/f'{i}.png'), load_mask(voc/'SegmentationCue'/f'{i}.png')
        assert m.shape == q.shape == (48, 48)
        assert set(np.unique(m).tolist()) <= set(range(C + 1)) | {255} and set(np.unique(q).tolist()) <= set(range(C + 1))
        assert not (q[m > 0] > 0).any()                    # a cue pixel is never a class (or ignore) pixel
        names = {o.findtext('name') for o in ET.parse(voc/'Annotations'/f'{i}.xml').getroot().iter('object')}
        assert names == {family2.CLASSES[k - 1] for k in np.unique(m) if 0 < k < 255}


def test_cues_are_drawn_where_the_mask_says():
    "Render scenes directly: each requested cue marks pixels (not the class's), and those pixels look like the cue."
    S = 64
    for k, cls in enumerate(family2.CLASSES, 1):
        sc = family2.render(np.random.default_rng([9, k]), S, [k], [k], decoy=False, n_clutter=0)
        on = sc['cue'] == k
        assert on.sum() >= 12, cls
        assert not (on & (sc['mask'] == k)).any()
        assert (sc['mask'] == k).sum() >= 40, cls               # the object stays visible
        bare = family2.render(np.random.default_rng([9, k]), S, [k], [], decoy=False, n_clutter=0)
        assert not bare['cue'].any()
        diff = np.abs(sc['image'].astype(int) - bare['image'].astype(int)).sum(-1)
        assert np.median(diff[on]) > 40, cls                  # the cue changes the pixels it claims


def test_co_occurrence_rates_are_as_designed(tmp_path):
    cfg = family2.Family2Config(image_size=32, n_train=300, n_val=300, n_ood=1)
    tr = [family2.content(np.random.default_rng([1, i]), cfg, 'train') for i in range(3000)]
    va = [family2.content(np.random.default_rng([2, i]), cfg, 'val') for i in range(3000)]
    rate = lambda xs: np.mean([k in c for o, c in xs for k in o])
    assert 0.82 < rate(tr) < 0.88 and 0.45 < rate(va) < 0.55
    assert 0.26 < np.mean([len(o) == 2 for o, _ in tr]) < 0.34


def test_pool_kinds(bench):
    ood = bench/'ood'
    rows = list(csv.DictReader(open(ood/'ood_meta.csv')))
    assert [r['path'] for r in rows] == (ood/'ood_list.txt').read_text().split()
    kinds = [r['kind'] for r in rows]
    assert kinds.count('hard') == 11 and kinds.count('easy') == 4 and kinds.count('contaminated') == 1   # floor of the shares, the rest hard
    for r in rows:
        assert r['contains_foreground'] == ('1' if r['kind'] == 'contaminated' else '0')
        assert bool(r['cues']) == (r['kind'] == 'hard') and bool(r['objects']) == (r['kind'] == 'contaminated')
        assert Image.open(ood/r['path']).size == (48, 48)


def test_hard_pool_images_hold_the_cue_and_no_class():
    "The pool's renderer: a hard image has its cue pixels and no class pixel."
    cfg = family2.Family2Config(image_size=48)
    for i in range(12):
        r = np.random.default_rng([5, i])
        objects, cues = family2.content(r, cfg, 'hard')
        sc = family2.render(r, 48, objects, cues, decoy=i % 2 == 0, n_clutter=2)
        assert objects == [] and 1 <= len(cues) <= 2
        assert not (sc['mask'] > 0).any()
        assert any((sc['cue'] == k).sum() >= 8 for k in cues)
