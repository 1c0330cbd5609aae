"Safety of wood_nb.data with the user's files: ids that are plain file names, no symlink out of a root, classes that agree with the data."
import os, shutil
from pathlib import Path

import numpy as np
import pytest

from wood_nb.cli import main
from wood_nb.core import WoodInputError, save_mask
from wood_nb.data import OoDDataset, VOCDataset, check_id, read_split, validate, validate_ood
from test_data import CLASSES, XML_ONLY, make_pool, make_tiny_voc, msgs, only, voc_xml

BAD_IDS = ['../../escape/x', 'a/b', '/etc/passwd', 'a\\b', '..', '.', 'x\x00y', 'x\x07y']
ID_FIX = 'file name without folder or extension, e.g. 2007_000032'


@pytest.fixture
def voc(tmp_path): return make_tiny_voc(tmp_path/'voc')


@pytest.fixture
def pool(tmp_path): return make_pool(tmp_path/'ood')


def fix_of(m): return m.split('Fix: ')[1]


# ---------------------------------------------------------------- 1. ids confined

def test_split_ids_must_be_plain_file_names(voc):
    (voc/'ImageSets/Segmentation/train.txt').write_text('2007_000001\n' + '\n'.join(BAD_IDS) + '\n..foo\n')
    probs = validate(voc, splits=['train'])
    for n, bad in enumerate(BAD_IDS, 2):
        m = only(probs, 'train.txt', f'line {n}: {bad!r}', 'not a plain file name')
        assert ID_FIX in fix_of(m), m
    only(probs, 'train.txt', "line 10 names id '..foo'")           # a stem that starts with '..' is a name like any other
    assert len(probs) == len(BAD_IDS) + 1, msgs(probs)
    with pytest.raises(WoodInputError, match=r"train.txt: line 2: '\.\./\.\./escape/x' is not a plain file name.*e.g. 2007_000032"):
        read_split(voc, 'train')
    with pytest.raises(WoodInputError, match='not a plain file name'): VOCDataset(voc, 'train')


def test_check_id_and_hand_set_ids(voc):
    assert check_id('2007_000032', 'w') == '2007_000032' and check_id('..foo', 'w') == '..foo'
    for bad in BAD_IDS + ['']:
        with pytest.raises(WoodInputError) as e: check_id(bad, 'ids.txt')
        assert str(e.value).startswith('ids.txt: ') and ID_FIX in e.value.fix, str(e.value)
    ds = VOCDataset(voc, 'train')
    ds.ids = ['2007_000001', '../../escape/x']
    assert ds[0]['id'] == '2007_000001'
    for f in (ds.image_path, ds.mask_path, ds.cue_path, ds.xml_path):
        with pytest.raises(WoodInputError, match=r"'\.\./\.\./escape/x' is not a plain file name"): f('../../escape/x')
    with pytest.raises(WoodInputError, match='not a plain file name'): ds[1]
    with pytest.raises(WoodInputError, match='not a plain file name'): ds.label_of('../../escape/x')


def test_cli_validate_reports_escaping_id(voc, capsys):
    (voc/'ImageSets/Segmentation/train.txt').write_text('2007_000001\n../../escape/x\n')
    assert main(['validate', str(voc)]) != 0
    out = capsys.readouterr().out
    assert "train.txt: line 2: '../../escape/x' is not a plain file name" in out and ID_FIX in out, out


def test_cli_cam_writes_nothing_outside_out(voc, tmp_path, capsys):
    from wood_nb.model import CAMClassifier, save_classifier
    esc = tmp_path/'escape'; esc.mkdir()                         # what voc/JPEGImages/../../escape/x.jpg points at
    shutil.copy(voc/'JPEGImages/2007_000001.jpg', esc/'x.jpg')
    (esc/'x.xml').write_text(voc_xml(['cat']))
    (voc/'ImageSets/Segmentation/train.txt').write_text('2007_000001\n../../escape/x\n')
    w = save_classifier(CAMClassifier('test_resnet', 3, output_stride=8, classes=CLASSES), tmp_path/'model.pt')
    out = tmp_path/'o1'/'o2'/'cams'
    rc = main(['cam', str(voc), '--weights', str(w), '--out', str(out), '--scales', '1.0', '--device', 'cpu'])
    err = capsys.readouterr().err
    assert rc == 2 and 'not a plain file name' in err, err
    assert [p for p in tmp_path.rglob('*.npz') if out not in p.parents] == []
    assert not (tmp_path/'o1'/'escape').exists()


# ---------------------------------------------------------------- 2. no symlink out of its root

def test_ood_symlink_out_of_pool(pool, tmp_path):
    outside = tmp_path/'outside'; outside.mkdir()
    shutil.copy(pool/'rail/0.jpg', outside/'secret.jpg')
    (pool/'rail/link.jpg').symlink_to(outside/'secret.jpg')      # a file link out of the pool
    (pool/'dir').symlink_to(outside, target_is_directory=True)    # a folder link out of the pool
    (pool/'rail/alias.jpg').symlink_to('1.jpg')                   # a link inside the pool: fine
    (pool/'l.txt').write_text('rail/0.jpg\nrail/link.jpg\ndir/secret.jpg\nrail/alias.jpg\n')
    (tmp_path/'poollink').symlink_to(pool, target_is_directory=True)   # the pool itself through a link: fine
    for root in (pool, tmp_path/'poollink'):
        probs = validate_ood(root, 'l.txt')
        for n, rel in ((2, 'rail/link.jpg'), (3, 'dir/secret.jpg')):
            m = only(probs, 'l.txt', f'line {n}: {rel!r}', 'outside the pool folder')
            assert 'copy the image into the pool folder' in fix_of(m), m
        assert len(probs) == 2, msgs(probs)
    ood = OoDDataset(pool, 'l.txt', num_classes=3)
    assert ood[0]['image'].shape[0] == 3 and ood[3]['id'] == 'rail/alias.jpg'
    for i, rel in ((1, 'rail/link.jpg'), (2, 'dir/secret.jpg')):
        with pytest.raises(WoodInputError, match=f"{rel}: .*outside the pool folder.*Fix: copy the image into the pool folder"): ood[i]


def link_out(f:Path, outside:Path):
    "Move `f` to `outside` and leave a symlink to it in its place."
    outside.mkdir(exist_ok=True)
    t = outside/f.name; shutil.move(f, t); f.symlink_to(t)


def test_dataset_symlink_out_of_root(voc, tmp_path):
    outside = tmp_path/'outside'
    link_out(voc/'JPEGImages/2007_000001.jpg', outside)
    link_out(voc/'SegmentationClass/2007_000002.png', outside)
    save_mask(np.zeros((36, 36), np.uint8), voc/'SegmentationCue/2007_000003.png'); link_out(voc/'SegmentationCue/2007_000003.png', outside)
    link_out(voc/'Annotations'/f'{XML_ONLY}.xml', outside)
    (voc/'store').mkdir(); shutil.move(voc/'Annotations/2007_000003.xml', voc/'store/3.xml')
    (voc/'Annotations/2007_000003.xml').symlink_to(voc/'store/3.xml')     # a link inside the root: fine
    (tmp_path/'vlink').symlink_to(voc, target_is_directory=True)         # the root itself through a link: fine
    for root in (voc, tmp_path/'vlink'):
        probs = validate(root)
        for f in ('JPEGImages/2007_000001.jpg', 'SegmentationClass/2007_000002.png', 'SegmentationCue/2007_000003.png', f'Annotations/{XML_ONLY}.xml'):
            m = only(probs, f, 'outside the dataset root')
            assert 'copy the file into the dataset' in fix_of(m), m
        assert len(probs) == 4, msgs(probs)
    with pytest.raises(WoodInputError, match='JPEGImages/2007_000001.jpg: .*outside the dataset root'): VOCDataset(voc, 'train')[0]
    with pytest.raises(WoodInputError, match='SegmentationClass/2007_000002.png: .*outside the dataset root'): VOCDataset(voc, 'train')[1]
    with pytest.raises(WoodInputError, match='SegmentationClass/2007_000002.png: .*outside the dataset root'): VOCDataset(voc, 'train').labels()
    with pytest.raises(WoodInputError, match='SegmentationCue/2007_000003.png: .*outside the dataset root'): VOCDataset(voc, 'val', with_cue=True)[0]
    with pytest.raises(WoodInputError, match=f'{XML_ONLY}.xml: .*outside the dataset root'): VOCDataset(voc, 'all').label_of(XML_ONLY)
    with pytest.raises(WoodInputError, match=f'{XML_ONLY}.xml: .*outside the dataset root'): VOCDataset(voc, 'all', label_source='xml')[3]
    assert VOCDataset(tmp_path/'vlink', 'val', label_source='xml')[0]['label'].tolist() == [0, 0, 1]   # inside links are read


# ---------------------------------------------------------------- 3. classes agree with the data

def test_mask_class_missing_from_xml(voc):
    (voc/'Annotations/2007_000002.xml').write_text(voc_xml(['dog']))                # the mask also holds train (3)
    (voc/'Annotations/2007_000001.xml').write_text(voc_xml(['cat', 'dog', 'train']))  # naming extra classes is allowed
    probs = validate(voc)
    m = only(probs, 'SegmentationClass/2007_000002.png', "['dog', 'train']", "2007_000002.xml names ['dog']")
    assert 'VOC classes' not in m                                                   # classes.txt exists: no word on the default
    assert len(probs) == 1, msgs(probs)
    assert validate(voc, deep=False) == []                                          # mask values are only read when deep


def test_no_classes_txt_mask_and_xml_disagree(tmp_path, capsys):
    root = make_tiny_voc(tmp_path/'voc')
    (root/'classes.txt').unlink()              # masks 1..3 now read as aeroplane, bicycle, bird; the XML say cat, dog, train
    probs = validate(root)
    for id, mask, xml in (('2007_000001', "['aeroplane']", "['cat']"), ('2007_000002', "['bicycle', 'bird']", "['dog', 'train']"),
                          ('2007_000003', "['bird']", "['train']")):
        m = only(probs, f'SegmentationClass/{id}.png', mask, f'{id}.xml names {xml}')
        fix = fix_of(m)
        assert all(s in fix for s in ('20 VOC classes in VOC order', 'write classes.txt', 'one name a line', 'mask-value order')), fix
    assert len(probs) == 3, msgs(probs)
    assert main(['validate', str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count('20 VOC classes in VOC order') == 3 and 'voc ' + str(root) + ': 3 problem(s)' in out, out


def test_no_classes_txt_fix_texts_ask_for_it(tmp_path):
    root = make_tiny_voc(tmp_path/'voc', classes=False)
    m = np.zeros((30, 40), np.uint8); m[4:24, 4:20] = 1; m[0, 0] = 21
    save_mask(m, root/'SegmentationClass/2007_000001.png')
    save_mask(np.full((44, 30), 22, np.uint8), root/'SegmentationCue/2007_000002.png')
    (root/'Annotations'/f'{XML_ONLY}.xml').write_text(voc_xml(['aeroplane', 'kangaroo']))
    probs = validate(root)
    for parts in (('SegmentationClass/2007_000001.png', 'values [21]'), ('SegmentationCue/2007_000002.png', 'values [22]'),
                  (f'{XML_ONLY}.xml', "['kangaroo']")):
        fix = fix_of(only(probs, *parts))
        assert 'no classes.txt' in fix and '20 VOC classes' in fix and 'write classes.txt' in fix, fix
    assert len(probs) == 3, msgs(probs)
    # with a classes.txt, the fix speaks of that file and not of the default
    make_tiny_voc(tmp_path/'v2'); (tmp_path/'v2/Annotations'/f'{XML_ONLY}.xml').write_text(voc_xml(['kangaroo']))
    fix = fix_of(only(validate(tmp_path/'v2'), "['kangaroo']"))
    assert 'classes.txt' in fix and 'no classes.txt' not in fix, fix
