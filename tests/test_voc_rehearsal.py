"""`wood run --preset voc` rehearsed end to end on a VOC-shaped set (`wood_nb.synth.generate_voc_rehearsal`): all nine steps at
VOC's image sizes, crops, scales, walk and networks (ResNet-50, ResNet-101 from stand-in ImageNet files), only counts and epochs shrunk."""
import json, os, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from PIL import Image

from wood_nb.core import VOC_CLASSES, load_mask
from wood_nb.data import read_split, validate, validate_ood, xml_names
from wood_nb.model import make_classifier
from wood_nb.config import STEPS
from wood_nb.refine import make_boundary_net
from wood_nb.segment import make_segmenter
from wood_nb.synth import generate_voc_rehearsal, write_standin_weights

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '2'}
COUNTS = dict(n_train_aug=6, n_train=3, n_val=2, n_ood=8)      # 3 of the 6 train_aug images have masks (train), 3 only XML
SHRUNK = ['batch_size=2', 'prototypes.k=2', 'mining.threshold=0.0'] + [   # counts and epochs only: sizes, crops, scales, walk stay the preset's
    f'{sec}.{k}={v}' for sec in ('cls', 'wood_train', 'boundary', 'seg_train') for k, v in (('epochs', 1), ('batch_size', 2), ('progress', 'false'))]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('voc_rehearsal')
    return generate_voc_rehearsal(d/'data', seed=0, **COUNTS), write_standin_weights(d/'weights')


@pytest.fixture(scope='module')
def run(data, tmp_path_factory):
    root, w = data
    out = tmp_path_factory.mktemp('voc_rehearsal_run')/'run'
    sets = [x for s in SHRUNK + [f"weights.classifier={w['classifier']}", f"weights.segmenter={w['segmenter']}"] for x in ('--set', s)]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, '-m', 'wood_nb.cli', 'run', '--preset', 'voc', '--root', str(root/'voc'), '--pool', str(root/'ood'),
                        '--out', str(out), '--device', 'cpu', *sets], capture_output=True, text=True, env=ENV, timeout=3600)
    print(f'wood run --preset voc: {time.perf_counter() - t:.0f} s')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return root/'voc', out


def sizes(voc:Path, ids)->dict: return {i: Image.open(voc/'JPEGImages'/f'{i}.jpg').size for i in ids}


def test_rehearsal_set_has_vocs_structure(data):
    root, _ = data
    voc = root/'voc'
    assert not (voc/'classes.txt').exists() and validate(voc) == [] and validate_ood(root/'ood') == []
    train, val, aug = (read_split(voc, s) for s in ('train', 'val', 'train_aug'))
    assert len(aug) == 6 and set(train) < set(aug) and not set(val) & set(aug)
    sbd = set((root/'sbd/train.txt').read_text().split()) | set((root/'sbd/val.txt').read_text().split())
    assert aug == sorted((set(train) | sbd) - set(val)) and sbd & set(val)               # train_aug = (train | SBD) - val
    s = sizes(voc, aug + val)
    assert all(max(x) <= 500 and min(x) >= 250 for x in s.values()) and len(set(s.values())) > 3
    assert any(w > h for w, h in s.values()) and any(h > w for w, h in s.values())
    assert all(not (voc/'SegmentationClass'/f'{i}.png').exists() for i in sbd - set(train) - set(val))
    assert {n for i in aug for n in xml_names(voc/'Annotations'/f'{i}.xml')} == set(VOC_CLASSES)
    assert all((load_mask(voc/'SegmentationClass'/f'{i}.png') == 255).any() for i in train + val)


def test_standin_weights_load_like_torchvisions(data):
    _, w = data
    sd = torch.load(w['segmenter'], weights_only=True)
    assert sd['fc.weight'].shape == (1000, 2048) and not any(k.endswith('num_batches_tracked') for k in sd)
    assert w['boundary'] == w['classifier'] and w['classifier'].name == 'resnet50.pth'
    clf = make_classifier('voc', 20, pretrained=str(w['classifier']))
    assert clf.load_report['dropped'] == ['fc.weight', 'fc.bias']
    assert make_boundary_net('voc', pretrained=str(w['boundary'])).load_report['loaded'] > 0
    seg = make_segmenter('voc', 20, pretrained=str(w['segmenter']))
    assert torch.equal(seg.backbone.layer4[0].conv2.weight, sd['layer4.0.conv2.weight'])


def test_every_step_finishes(run):
    voc, out = run
    assert sorted(p.stem for p in (out/'steps').glob('*.json')) == sorted(STEPS)
    cfg = json.loads((out/'config.json').read_text())
    assert (cfg['split'], cfg['score_split'], cfg['eval_split']) == ('train_aug', 'train', 'val')
    assert cfg['cls']['crop'] == 512 and cfg['seg_train']['crop'] == 321 and cfg['scales'] == [1.0, 0.5, 1.5, 2.0]
    m = json.loads((out/'metrics.json').read_text())
    for b in ('baseline', 'wood'):
        assert {'seed_miou', 'seed_threshold', 'mask_miou', 'seg_miou'} <= set(m[b]), m[b].keys()
    for n in ('baseline', 'wood'):                                  # seeds and masks scored on train (inside train_aug)
        assert json.loads((out/'eval'/f'{n}.json').read_text())['score_split'] == 'train'
        assert json.loads((out/'refine'/n/'masks.json').read_text())['score_split'] == 'train'
    assert (out/'report.md').is_file()


def test_cams_and_pseudo_masks_cover_train_aug(run):
    voc, out = run
    aug = read_split(voc, 'train_aug')
    s = sizes(voc, aug)
    for n in ('baseline', 'wood'):
        assert all((out/'cam'/n/f'{i}.npz').is_file() for i in aug)
        for i in aug:
            with Image.open(out/'refine'/n/'masks'/f'{i}.png') as im: assert im.size == s[i], (n, i, im.size, s[i])


def test_predictions_cover_val(run):
    voc, out = run
    val = read_split(voc, 'val')
    s = sizes(voc, val)
    for n in ('baseline', 'wood'):
        for i in val:
            with Image.open(out/'seg'/n/'pred'/f'{i}.png') as im: assert im.size == s[i], (n, i, im.size, s[i])


# --- the random walk at VOC's size: memory bounded by the sparse transition matrix
WALK_CHILD = r'''
import json, resource, sys, time, numpy as np, torch
from wood_nb.refine import BOUNDARY_PRESETS, pair_offsets, random_walk, transition_matrix
h, w = 94, 125                                             # a 375x500 image at stride 4
g = torch.Generator().manual_seed(0)
b = torch.rand(h, w, generator=g) * 0.2; b[:, 60:62] = 0.95        # a wall across the image
cams = torch.rand(3, h, w, generator=g)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r, logt = BOUNDARY_PRESETS['voc']['walk']['radius'], BOUNDARY_PRESETS['voc']['walk']['logt']
t = time.perf_counter()
T = transition_matrix(b, r, 10.0, sparse=True)
mask = random_walk(cams / cams.amax((1, 2), keepdim=True), T, keys=[1, 5, 9], logt=logt, size=(375, 500))
print(json.dumps({'nnz': int(T.values().numel()), 'n': h * w, 'pairs': len(pair_offsets(r)), 'shape': list(mask.shape),
                  'classes': sorted(int(v) for v in np.unique(mask)), 'seconds': time.perf_counter() - t,
                  'rss_growth_mib': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
'''


def test_random_walk_memory_at_voc_size():
    "The voc walk (radius and 2^logt steps of the preset) on a 375x500 image: the sparse matrix holds at most n * (2P + 1) entries."
    r = subprocess.run([sys.executable, '-c', WALK_CHILD], capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '2'}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m['shape'] == [375, 500] and set(m['classes']) <= {0, 1, 5, 9}
    assert m['nnz'] <= m['n'] * (2 * m['pairs'] + 1)                       # self-loop + both directions of every pair
    assert m['rss_growth_mib'] < 512, m                                     # a dense matrix alone would take 4 n^2 bytes = 527 MiB
