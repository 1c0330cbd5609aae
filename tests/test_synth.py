"The synthetic benchmark: determinism, layout, statistics and knob validation."
import csv, json, xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wood_nb.core import WoodInputError, load_mask, tree_digest
from wood_nb.synth import SynthConfig, generate

SMALL = SynthConfig(image_size=64, n_train=40, n_val=10, n_ood=30)


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('b')/'bench', seed=7, cfg=SMALL)


def test_same_seed_same_bytes_any_workers(bench, tmp_path):
    again = generate(tmp_path/'again', seed=7, cfg=SMALL, workers=2)
    assert tree_digest(again) == tree_digest(bench)
    files = sorted(p.relative_to(bench) for p in bench.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob('*') if p.is_file())


def test_other_seed_other_bytes(bench, tmp_path):
    other = generate(tmp_path/'other', seed=8, cfg=SMALL)
    a = (bench/'voc/JPEGImages/train_00000.jpg').read_bytes()
    assert a != (other/'voc/JPEGImages/train_00000.jpg').read_bytes()
    assert tree_digest(other) != tree_digest(bench)


def test_voc_layout_and_label_agreement(bench):
    voc = bench/'voc'
    classes = (voc/'classes.txt').read_text().split()
    assert classes == list(SMALL.classes)
    ids = (voc/'ImageSets/Segmentation/train.txt').read_text().split()
    val = (voc/'ImageSets/Segmentation/val.txt').read_text().split()
    assert len(ids) == 40 and len(val) == 10
    assert (voc/'ImageSets/Segmentation/trainval.txt').read_text().split() == ids + val
    for i in ids + val:
        img = Image.open(voc/'JPEGImages'/f'{i}.jpg')
        m, c = load_mask(voc/'SegmentationClass'/f'{i}.png'), load_mask(voc/'SegmentationCue'/f'{i}.png')
        assert img.size == (64, 64) and m.shape == c.shape == (64, 64)
        assert set(np.unique(m)) <= set(range(7)) | {255}
        assert set(np.unique(c)) <= set(range(7))
        from_mask = {classes[k - 1] for k in np.unique(m) if 0 < k < 255}
        from_xml = {o.findtext('name') for o in ET.parse(voc/'Annotations'/f'{i}.xml').getroot().iter('object')}
        assert from_mask and from_mask == from_xml, i
        assert not ((c > 0) & (m > 0) & (m < 255)).any()      # objects hide the cue under them


def test_ood_pool(bench):
    ood = bench/'ood'
    paths = (ood/'ood_list.txt').read_text().split()
    meta = list(csv.DictReader(open(ood/'ood_meta.csv')))
    assert [r['path'] for r in meta] == paths and len(paths) == 30
    kinds = [r['kind'] for r in meta]
    assert (kinds.count('hard'), kinds.count('easy'), kinds.count('contaminated')) == (18, 9, 3)
    for r in meta:
        assert (ood/r['path']).exists()
        assert (r['contains_foreground'] == '1') == bool(r['objects']) == (r['kind'] == 'contaminated')
        if r['kind'] == 'hard': assert r['cues']
        if r['kind'] == 'easy': assert not r['cues']
    info = json.loads((bench/'synth.json').read_text())
    assert info['seed'] == 7 and info['config']['n_ood'] == 30 and info['counts']['ood_hard'] == 18


def test_cue_statistics_follow_the_knobs(tmp_path):
    "With cue_rate 1 the cue of a lone class always shows (bands of several classes may overlap); with 0 none does."
    for rate, expect in ((1.0, 1.0), (0.0, 0.0)):
        root = generate(tmp_path/f'r{rate}', seed=1, cfg=SynthConfig(image_size=48, n_train=30, n_val=1, n_ood=1,
                                                                    cue_rate=rate, stray_cue_rate=0.0))
        hits = []
        for i in (root/'voc/ImageSets/Segmentation/train.txt').read_text().split():
            m, c = load_mask(root/'voc/SegmentationClass'/f'{i}.png'), load_mask(root/'voc/SegmentationCue'/f'{i}.png')
            present = [k for k in np.unique(m) if 0 < k < 255]
            if len(present) == 1: hits.append(present[0] in np.unique(c))
            if rate == 0: assert not c.any()
        assert len(hits) > 10 and np.mean(hits) == expect


def test_cues_are_larger_than_objects(bench):
    "The cue must be the easier signal: on average it covers more pixels than the object it goes with."
    voc = bench/'voc'; cue_px, obj_px = [], []
    for i in (voc/'ImageSets/Segmentation/train.txt').read_text().split():
        m, c = load_mask(voc/'SegmentationClass'/f'{i}.png'), load_mask(voc/'SegmentationCue'/f'{i}.png')
        for k in np.unique(c[c > 0]):
            if (m == k).any(): cue_px.append((c == k).sum()); obj_px.append((m == k).sum())
    assert len(cue_px) > 10 and np.mean(cue_px) > 1.5*np.mean(obj_px)


def test_refuses_existing_output_and_bad_knobs(bench, tmp_path):
    with pytest.raises(WoodInputError, match='not empty'): generate(bench, seed=7, cfg=SMALL)
    with pytest.raises(WoodInputError, match='SynthConfig.object_size'): SynthConfig(object_size=(0.6, 0.3))
    with pytest.raises(WoodInputError, match='unknown classes'): SynthConfig(classes=('boat', 'dog'))
    assert not any(p.name.endswith('.part') for p in bench.parent.iterdir())


STUDY = SynthConfig(image_size=48, n_train=12, n_val=2, n_ood=12, ood_mix=(1.0, 0.0, 0.0), cue_rate=1.0,
                    cue_kinds=3, cue_variants=3, ood_cue_scale=0.4)


def test_study_knobs_are_deterministic_and_change_the_images(tmp_path):
    "The prototypes study's knobs (cue_kinds, cue_variants, ood_cue_scale): same seed same bytes, and images differ from the default's."
    a, b = generate(tmp_path/'a', seed=5, cfg=STUDY), generate(tmp_path/'b', seed=5, cfg=STUDY, workers=2)
    assert tree_digest(a) == tree_digest(b)
    plain = generate(tmp_path/'plain', seed=5, cfg=SynthConfig(**{**STUDY.__dict__, 'cue_kinds': 0, 'cue_variants': 1, 'ood_cue_scale': 1.0}))
    ood = sorted((a/'ood/images').iterdir())
    assert all(p.read_bytes() != (plain/'ood/images'/p.name).read_bytes() for p in ood)
    # cue_variants recolours the cue pixels only: objects, masks and cue regions stay those of one appearance
    recol = generate(tmp_path/'recol', seed=5, cfg=SynthConfig(**{**STUDY.__dict__, 'cue_kinds': 0, 'ood_cue_scale': 1.0}))
    for sub in ('SegmentationClass', 'SegmentationCue'):
        assert all((recol/'voc'/sub/p.name).read_bytes() == p.read_bytes() for p in (plain/'voc'/sub).iterdir())
    ids = (plain/'voc/ImageSets/Segmentation/train.txt').read_text().split()
    assert sum((recol/'voc/JPEGImages'/f'{i}.jpg').read_bytes() != (plain/'voc/JPEGImages'/f'{i}.jpg').read_bytes() for i in ids) >= len(ids)//2
    info = json.loads((a/'synth.json').read_text())['config']
    assert (info['cue_kinds'], info['cue_variants'], info['ood_cue_scale']) == (3, 3, 0.4)


def test_shared_cue_kinds_draw_another_class_texture(tmp_path):
    "With cue_kinds=3, sheep (class 5) draws train's rails (kind 5 mod 3): its cue pixels stop being green."
    green = {}
    for n in (0, 3):
        root = generate(tmp_path/f'k{n}', seed=2, cfg=SynthConfig(image_size=48, n_train=40, n_val=1, n_ood=1, cue_rate=1.0,
                                                                   stray_cue_rate=0.0, cue_kinds=n))
        share = []
        for i in (root/'voc/ImageSets/Segmentation/train.txt').read_text().split():
            img = np.asarray(Image.open(root/'voc/JPEGImages'/f'{i}.jpg'), np.float32)
            c = load_mask(root/'voc/SegmentationCue'/f'{i}.png')
            if (c == 5).sum() > 50: share.append(img[c == 5].mean(0).argmax() == 1)
        assert len(share) >= 3; green[n] = np.mean(share)
    assert green[0] == 1.0 and green[3] == 0.0


def test_ood_cue_scale_makes_hard_ood_cues_partial(tmp_path):
    "Hard OoD candidates' bands are `ood_cue_scale` as deep: fewer pixels far from the image's edge look like their cue."
    from wood_nb.synth import _ood_config, render_scene
    full, part = SynthConfig(image_size=64), SynthConfig(image_size=64, ood_cue_scale=0.3)
    area = lambda cfg: np.mean([(render_scene(np.random.default_rng(s), _ood_config(cfg, 'hard'), [], [k])['cue'] > 0).mean()
                                for s in range(6) for k in (1, 2)])
    assert area(part) < 0.5*area(full)
    assert _ood_config(part, 'in') == part and _ood_config(part, 'contaminated') == part   # only hard candidates change
    with pytest.raises(WoodInputError, match='SynthConfig.ood_cue_scale'): SynthConfig(ood_cue_scale=1.5)
