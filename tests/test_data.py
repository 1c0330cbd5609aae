"Tests for wood_nb.data: VOC-layout and OoD datasets, joint transforms, train_aug and the validator."
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from wood_nb.core import IGNORE_INDEX, VOC_CLASSES, WoodInputError, save_mask
from wood_nb.data import (IMAGENET_MEAN, IMAGENET_STD, OoDDataset, Problem, RandomResizeLong, VOCDataset,
                          build_train_aug, check, denormalize, eval_transforms, read_ood_list, read_ood_meta,
                          read_image, read_split, split_path, train_transforms, validate, validate_ood)

CLASSES = ['cat', 'dog', 'train']
COLOURS = {0: (40, 40, 40), 1: (220, 60, 60), 2: (60, 200, 60), 3: (60, 60, 220)}
# id -> ((W, H), [(class, box x0 y0 x1 y1)], cue boxes or None); the last id has an XML only
SPECS = {'2007_000001': ((40, 30), [(1, (4, 4, 20, 24))], [(1, (26, 2, 38, 10))]),
         '2007_000002': ((30, 44), [(2, (2, 2, 14, 20)), (3, (6, 24, 28, 40))], [(3, (16, 2, 28, 10))]),
         '2007_000003': ((36, 36), [(3, (8, 8, 30, 30))], None)}
XML_ONLY = '2008_000004'


def voc_xml(names, w=32, h=24):
    objs = ''.join(f'<object><name>{n}</name><difficult>0</difficult><part><name>head</name></part></object>' for n in names)
    return f'<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>'


def make_tiny_voc(root, classes=True):
    "A 4-image VOC-layout root: 3 images with masks (2 with cue masks) and XML, 1 with XML only."
    root = Path(root)
    for d in ('JPEGImages', 'SegmentationClass', 'SegmentationCue', 'Annotations', 'ImageSets/Segmentation'):
        (root/d).mkdir(parents=True, exist_ok=True)
    if classes: (root/'classes.txt').write_text('\n'.join(CLASSES) + '\n')
    names = CLASSES if classes else list(VOC_CLASSES)
    for i, ((w, h), objs, cues) in SPECS.items():
        m = np.zeros((h, w), np.uint8)
        for k, (x0, y0, x1, y1) in objs:
            m[y0-1:y1+1, x0-1:x1+1] = IGNORE_INDEX
            m[y0:y1, x0:x1] = k
        img = np.zeros((h, w, 3), np.uint8)
        for k, c in COLOURS.items(): img[m == k] = c
        img[m == IGNORE_INDEX] = COLOURS[0]
        Image.fromarray(img).save(root/'JPEGImages'/f'{i}.jpg', quality=95)
        save_mask(m, root/'SegmentationClass'/f'{i}.png')
        if cues is not None:
            cue = np.zeros((h, w), np.uint8)
            for k, (x0, y0, x1, y1) in cues: cue[y0:y1, x0:x1] = k
            save_mask(cue, root/'SegmentationCue'/f'{i}.png')
        (root/'Annotations'/f'{i}.xml').write_text(voc_xml(sorted({names[k-1] for k, _ in objs}), w, h))
    Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(root/'JPEGImages'/f'{XML_ONLY}.jpg', quality=95)
    (root/'Annotations'/f'{XML_ONLY}.xml').write_text(voc_xml([names[0], names[1], names[0]]))
    seg = root/'ImageSets/Segmentation'
    (seg/'train.txt').write_text('2007_000001\n2007_000002\n')
    (seg/'val.txt').write_text('2007_000003\n')
    (seg/'all.txt').write_text('\n'.join([*SPECS, XML_ONLY]) + '\n')
    return root


def make_pool(root, n=3):
    root = Path(root)
    (root/'rail').mkdir(parents=True)
    for k in range(n):   # a flat colour (60 k) with a textured top-right corner, so the JPEG holds real data
        a = np.full((20 + 4 * k, 24, 3), 60 * k, np.uint8)
        a[:10, 12:] = (np.arange(10 * 12 * 3).reshape(10, 12, 3) * 37 % 251).astype(np.uint8)
        Image.fromarray(a).save(root/'rail'/f'{k}.jpg', quality=95)
    (root/'ood_list.txt').write_text(''.join(f'rail/{k}.jpg\n' for k in range(n)))
    return root


@pytest.fixture
def voc(tmp_path): return make_tiny_voc(tmp_path/'voc')


@pytest.fixture
def pool(tmp_path): return make_pool(tmp_path/'ood')


def msgs(probs): return [str(p) for p in probs]


def only(probs, *parts):
    "The single problem whose message holds every part; it must also name a fix."
    hits = [m for m in msgs(probs) if all(s in m for s in parts)]
    assert len(hits) == 1, (parts, msgs(probs))
    assert 'Fix: ' in hits[0] and len(hits[0].split('Fix: ')[1]) > 10, hits[0]
    return hits[0]


# ---------------------------------------------------------------- validate: clean data and each bad input

def test_validate_clean(voc, pool):
    assert validate(voc) == []
    assert validate(voc, deep=False) == []
    assert validate(voc, splits=['train']) == []
    assert validate_ood(pool) == []
    assert check(voc) == voc and check(pool) == pool


def test_problem_str():
    p = Problem('a/b.png', 'is broken.', 'replace it.')
    assert str(p) == 'a/b.png: is broken. Fix: replace it.' == str(p.error())
    assert isinstance(p.error(), WoodInputError)


def test_missing_root(tmp_path):
    probs = validate(tmp_path/'nope')
    assert len(probs) == 1
    only(probs, str(tmp_path/'nope'), 'does not exist')


def test_missing_jpegimages(voc):
    shutil.rmtree(voc/'JPEGImages')
    probs = validate(voc)
    assert len(probs) == 1
    only(probs, 'JPEGImages', 'image folder is missing')


def test_list_names_missing_image(voc):
    (voc/'JPEGImages/2007_000003.jpg').unlink()
    probs = validate(voc)
    m = only(probs, 'val.txt', "line 1 names id '2007_000003'")
    assert 'JPEGImages/2007_000003.jpg does not exist' in m
    only(probs, 'all.txt', "line 3 names id '2007_000003'")
    assert len(probs) == 2


def test_truncated_image_deep_only(voc):
    f = voc/'JPEGImages/2007_000002.jpg'
    f.write_bytes(f.read_bytes()[:-60])
    assert validate(voc, deep=False) == []                 # headers are intact
    probs = validate(voc, splits=['train'])
    only(probs, '2007_000002.jpg', 'truncated')
    assert len(probs) == 1


def test_unreadable_image_even_shallow(voc):
    (voc/'JPEGImages/2007_000001.jpg').write_bytes(b'not an image at all')
    probs = validate(voc, splits=['train'], deep=False)
    only(probs, '2007_000001.jpg', 'cannot be opened as an image')


def test_mask_values_out_of_range(voc):
    m = np.zeros((30, 40), np.uint8); m[0, 0] = 4; m[1, 1] = 200; m[2, 2] = IGNORE_INDEX
    save_mask(m, voc/'SegmentationClass/2007_000001.png')
    probs = validate(voc, splits=['train'])
    only(probs, 'SegmentationClass/2007_000001.png', 'values [4, 200]', 'outside 0..3 and 255')
    assert len(probs) == 1
    assert validate(voc, splits=['train'], deep=False) == []  # values are only read when deep


def test_rgb_mask(voc):
    Image.new('RGB', (30, 44), (128, 0, 0)).save(voc/'SegmentationClass/2007_000002.png')
    probs = validate(voc, splits=['train'], deep=False)
    only(probs, 'SegmentationClass/2007_000002.png', 'RGB image', 'not an indexed')


def test_empty_split_list(voc):
    (voc/'ImageSets/Segmentation/test.txt').write_text('\n  \n')
    probs = validate(voc)
    only(probs, 'test.txt', 'split list is empty')
    assert len(probs) == 1
    with pytest.raises(WoodInputError, match='test.txt: split list is empty'): VOCDataset(voc, 'test')


def test_split_list_bad_lines(voc):
    (voc/'ImageSets/Segmentation/train.txt').write_text(
        '2007_000001\n/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n2007_000001\n')
    probs = validate(voc, splits=['train'])
    only(probs, 'train.txt', 'line 2 holds', 'not one image id')
    only(probs, 'train.txt', "line 3: id '2007_000001' is listed twice")
    assert len(probs) == 2


def test_missing_split_list_named(voc):
    probs = validate(voc, splits=['trainaug'])
    only(probs, 'trainaug.txt', 'split list is missing')


def test_mask_size_mismatch(voc):
    save_mask(np.zeros((20, 20), np.uint8), voc/'SegmentationClass/2007_000003.png')
    probs = validate(voc, splits=['val'], deep=False)
    only(probs, 'SegmentationClass/2007_000003.png', '20x20 (WxH)', 'image is 36x36')


def test_cue_problems(voc):
    save_mask(np.full((30, 40), 5, np.uint8), voc/'SegmentationCue/2007_000001.png')      # values > C
    save_mask(np.zeros((8, 8), np.uint8), voc/'SegmentationCue/2007_000002.png')          # wrong size
    cue = np.zeros((36, 36), np.uint8); cue[0, 0] = IGNORE_INDEX                        # 255 is no cue value
    save_mask(cue, voc/'SegmentationCue/2007_000003.png')
    probs = validate(voc)
    only(probs, 'SegmentationCue/2007_000001.png', 'values [5]', 'outside 0..3')
    only(probs, 'SegmentationCue/2007_000002.png', '8x8')
    only(probs, 'SegmentationCue/2007_000003.png', 'values [255]')
    assert len(probs) == 3


def test_xml_does_not_parse(voc):
    (voc/'Annotations'/f'{XML_ONLY}.xml').write_text('<annotation><object><name>cat</name>')
    probs = validate(voc, splits=['all'])
    only(probs, f'{XML_ONLY}.xml', 'does not parse as XML')


def test_xml_unknown_class(voc):
    (voc/'Annotations'/f'{XML_ONLY}.xml').write_text(voc_xml(['cat', 'bus', 'sofa']))
    probs = validate(voc, splits=['all'])
    only(probs, f'{XML_ONLY}.xml', "['bus', 'sofa']", 'classes.txt')


def test_no_label_source(voc):
    (voc/'Annotations'/f'{XML_ONLY}.xml').unlink()
    probs = validate(voc, splits=['all'])
    only(probs, f'{XML_ONLY}.jpg', 'has no label source')
    with pytest.raises(WoodInputError, match='has no label source'): VOCDataset(voc, 'all').labels()


def test_classes_txt_problem(voc):
    (voc/'classes.txt').write_text('cat\n\ndog\ntrain\n')
    probs = validate(voc)
    only(probs, 'classes.txt', 'line 2 is empty')


def test_default_classes_without_classes_txt(tmp_path):
    root = make_tiny_voc(tmp_path/'voc', classes=False)
    assert validate(root) == []
    ds = VOCDataset(root, 'all')
    assert ds.num_classes == 20 and ds.classes == list(VOC_CLASSES)
    assert ds.labels()[3, :2].tolist() == [1, 1] and ds.labels()[3].sum() == 2


def test_every_problem_reported(voc):
    "Several breaks at once: all are reported, and `check` lists them in one error."
    f = voc/'JPEGImages/2007_000001.jpg'; f.write_bytes(f.read_bytes()[:-60])
    Image.new('RGB', (36, 36)).save(voc/'SegmentationClass/2007_000003.png')
    (voc/'Annotations'/f'{XML_ONLY}.xml').write_text('<oops')
    (voc/'ImageSets/Segmentation/val.txt').write_text('2007_000003\n2009_000042\n')
    probs = validate(voc)
    assert len(probs) == 4, msgs(probs)
    with pytest.raises(WoodInputError) as e: check(voc)
    text = str(e.value)
    assert '4 problem(s) found' in text
    assert all(str(p) in text for p in probs)


def test_ood_list_problems(pool):
    (pool/'bad.txt').write_text('rail/0.jpg\nrail/9.jpg\n../x.jpg\nrail/0.jpg\n')
    probs = validate_ood(pool, 'bad.txt')
    only(probs, 'bad.txt', "line 2 names 'rail/9.jpg'", 'does not exist')
    only(probs, 'bad.txt', 'line 3', 'not a path inside the pool folder')
    only(probs, 'bad.txt', 'line 4', 'listed twice')
    assert len(probs) == 3


def test_ood_list_empty_or_missing(pool):
    (pool/'empty.txt').write_text('\n')
    only(validate_ood(pool, 'empty.txt'), 'empty.txt', 'OoD list is empty')
    only(validate_ood(pool, 'none.txt'), 'none.txt', 'OoD list is missing')
    with pytest.raises(WoodInputError, match='OoD list is empty'): OoDDataset(pool, 'empty.txt')
    with pytest.raises(WoodInputError, match='OoD list is empty'): read_ood_list(pool, 'empty.txt')


def test_ood_broken_image(pool):
    f = pool/'rail/1.jpg'; f.write_bytes(f.read_bytes()[:-60])
    assert validate_ood(pool, deep=False) == []
    only(validate_ood(pool), 'rail/1.jpg', 'truncated')


def test_ood_meta_wrong_header(pool):
    (pool/'ood_meta.csv').write_text('file,foreground\nrail/0.jpg,0\n')
    probs = validate_ood(pool)
    only(probs, 'ood_meta.csv', "header is 'file,foreground'", 'path,contains_foreground')
    with pytest.raises(WoodInputError, match='not path,contains_foreground'): read_ood_meta(pool)


def test_ood_meta_values_and_coverage(pool):
    (pool/'ood_meta.csv').write_text('path,contains_foreground,kind\nrail/0.jpg,maybe,rail\nrail/1.jpg,1,rail\n')
    probs = validate_ood(pool)
    only(probs, 'ood_meta.csv', "line 2: contains_foreground is 'maybe'")
    (pool/'ood_meta.csv').write_text('path,contains_foreground,kind\nrail/0.jpg,0,rail\nrail/1.jpg,true,tracks\n')
    only(validate_ood(pool), 'ood_meta.csv', '1 listed images have no row', 'rail/2.jpg')
    assert read_ood_meta(pool) == {'rail/0.jpg': False, 'rail/1.jpg': True}
    assert read_ood_meta(pool, columns=True)['rail/1.jpg'] == {'path': 'rail/1.jpg', 'contains_foreground': True, 'kind': 'tracks'}


def test_check_pool_raises(pool):
    (pool/'rail/2.jpg').unlink()
    with pytest.raises(WoodInputError, match=r"(?s)1 problem\(s\) found.*line 3 names 'rail/2.jpg'"): check(pool)


# ---------------------------------------------------------------- datasets

def test_dataset_items(voc):
    ds = VOCDataset(voc, 'train', with_cue=True)
    assert ds.ids == ['2007_000001', '2007_000002'] and ds.classes == CLASSES and ds.num_classes == 3
    x = ds[1]
    assert list(x) == ['id', 'image', 'label', 'mask', 'cue']
    assert x['id'] == '2007_000002'
    assert type(x['image']) is tv_tensors.Image and x['image'].dtype == torch.uint8 and x['image'].shape == (3, 44, 30)
    assert type(x['mask']) is tv_tensors.Mask and x['mask'].dtype == torch.int64 and x['mask'].shape == (44, 30)
    assert type(x['cue']) is tv_tensors.Mask and x['cue'].dtype == torch.int64
    assert x['label'].dtype == torch.float32 and x['label'].tolist() == [0, 1, 1]
    assert sorted(x['mask'].unique().tolist()) == [0, 2, 3, 255] and sorted(x['cue'].unique().tolist()) == [0, 3]
    # the image is the one on disk, pixel for pixel
    assert torch.equal(x['image'].permute(1, 2, 0), torch.from_numpy(np.array(Image.open(voc/'JPEGImages/2007_000002.jpg'))))


def test_labels_mask_and_xml(voc):
    ds = VOCDataset(voc, 'all')
    assert not ds.with_mask                                  # one id has no mask: masks are off by default
    expected = torch.tensor([[1., 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]])
    assert torch.equal(ds.labels(), expected)
    assert ds.labels() is ds.labels()
    assert torch.equal(torch.stack([ds[i]['label'] for i in range(len(ds))]), expected)
    assert list(ds[3]) == ['id', 'image', 'label']
    with pytest.raises(WoodInputError, match=f'{XML_ONLY}.png: mask file is missing'): VOCDataset(voc, 'all', with_mask=True)[3]


def test_label_source_prefers_mask(voc):
    # an XML that disagrees with the mask: 'auto' takes the mask, 'xml' the XML
    (voc/'Annotations/2007_000001.xml').write_text(voc_xml(['train']))
    assert VOCDataset(voc, 'train').labels()[0].tolist() == [1, 0, 0]
    assert VOCDataset(voc, 'train', label_source='xml').labels()[0].tolist() == [0, 0, 1]
    assert VOCDataset(voc, 'train', label_source='xml')[0]['label'].tolist() == [0, 0, 1]


def test_labels_do_not_decode_jpegs(voc):
    for f in (voc/'JPEGImages').glob('*.jpg'): f.write_bytes(b'broken')
    assert VOCDataset(voc, 'all').labels().shape == (4, 3)


def test_dataset_errors_name_files(voc):
    with pytest.raises(WoodInputError, match=r"trainaug.txt: split list 'trainaug' is missing.*choose one of the splits present: \['all', 'train', 'val'\]"):
        VOCDataset(voc, 'trainaug')
    with pytest.raises(WoodInputError, match="use 'auto', 'mask' or 'xml'"): VOCDataset(voc, label_source='both')
    (voc/'JPEGImages/2007_000001.jpg').write_bytes(b'broken')
    with pytest.raises(WoodInputError, match=r'2007_000001.jpg: cannot be decoded as an image.*Fix:'): VOCDataset(voc)[0]
    save_mask(np.full((44, 30), 9, np.uint8), voc/'SegmentationClass/2007_000002.png')
    with pytest.raises(WoodInputError, match=r'2007_000002.png: holds values \[9\] outside 0..3'): VOCDataset(voc)[1]
    (voc/'Annotations'/f'{XML_ONLY}.xml').write_text(voc_xml(['bus']))
    with pytest.raises(WoodInputError, match=f"{XML_ONLY}.xml: names the unknown class 'bus'.*classes.txt"): VOCDataset(voc, 'all')[3]
    save_mask(np.zeros((5, 5), np.uint8), voc/'SegmentationClass/2007_000003.png')
    with pytest.raises(WoodInputError, match=r'2007_000003.png: is 5x5 \(WxH\) but its image is 36x36'): VOCDataset(voc, 'val')[0]


def test_ood_dataset(pool):
    ood = OoDDataset(pool, num_classes=3)
    assert ood.ids == ['rail/0.jpg', 'rail/1.jpg', 'rail/2.jpg'] and len(ood) == 3
    x = ood[2]
    assert x['id'] == 'rail/2.jpg' and x['image'].shape == (3, 28, 24) and int(x['image'][0, 0, 0]) == 120
    assert x['label'].dtype == torch.float32 and torch.equal(x['label'], torch.zeros(3))
    assert torch.equal(ood.labels(), torch.zeros(3, 3))
    with pytest.raises(WoodInputError, match='OoD pool folder does not exist'): OoDDataset(pool/'nope')


# ---------------------------------------------------------------- transforms and collate

def sample_of(voc, id='2007_000002'):
    return {'image': read_image(voc/'JPEGImages'/f'{id}.jpg'),
            'mask': tv_tensors.Mask(torch.from_numpy(np.array(Image.open(voc/f'SegmentationClass/{id}.png'))).long())}


def aligned_share(out):
    "Share of labelled pixels whose colour is nearest to their mask class's colour."
    rgb = denormalize(out['image']) * 255
    pal = torch.tensor([COLOURS[k] for k in range(4)], dtype=torch.float32)
    nearest = (rgb.permute(1, 2, 0)[..., None, :] - pal).norm(dim=-1).argmin(-1)
    lab = out['mask'] <= 3
    return (nearest[lab] == out['mask'][lab]).float().mean().item()


def test_random_resize_long(voc):
    s = sample_of(voc)
    torch.manual_seed(0)
    longs = set()
    for _ in range(60):
        out = RandomResizeLong(50, 54)(s)
        h, w = out['image'].shape[-2:]
        longs.add(max(h, w))
        assert out['mask'].shape == (h, w) and abs(w / h - 30 / 44) < 0.05
        assert set(out['mask'].unique().tolist()) <= {0, 2, 3, 255}      # nearest: no new value
    assert longs == {50, 51, 52, 53, 54}                                 # both ends inclusive
    assert RandomResizeLong(88, 88)(s)['image'].shape == (3, 88, 60)
    with pytest.raises(WoodInputError, match='not a range of sizes'): RandomResizeLong(10, 5)


def test_train_transforms_types_and_padding(voc):
    s = sample_of(voc)
    torch.manual_seed(3)
    out = train_transforms(crop=64, long_side=None, hflip=False)(s)
    img, m = out['image'], out['mask']
    assert type(img) is tv_tensors.Image and img.dtype == torch.float32 and img.shape == (3, 64, 64)
    assert type(m) is tv_tensors.Mask and m.dtype == torch.int64 and m.shape == (64, 64)
    pad = (img == 0).all(0)
    assert int(pad.sum()) == 64 * 64 - 44 * 30
    assert (m[pad] == IGNORE_INDEX).all()
    # the unpadded part is the normalised image, unchanged (no flip, no resize)
    ys, xs = torch.nonzero(~pad, as_tuple=True)
    y0, x0 = int(ys.min()), int(xs.min())
    ref = (s['image'].float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(img[:, y0:y0 + 44, x0:x0 + 30], ref, atol=1e-5)
    assert torch.equal(m[y0:y0 + 44, x0:x0 + 30], s['mask'])


def test_train_transforms_keep_alignment(voc):
    s = sample_of(voc)
    torch.manual_seed(4)
    tf = train_transforms(crop=40, long_side=(40, 90))
    shapes = set()
    for _ in range(12):
        out = tf(s)
        shapes.add(tuple(out['image'].shape))
        assert aligned_share(out) > 0.9
        assert set(out['mask'].unique().tolist()) <= {0, 2, 3, 255}
    assert shapes == {(3, 40, 40)}
    # control: flipping the image alone breaks the check, so the check can fail
    from torchvision.transforms import v2
    assert aligned_share({'image': eval_transforms()(v2.RandomHorizontalFlip(1.0)(s['image'])), 'mask': s['mask']}) < 0.7


def test_eval_transforms_and_denormalize(voc):
    s = sample_of(voc)
    out = eval_transforms()(s)
    assert out['image'].shape == (3, 44, 30) and torch.equal(out['mask'], s['mask'])
    assert torch.allclose(denormalize(out['image']), s['image'].float() / 255, atol=1e-5)
    batch = torch.stack([out['image'], out['image']])
    assert torch.allclose(denormalize(batch)[1], s['image'].float() / 255, atol=1e-5)
    assert type(denormalize(out['image'])) is torch.Tensor


@pytest.mark.parametrize('workers', [0, 2])
def test_collate(voc, workers):
    ds = VOCDataset(voc, 'train', transform=train_transforms(crop=32, long_side=(30, 50)), with_cue=True)
    dl = DataLoader(ds, batch_size=2, num_workers=workers)
    b = next(iter(dl))
    assert b['id'] == ['2007_000001', '2007_000002']
    assert b['image'].shape == (2, 3, 32, 32) and b['image'].dtype == torch.float32
    assert b['mask'].shape == (2, 32, 32) and b['mask'].dtype == torch.int64
    assert b['cue'].shape == (2, 32, 32) and b['label'].shape == (2, 3)
    assert torch.equal(b['label'], ds.labels())
    ood = OoDDataset(make_pool(voc.parent/'pool'), num_classes=3, transform=train_transforms(crop=32, long_side=(24, 40)))
    o = next(iter(DataLoader(ood, batch_size=3, num_workers=workers)))
    assert o['image'].shape == (3, 3, 32, 32) and torch.equal(o['label'], torch.zeros(3, 3))
    assert o['id'] == ['rail/0.jpg', 'rail/1.jpg', 'rail/2.jpg']


# ---------------------------------------------------------------- train_aug

def test_build_train_aug(voc, tmp_path):
    (tmp_path/'sbd_train.txt').write_text('2007_000002\n2008_000004\n')
    (tmp_path/'sbd_val.txt').write_text('2007_000003\n2008_000004\n')     # 2007_000003 is VOC val: excluded
    ids = build_train_aug(voc, [tmp_path/'sbd_train.txt', tmp_path/'sbd_val.txt'])
    assert ids == ['2007_000001', '2007_000002', '2008_000004']
    assert read_split(voc, 'train_aug') == ids
    assert split_path(voc, 'train_aug').read_text() == '2007_000001\n2007_000002\n2008_000004\n'
    assert not any(p.name.endswith('.part') for p in split_path(voc, 'train_aug').parent.iterdir())
    assert validate(voc, splits=['train_aug']) == []
    assert VOCDataset(voc, 'train_aug').labels().shape == (3, 3)
    assert build_train_aug(voc, tmp_path/'sbd_train.txt', out_name='aug1') == ids    # a single list works too


def test_build_train_aug_missing_images(voc, tmp_path):
    (tmp_path/'sbd.txt').write_text(''.join(f'2011_{k:06d}\n' for k in range(7)) + '2007_000002\n')
    with pytest.raises(WoodInputError) as e: build_train_aug(voc, [tmp_path/'sbd.txt'])
    m = str(e.value)
    assert '7 of the 9 train_aug ids have no image' in m and "'2011_000000'" in m and 'Fix:' in m
    assert "'2011_000006'" not in m                                     # a few are listed, not all
    assert not split_path(voc, 'train_aug').exists()
    with pytest.raises(WoodInputError, match='nope.txt: SBD list is missing'): build_train_aug(voc, [tmp_path/'nope.txt'])
