"""MS-COCO in, the VOC layout out (`wood_nb.coco.convert_coco`), checked pixel by pixel on a hand-built COCO file; and
`wood run --preset coco` rehearsed end to end on a COCO-shaped set (`wood_nb.synth.generate_coco_rehearsal`): all nine
steps with the preset's networks, crops, CAM scales, walk and test scales; only counts and epochs are shrunk, and the
images are half COCO's size (long side 320), which keeps the test near two minutes on two cores (at 640 px it took
4.5 min, most of it CAMs, predictions and the report's panels of ResNet-50/101 passes)."""
import contextlib, io, json, os, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wood_nb.cli import main
from wood_nb.coco import COCO_CATEGORIES, convert_coco, rle_counts, rle_encode, rle_string, rle_string_counts
from wood_nb.core import MARKER, WoodInputError, load_mask, tree_digest
from wood_nb.data import VOCDataset, mask_label, read_split, validate, validate_ood, xml_names
from wood_nb.config import STEPS

try:
    from pycocotools import mask as M
    HAS_COCO = True
except ImportError:
    HAS_COCO = False
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')   # pycocotools 2.0 under numpy 2
needs_coco = pytest.mark.skipif(not HAS_COCO, reason='pycocotools (the coco extra: pip install -e ".[coco]") is not installed')

H, W = 10, 12
IDS = {'one': 'COCO_val2014_000000000001', 'empty': 'COCO_val2014_000000000002'}
CLASSES = [n for _, n in COCO_CATEGORIES]


def rect(x0, y0, x1, y1):
    "A polygon with integer corners: pycocotools fills columns x0..x1-1 and rows y0..y1-1."
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def region(rows, cols):
    m = np.zeros((H, W), bool); m[rows, cols] = True
    return m


def hand_annotations():
    "Image 1's annotations: polygons, uncompressed and compressed RLE, two crowds, a hidden class, an unknown category, a broken outline."
    bicycle = M.encode(np.asfortranarray(region(slice(0, 2), slice(9, 12)).astype(np.uint8)))   # COCO's own encoder, not the kit's
    bicycle['counts'] = bicycle['counts'].decode()
    anns = [dict(id=1, category_id=3, iscrowd=0, segmentation=rect(4, 3, 6, 5), bbox=[4, 3, 2, 2]),        # car, listed first, small
            dict(id=2, category_id=1, iscrowd=0, segmentation=rect(1, 1, 7, 6), bbox=[1, 1, 6, 5]),        # person, the largest
            dict(id=3, category_id=6, iscrowd=0, segmentation=rect(4, 3, 7, 5), bbox=[4, 3, 3, 2]),        # bus: hidden by car and train
            dict(id=4, category_id=7, iscrowd=0, segmentation=rect(6, 3, 7, 5), bbox=[6, 3, 1, 2]),        # train
            dict(id=5, category_id=90, iscrowd=0, bbox=[8, 7, 3, 2],                                        # toothbrush (id 90 -> 80)
                 segmentation={'size': [H, W], 'counts': rle_counts(region(slice(7, 9), slice(8, 11)))}),   # uncompressed RLE
            dict(id=6, category_id=2, iscrowd=0, segmentation=bicycle, bbox=[9, 0, 3, 2]),                  # compressed RLE
            dict(id=7, category_id=1, iscrowd=1, bbox=[0, 5, 4, 5],                                         # a crowd of persons
                 segmentation={'size': [H, W], 'counts': rle_counts(region(slice(5, 10), slice(0, 4)))}),
            dict(id=8, category_id=4, iscrowd=1, bbox=[5, 8, 2, 2],                                         # motorcycles only as a crowd
                 segmentation={'size': [H, W], 'counts': rle_counts(region(slice(8, 10), slice(5, 7)))}),
            dict(id=9, category_id=999, iscrowd=0, segmentation=rect(0, 8, 2, 10), bbox=[0, 8, 2, 2]),     # outside the categories
            dict(id=10, category_id=5, iscrowd=0, segmentation=[[0, 0, 1, 1]], bbox=[0, 0, 1, 1])]         # two points: not drawable
    return [{**a, 'image_id': 1, 'area': 1.0} for a in anns]


def expected(crowd='ignore'):
    "The mask drawn by hand: crowds under everything, then objects from the largest to the smallest."
    exp = np.zeros((H, W), np.uint8)
    exp[5:10, 0:4] = 255 if crowd == 'ignore' else 1          # crowd of persons
    exp[8:10, 5:7] = 255 if crowd == 'ignore' else 4          # crowd of motorcycles
    exp[1:6, 1:7] = 1                                         # the person lies on the crowd (row 5)
    exp[3:5, 4:6] = 3                                         # the car on the bus ...
    exp[3:5, 6] = 7                                           # ... and the train: the bus is hidden
    exp[7:9, 8:11] = 80                                       # toothbrush
    exp[0:2, 9:12] = 2                                        # bicycle
    return exp


def write_coco(root: Path, anns=None, images=None):
    "A COCO folder with set val2014: two images (the second without annotations) and all 80 categories."
    (root/'annotations').mkdir(parents=True, exist_ok=True); (root/'val2014').mkdir(exist_ok=True)
    images = images or [{'id': i, 'file_name': f'COCO_val2014_{i:012d}.jpg', 'height': H, 'width': W} for i in (1, 2)]
    for im in images:
        if '/' not in im['file_name'] and not im['file_name'].startswith('.'):
            Image.new('RGB', (W, H), (30 * im['id'], 90, 140)).save(root/'val2014'/im['file_name'], quality=95)
    cats = [{'supercategory': 'thing', 'id': i, 'name': n} for i, n in COCO_CATEGORIES]
    d = {'info': {}, 'images': images, 'annotations': hand_annotations() if anns is None else anns, 'categories': cats}
    (root/'annotations'/'instances_val2014.json').write_text(json.dumps(d))
    return root


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path/'coco')


# --- the run-length codes

@needs_coco
def test_rle_encoder_matches_the_coco_api():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random((int(rng.integers(1, 90)), int(rng.integers(1, 90)))) < rng.random()
        ref = M.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle_encode(m)['counts'] == ref['counts'].decode()
        assert rle_string_counts(ref['counts'].decode()) == rle_counts(m)
        assert np.array_equal(M.decode(M.frPyObjects(rle_encode(m, compressed=False), *m.shape)), m)


def test_rle_counts_by_hand():
    m = np.zeros((3, 4), bool); m[1:3, 1] = True; m[0, 3] = True          # column-major: 000 011 000 100
    assert rle_counts(m) == [4, 2, 3, 1, 2]
    assert rle_counts(np.ones((2, 2), bool)) == [0, 4]                      # the first run (of zeros) may be empty
    assert rle_string_counts(rle_string([4, 2, 3, 1, 2])) == [4, 2, 3, 1, 2]


# --- the conversion, pixel by pixel

@needs_coco
def test_hand_built_file_converts_pixel_by_pixel(coco, tmp_path):
    before = tree_digest(coco)
    r = convert_coco(coco, tmp_path/'voc', sets=['val2014'], progress=False)
    voc = tmp_path/'voc'
    with Image.open(voc/'SegmentationClass'/f"{IDS['one']}.png") as im: assert im.mode == 'P' and im.size == (W, H)
    m = load_mask(voc/'SegmentationClass'/f"{IDS['one']}.png")
    np.testing.assert_array_equal(m, expected())
    # labels: from the mask (what the kit trains with) and from the annotations (the XML)
    y = mask_label(m, 80)
    assert [CLASSES[k] for k in np.flatnonzero(y.numpy())] == ['person', 'bicycle', 'car', 'train', 'toothbrush']
    assert sorted(set(xml_names(voc/'Annotations'/f"{IDS['one']}.xml"))) == ['bicycle', 'bus', 'car', 'motorcycle', 'person', 'toothbrush', 'train']
    ds = VOCDataset(voc, 'val')
    assert ds.ids == [IDS['one']] and ds.classes == CLASSES and ds.num_classes == 80
    assert torch.equal(ds.label_of(IDS['one']), y)                                         # the label the classifier trains with
    assert torch.equal(VOCDataset(voc, 'val', label_source='xml').label_of(IDS['one']).nonzero().flatten(),
                       torch.tensor([0, 1, 2, 3, 5, 6, 79]))                                 # from the XML: bus, motorcycle too
    assert (voc/'classes.txt').read_text().splitlines() == CLASSES
    # the report: every kind of problem, with the image it is in
    v = r['splits']['val']
    assert (v['images'], v['listed'], v['converted_now'], v['resumed']) == (2, 1, 1, 0)
    assert v['without_annotations'] == {'count': 1, 'listed': False, 'examples': [IDS['empty']]}
    assert v['unknown_category_ids'] == {'annotations': 1, 'ids': [999], 'examples': [IDS['one']]}
    assert v['undrawable_annotations']['count'] == 1 and v['undrawable_annotations']['examples'][0]['annotation'] == 10
    assert v['hidden_classes'] == {'count': 1, 'examples': [{'image': IDS['one'], 'classes': ['bus']}]}
    assert v['crowd_only_classes'] == {'count': 1, 'examples': [{'image': IDS['one'], 'classes': ['motorcycle']}]}
    assert v['crowd_regions'] == 2 and v['failed'] == []
    assert json.loads((voc/'conversion'/'report.json').read_text())['splits']['val']['listed'] == 1
    assert validate(voc) == []                                               # the kit's own validator accepts the result
    # the images: hard links to COCO's files, the COCO folder untouched
    src, dst = coco/'val2014'/f"{IDS['one']}.jpg", voc/'JPEGImages'/f"{IDS['one']}.jpg"
    assert os.stat(src).st_ino == os.stat(dst).st_ino and v['images_linked'] == 1
    assert tree_digest(coco) == before
    assert not (voc/'JPEGImages'/f"{IDS['empty']}.jpg").exists()


@needs_coco
def test_crowd_as_class_keep_empty_and_copies(coco, tmp_path):
    r = convert_coco(coco, tmp_path/'voc', sets=['val2014'], crowd='class', keep_empty=True, link='copy', progress=False)
    voc = tmp_path/'voc'
    np.testing.assert_array_equal(load_mask(voc/'SegmentationClass'/f"{IDS['one']}.png"), expected('class'))
    np.testing.assert_array_equal(load_mask(voc/'SegmentationClass'/f"{IDS['empty']}.png"), np.zeros((H, W), np.uint8))
    assert read_split(voc, 'val') == [IDS['one'], IDS['empty']]
    assert r['splits']['val']['crowd_only_classes']['count'] == 0                       # painted: the mask holds motorcycle
    src, dst = coco/'val2014'/f"{IDS['one']}.jpg", voc/'JPEGImages'/f"{IDS['one']}.jpg"
    assert os.stat(src).st_ino != os.stat(dst).st_ino and src.read_bytes() == dst.read_bytes()


@needs_coco
def test_unreadable_outlines_and_images_are_reported_not_fatal(tmp_path):
    anns = [dict(id=1, image_id=1, category_id=1, iscrowd=0, segmentation={'size': [H, W], 'counts': [5, 3]}),   # does not cover the image
            dict(id=2, image_id=1, category_id=1, iscrowd=0, segmentation={'size': [H, W], 'counts': '0\x7f'}),  # not an RLE string
            dict(id=3, image_id=1, category_id=3, iscrowd=0, segmentation=rect(0, 0, 2, 2)),
            dict(id=4, image_id=2, category_id=3, iscrowd=0, segmentation=rect(0, 0, 2, 2)),
            dict(id=5, image_id=77, category_id=3, iscrowd=0, segmentation=rect(0, 0, 2, 2))]                     # no such image
    coco = write_coco(tmp_path/'coco', anns)
    (coco/'val2014'/f"{IDS['empty']}.jpg").unlink()                                     # a missing image file
    r = convert_coco(coco, tmp_path/'voc', sets=['val2014'], progress=False)['splits']['val']
    assert r['listed'] == 1 and r['undrawable_annotations']['count'] == 2 and r['orphan_annotations'] == 1
    assert len(r['failed']) == 1 and 'image file is missing' in r['failed'][0]['problem']
    assert json.loads((tmp_path/'voc'/'coco.json').read_text())['complete'] is False     # a rerun retries it


# --- what is refused, before anything is written

def test_missing_extra_names_it(tmp_path, monkeypatch):
    coco = write_coco(tmp_path/'coco', anns=[])                                          # runs without pycocotools too
    monkeypatch.setitem(sys.modules, 'pycocotools', None)                               # as if pycocotools were not installed
    with pytest.raises(WoodInputError, match=r'pip install "wood_nb\[coco\]"') as e:
        convert_coco(coco, tmp_path/'voc', sets=['val2014'], progress=False)
    assert 'pip install -e ".[coco]"' in str(e.value) and not (tmp_path/'voc').exists()
    err = io.StringIO()
    with contextlib.redirect_stderr(err): rc = main(['convert-coco', str(coco), '--out', str(tmp_path/'voc2'), '--sets', 'val2014'])
    assert rc == 2 and 'wood_nb[coco]' in err.getvalue() and not (tmp_path/'voc2').exists()


def test_a_coco_folder_given_to_run_points_at_the_converter(tmp_path):
    coco = write_coco(tmp_path/'coco', anns=[]); (tmp_path/'pool').mkdir()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(['run', '--preset', 'coco', '--root', str(coco), '--pool', str(tmp_path/'pool'), '--out', str(tmp_path/'run'), '--dry-run'])
    assert rc == 2 and f'wood convert-coco {coco}' in err.getvalue() and 'pip install "wood_nb[coco]"' in err.getvalue(), err.getvalue()
    assert not (tmp_path/'run').exists()


@needs_coco
@pytest.mark.parametrize('name', ['../../outside.jpg', 'sub/x.jpg', '/tmp/x.jpg', '..', 'a\tb.jpg', '.hidden.jpg'])
def test_unsafe_file_names_are_refused(tmp_path, name):
    coco = write_coco(tmp_path/'coco', anns=[], images=[{'id': 1, 'file_name': name, 'height': H, 'width': W}])
    with pytest.raises(WoodInputError, match='not a plain file name'):
        convert_coco(coco, tmp_path/'voc', sets=['val2014'], progress=False)
    assert not (tmp_path/'voc').exists() and not (tmp_path/'outside.jpg').exists()


@needs_coco
def test_folders_the_kit_did_not_write_are_refused(coco, tmp_path):
    with pytest.raises(WoodInputError, match='input folder'):                            # inside the COCO folder
        convert_coco(coco, coco/'voc', sets=['val2014'], progress=False)
    mine = tmp_path/'mine'; mine.mkdir(); (mine/'notes.txt').write_text('keep me')
    with pytest.raises(WoodInputError, match='not created by wood_nb'):
        convert_coco(coco, mine, sets=['val2014'], progress=False)
    assert [p.name for p in mine.iterdir()] == ['notes.txt'] and (mine/'notes.txt').read_text() == 'keep me'
    with pytest.raises(WoodInputError, match='not a COCO set name'):
        convert_coco(coco, tmp_path/'voc', sets=['../val2014'], progress=False)
    with pytest.raises(WoodInputError, match='annotation file of set'):
        convert_coco(coco, tmp_path/'voc', sets=['train2014'], progress=False)
    assert not (tmp_path/'voc').exists()


# --- resuming

@needs_coco
def test_an_interrupted_conversion_resumes(coco, tmp_path):
    voc = tmp_path/'voc'
    convert_coco(coco, voc, sets=['val2014'], keep_empty=True, progress=False)
    one, empty = (voc/'SegmentationClass'/f'{IDS[k]}.png' for k in ('one', 'empty'))
    t_one = one.stat().st_mtime_ns
    # a kill while the second image was written: its log line cut, its mask a temporary file
    log = voc/'conversion'/'val.jsonl'
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])['id'] == IDS['empty']
    log.write_text(lines[0] + '\n' + lines[1][:20])
    empty.rename(voc/'SegmentationClass'/f'.{empty.name}.0123456789ab.part')
    r = convert_coco(coco, voc, sets=['val2014'], keep_empty=True, progress=False)
    v = r['splits']['val']
    assert (v['converted_now'], v['resumed'], r['removed_partial']) == (1, 1, 1)
    assert one.stat().st_mtime_ns == t_one                                                # the finished image is not rewritten
    np.testing.assert_array_equal(load_mask(one), expected()); assert load_mask(empty).max() == 0
    assert not list((voc/'SegmentationClass').glob('.*.part')) and read_split(voc, 'val') == sorted(IDS.values())
    assert sorted(json.loads(l)['id'] for l in log.read_text().splitlines()) == sorted(IDS.values())   # the cut line is gone
    assert v['hidden_classes']['count'] == 1                                              # the report covers the resumed image too
    with pytest.raises(WoodInputError, match='converted with other settings'):
        convert_coco(coco, voc, sets=['val2014'], keep_empty=False, progress=False)
    assert json.loads((voc/MARKER).read_text())['kind'] == 'coco'


# --- `wood run --preset coco` on a COCO-shaped rehearsal set

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2')}
COUNTS = dict(n_train=3, n_val=1, n_ood=4, long_side=320)   # 3 images hold the 80 classes, one more only tiny objects, one none (left out)
SHRUNK = ['batch_size=2', 'prototypes.k=2', 'mining.threshold=0.0'] + [   # counts and epochs only: sizes, crops, scales, walk stay the preset's
    f'{sec}.{k}={v}' for sec in ('cls', 'wood_train', 'boundary', 'seg_train') for k, v in (('epochs', 1), ('batch_size', 2), ('progress', 'false'))]


@pytest.fixture(scope='module')
def rehearsal(tmp_path_factory):
    if not HAS_COCO: pytest.skip('pycocotools (the coco extra) is not installed')
    from wood_nb.synth import generate_coco_rehearsal, write_standin_weights
    d = tmp_path_factory.mktemp('coco_rehearsal')
    root, w = generate_coco_rehearsal(d/'data', seed=0, **COUNTS), write_standin_weights(d/'weights')
    conv = subprocess.run([sys.executable, '-m', 'wood_nb.cli', 'convert-coco', str(root/'coco'), '--out', str(d/'voc'), '--no-progress'],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-3000:]
    sets = [x for s in SHRUNK + [f"weights.classifier={w['classifier']}", f"weights.segmenter={w['segmenter']}"] for x in ('--set', s)]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, '-m', 'wood_nb.cli', 'run', '--preset', 'coco', '--root', str(d/'voc'), '--pool', str(root/'ood'),
                        '--out', str(d/'run'), '--device', 'cpu', *sets], capture_output=True, text=True, env=ENV, timeout=3600)
    print(f'wood run --preset coco: {time.perf_counter() - t:.0f} s')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return root, d/'voc', d/'run', conv.stdout


def sizes(voc, ids): return {i: Image.open(voc/'JPEGImages'/f'{i}.jpg').size for i in ids}


def test_rehearsal_converts_with_cocos_structure(rehearsal):
    root, voc, _, printed = rehearsal
    assert 'train (train2014): 4 of 5 images listed' in printed and 'left out' in printed
    assert validate(voc) == [] and validate_ood(root/'ood') == []
    train, val = read_split(voc, 'train'), read_split(voc, 'val')
    assert len(train) == 4 and len(val) == 1 and all(i.startswith('COCO_train2014_') for i in train)
    held = set()
    for i in train: held |= set(np.unique(load_mask(voc/'SegmentationClass'/f'{i}.png')).tolist())
    assert set(range(1, 81)) <= held                                                      # every class has an image (prototypes)
    s = sizes(voc, train + val)
    assert all(240 <= max(x) <= 320 for x in s.values()) and len(set(s.values())) > 1
    report = json.loads((voc/'conversion'/'report.json').read_text())
    assert report['splits']['train']['crowd_regions'] >= 1 and report['classes'] == 80


def test_every_step_finishes(rehearsal):
    _, voc, out, _ = rehearsal
    assert sorted(p.stem for p in (out/'steps').glob('*.json')) == sorted(STEPS)
    cfg = json.loads((out/'config.json').read_text())
    assert (cfg['preset'], cfg['split'], cfg['eval_split']) == ('coco', 'train', 'val')
    assert cfg['cls']['crop'] == 512 and cfg['seg_train']['crop'] == 321 and cfg['boundary']['long_side'] == [320, 960]
    assert cfg['scales'] == [1.0, 0.5, 1.5, 2.0]
    m = json.loads((out/'metrics.json').read_text())
    for b in ('baseline', 'wood'):
        assert {'seed_miou', 'seed_threshold', 'mask_miou', 'seg_miou'} <= set(m[b]), m[b].keys()
        assert len(m[b]['per_class_iou']) == 81 and list(m[b]['per_class_iou'])[:2] == ['background', 'person']   # 80 classes + background
    assert (out/'report.md').is_file()


def test_networks_have_cocos_classes(rehearsal):
    from wood_nb.model import load_classifier
    from wood_nb.segment import load_segmenter
    _, voc, out, _ = rehearsal
    clf = load_classifier(out/'cls'/'model.pt')
    assert clf.num_classes == 80 and clf.classes == CLASSES
    seg = load_segmenter(out/'seg'/'wood'/'model.pt').eval()
    with torch.no_grad(): y = seg(torch.zeros(1, 3, 65, 65))
    assert y.shape[1] == 81                                                               # DeepLab-v2 for 81 classes (background too)


def test_cams_masks_and_predictions_cover_the_splits(rehearsal):
    _, voc, out, _ = rehearsal
    train, val = read_split(voc, 'train'), read_split(voc, 'val')
    s = sizes(voc, train + val)
    for n in ('baseline', 'wood'):
        assert all((out/'cam'/n/f'{i}.npz').is_file() for i in train)
        for i in train:
            with Image.open(out/'refine'/n/'masks'/f'{i}.png') as im: assert im.size == s[i], (n, i, im.size, s[i])
        for i in val:
            with Image.open(out/'seg'/n/'pred'/f'{i}.png') as im: assert im.size == s[i], (n, i, im.size, s[i])
