"W-OoD losses, the anti-adversarial step, the training step's switches and a tiny `train_wood` run."
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wood_nb.prototypes import save_prototypes
from wood_nb.model import CAMClassifier, load_classifier, save_classifier
from wood_nb.synth import SynthConfig, generate
from wood_nb.train import TrainConfig
from wood_nb.wood import (WoodConfig, anti_adversarial, centre_distances, drop_top_class_mask, prototype_pair,
                          metric_loss_code, metric_loss_paper, n_near, ood_threshold, ood_zero_loss, train_wood, wood_step)

# the hand-worked example of the notebook
Z = torch.tensor([[0., 0.], [6., 0.]])
Y = torch.tensor([[1., 0.], [1., 1.]])
P = torch.tensor([[3., 4.], [6., 8.]])            # D_in = [[5, 10], [5, 8]]
Q = torch.tensor([[-1., 0.], [2., 0.], [10., 0.]])  # D_ood = [[1, 2, 10], [7, 4, 4]]


def test_code_form_by_hand():
    L, pull, push = metric_loss_code(Z, Y, P, Q, tau=0.2)
    assert pull.item() == pytest.approx(18 / 6)    # (C/K) mean(y D_in) = (2/3)(18/4): both divide by B*K = 6
    assert push.item() == pytest.approx(3 / 6)     # q = 4th largest of 6 = 4; entries below: 1, 2
    assert L.item() == pytest.approx(2.5)


def test_quantile_is_over_the_whole_batch():
    d = centre_distances(Z, Q)
    assert ood_threshold(d, 0.2).item() == 4.0
    per_image = [ood_threshold(d[i:i + 1], 0.2).item() for i in range(2)]
    assert per_image == [2.0, 4.0]                 # per image: z1 keeps only 1, z2 keeps nothing
    batch_push = metric_loss_code(Z, Y, P, Q)[2].item()
    image_push = sum(metric_loss_code(Z[i:i + 1], Y[i:i + 1], P, Q)[2].item() for i in range(2)) / 2
    assert batch_push == pytest.approx(0.5) and image_push == pytest.approx(1 / 6)


def test_threshold_keeps_tau_of_the_batch():
    d = torch.randperm(800).float().view(16, 50)
    assert (d < ood_threshold(d, 0.2)).sum().item() == 160
    with pytest.raises(ValueError, match='0 <= tau < 1'): ood_threshold(d, 1.0)


def test_paper_form_by_hand():
    L, pull, push = metric_loss_paper(Z, Y, P, Q, tau=0.2)   # ceil(0.6) = 1 nearest centre per image
    assert pull.item() == pytest.approx((5 + 13) / 2)
    assert push.item() == pytest.approx((1 + 4) / 2)
    assert L.item() == pytest.approx(6.5)
    assert metric_loss_paper(Z, Y, P, Q, tau=0.5)[2].item() == pytest.approx((3 + 8) / 2)
    assert (n_near(0.2, 15), n_near(0.2, 50)) == (3, 10)


@pytest.mark.parametrize('fn', [metric_loss_code, metric_loss_paper])
def test_gradient_directions(fn):
    torch.manual_seed(1)
    z, y = 3 * torch.randn(8, 5), (torch.rand(8, 4) > 0.5).float()
    y[:, 0] = 1
    p, q = 3 * torch.randn(4, 5), 3 * torch.randn(12, 5)
    zz = z.clone().requires_grad_()
    g_pull, = torch.autograd.grad(fn(zz, y, p, q)[1], zz)
    after = (y * centre_distances(z - 0.01 * g_pull, p)).sum(1)
    assert (after < (y * centre_distances(z, p)).sum(1)).all()          # pulled toward own prototypes
    dq = centre_distances(z, q)
    near = (torch.zeros_like(dq, dtype=torch.bool).scatter_(1, dq.topk(n_near(0.2, 12), largest=False).indices, True)
            if fn is metric_loss_paper else dq < ood_threshold(dq))
    g_push, = torch.autograd.grad(-fn(zz, y, p, q)[2], zz)
    moved = (centre_distances(z - 0.01 * g_push, q) * near).sum(1)
    rows = near.any(1)
    assert rows.any() and (moved > (dq * near).sum(1))[rows].all()     # pushed away from the near OoD centres


@pytest.mark.parametrize('fn', [metric_loss_code, metric_loss_paper])
def test_normalized_variant_is_bounded_and_norm_preserving(fn):
    torch.manual_seed(2)
    z, y, p, q = torch.randn(6, 8), (torch.rand(6, 3) > 0.4).float(), torch.randn(3, 8), torch.randn(7, 8)
    a, b = fn(z, y, p, q, normalize=True), fn(50 * z, y, p, q, normalize=True)
    for u, v in zip(a, b): assert u.item() == pytest.approx(v.item(), abs=1e-5)
    zz = z.clone().requires_grad_()
    fn(zz, y, p, q, normalize=True)[0].backward()
    assert (zz.grad * z).sum(1).abs().max() < 1e-5                      # no gradient along z: norms cannot grow
    assert centre_distances(50 * z, q, normalize=True).max() <= 2
    # the raw form, by contrast, grows with the features
    assert fn(50 * z, y, p, q)[2] > 10 * fn(z, y, p, q)[2]


def test_push_margin_caps_the_push():
    assert metric_loss_code(Z, Y, P, Q, push_margin=1.5)[2].item() == pytest.approx((1 + 1.5) / 6)
    assert metric_loss_paper(Z, Y, P, Q, push_margin=3)[2].item() == pytest.approx((1 + 3) / 2)
    zz = Z.clone().requires_grad_()
    metric_loss_paper(zz, Y, P, Q, push_margin=3)[2].backward()
    assert torch.allclose(zz.grad[1], torch.zeros(2))                   # z2's pushed distance (4) is past the cap: no push gradient


def test_ood_zero_loss():
    lo = torch.tensor([[0., 0.], [2., -1.]])
    want = (math.log(2) + (math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1)) / 2) / 2
    assert ood_zero_loss(lo).item() == pytest.approx(want)
    assert ood_zero_loss(torch.full((3, 4), -10.)).item() < 1e-4
    assert ood_zero_loss(torch.full((3, 4), 10.)).item() > 9


def test_drop_flag():
    lo = torch.tensor([[0., 5., 1.], [3., 0., 1.], [0., 1., 2.]])
    assert drop_top_class_mask(lo, None) is None
    keep = drop_top_class_mask(lo, 1)
    assert keep.tolist() == [False, True, True]
    per = F.multilabel_soft_margin_loss(lo, torch.zeros_like(lo), reduction='none')
    assert ood_zero_loss(lo, keep).item() == pytest.approx((per[1] + per[2]).item() / 3)   # still divided by B (official)


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return CAMClassifier('resnet10t', 3, output_stride=16, freeze_bn='stats')


def test_anti_adversarial_raises_each_max_logit_and_leaves_grads(net):
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    marker = {n: torch.full_like(p, 0.5) for n, p in net.named_parameters()}
    for n, p in net.named_parameters(): p.grad = marker[n].clone()
    before = net(x).max(1).values.detach()
    for norm in ('batch', 'image'):
        xa = anti_adversarial(net, x, 0.07, norm=norm)
        assert (net(xa).max(1).values > before).all(), norm
    for n, p in net.named_parameters(): assert torch.equal(p.grad, marker[n]), n
    assert not net.training
    net.train()
    anti_adversarial(net, x)
    assert net.training                                                   # the mode is never changed
    for p in net.parameters(): p.grad = None


def test_anti_adversarial_normalisation(net):
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    xb = anti_adversarial(net, x, 0.07, norm='batch', clamp=False)
    xi = anti_adversarial(net, x, 0.07, norm='image', clamp=False)
    per_b = (xb - x).abs().flatten(1).max(1).values
    per_i = (xi - x).abs().flatten(1).max(1).values
    assert per_b.max().item() == pytest.approx(0.07, abs=1e-5) and per_b.min() < 0.07 - 1e-4   # one max for the batch
    assert torch.allclose(per_i, torch.full((4,), 0.07), atol=1e-5)                          # one max per image
    xc = anti_adversarial(net, x, 5.0)
    assert xc.min() >= x.min() and xc.max() <= x.max()                  # clamped to the batch's range
    assert torch.equal(anti_adversarial(net, x, 0.0), x)


def _batches():
    g = torch.Generator().manual_seed(3)
    ib = {'image': torch.randn(4, 3, 32, 32, generator=g), 'label': torch.tensor([[1., 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]])}
    ob = {'image': torch.randn(4, 3, 32, 32, generator=g), 'label': torch.zeros(4, 3)}
    return ib, ob


def test_step_ablation_switches(net):
    net.train()
    ib, ob = _batches()
    cp, op = torch.randn(3, net.feat_dim), torch.randn(6, net.feat_dim)
    def run(**kw): return wood_step(WoodConfig(**kw), cp, op)(net, (ib, ob))
    loss, full = run()
    assert set(full) == {'cls', 'metric', 'pull', 'push', 'feat_norm', 'ood', 'adv_gain'}
    assert loss.item() == pytest.approx(full['cls'] + 0.007 * full['metric'] + 0.25 * full['ood'], abs=1e-5)
    loss, no_ood = run(use_ood_term=False)
    assert 'ood' not in no_ood and 'adv_gain' not in no_ood
    assert loss.item() == pytest.approx(no_ood['cls'] + 0.007 * no_ood['metric'], abs=1e-5)
    loss, no_metric = run(use_metric_term=False)
    assert loss.item() == pytest.approx(no_metric['cls'] + 0.25 * no_metric['ood'], abs=1e-5)
    assert no_metric['metric'] == pytest.approx(full['metric'], abs=1e-4)   # still logged for the ablation
    loss, lam0 = run(lam=0.0)
    assert loss.item() == pytest.approx(lam0['cls'] + 0.25 * lam0['ood'], abs=1e-5)
    loss, no_adv = run(anti_adv_step=0.0)
    assert 'adv_gain' not in no_adv and no_adv['ood'] < full['ood']       # the perturbed OoD batch is the harder one
    loss, none = run(use_ood_term=False, use_metric_term=False)
    assert loss.item() == pytest.approx(F.multilabel_soft_margin_loss(net(ib['image']), ib['label']).item(), abs=1e-5)
    loss, paper = run(metric='paper', normalize=True)
    assert paper['metric'] != pytest.approx(full['metric'])
    # without the metric term no prototypes are needed
    loss, bare = wood_step(WoodConfig(use_metric_term=False))(net, (ib, ob))
    assert set(bare) == {'cls', 'feat_norm', 'ood', 'adv_gain'}
    with pytest.raises(ValueError, match='needs class prototypes'): wood_step(WoodConfig())


def test_step_drop_flag_and_gradients(net):
    net.train()
    ib, ob = _batches()
    cp, op = torch.randn(3, net.feat_dim), torch.randn(6, net.feat_dim)
    top = net(anti_adversarial(net, ob['image'])).argmax(1)
    loss, logs = wood_step(WoodConfig(drop_ood_top_class=int(top[0])), cp, op)(net, (ib, ob))
    assert logs['ood_kept'] == pytest.approx((top != top[0]).float().mean().item())
    net.zero_grad(); loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.zero_grad(set_to_none=True)


def test_joint_forward_matches_two_passes(net):
    net.train()
    ib, ob = _batches()
    cp, op = torch.randn(3, net.feat_dim), torch.randn(6, net.feat_dim)
    cfg = WoodConfig(anti_adv_step=0.0)
    l1, g1 = wood_step(cfg, cp, op, joint=True)(net, (ib, ob))
    l2, g2 = wood_step(cfg, cp, op, joint=False)(net, (ib, ob))
    w = net.classifier.weight
    assert torch.allclose(l1, l2, atol=1e-5)
    assert torch.allclose(torch.autograd.grad(l1, w)[0], torch.autograd.grad(l2, w)[0], atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match='normalize=True'): WoodConfig(metric='cosine')
    with pytest.raises(ValueError, match='WoodConfig.lam'): WoodConfig(lam=-1)
    with pytest.raises(ValueError, match='not a boolean'): WoodConfig(use_ood_term='no')
    with pytest.raises(ValueError, match='4 = bottle'): WoodConfig(drop_ood_top_class=True)
    assert WoodConfig(drop_ood_top_class=np.int64(4)).drop_ood_top_class == 4


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('wood')
    bench = generate(d/'b', seed=0, cfg=SynthConfig(image_size=48, n_train=24, n_val=4, n_ood=40))
    classes = (bench/'voc'/'classes.txt').read_text().split()
    torch.manual_seed(0)
    base = CAMClassifier('resnet10t', len(classes), output_stride=16, freeze_bn='stats', classes=classes)
    save_classifier(base, d/'cls.pt', meta={'preset': 'synthetic'})
    save_prototypes(d/'prototypes.npz', torch.randn(len(classes), base.feat_dim), torch.randn(8, base.feat_dim))
    tc = TrainConfig(epochs=1, batch_size=8, lr=0.01, momentum=0.9, crop=48, long_side=(40, 56), progress=False)
    return d, bench, tc


def test_train_wood_one_epoch(tiny):
    d, bench, tc = tiny
    m = train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'ood_list.txt', d/'prototypes.npz', d/'w', tcfg=tc, device='cpu')
    assert (d/'w'/'model.pt').exists() and (d/'w'/'checkpoint.pt').exists()
    meta = load_classifier(d/'w'/'model.pt').meta
    assert [h['epoch'] for h in meta['history']] == [1]
    assert {'loss', 'cls', 'metric', 'pull', 'push', 'ood', 'adv_gain', 'feat_norm'} <= set(meta['history'][0])
    assert meta['selection'] == {'by': 'last_epoch', 'epoch': 1}
    assert meta['wood_config']['lam'] == 0.007 and meta['train_config']['batch_size'] == 8
    base = load_classifier(d/'cls.pt')
    assert not torch.equal(m.classifier.weight, base.classifier.weight)
    again = train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'ood_list.txt', d/'prototypes.npz', d/'w', tcfg=tc, device='cpu')
    assert torch.equal(again.classifier.weight, m.classifier.weight)      # found, not retrained


def test_train_wood_without_ood_term_and_bad_inputs(tiny):
    d, bench, tc = tiny
    train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'missing_list.txt', d/'prototypes.npz', d/'m',
               wcfg=WoodConfig(use_ood_term=False), tcfg=tc, device='cpu')   # the OoD list is never read
    h = load_classifier(d/'m'/'model.pt').meta['history'][0]
    assert 'ood' not in h and 'metric' in h
    cp, op = prototype_pair(d/'prototypes.npz')
    with pytest.raises(ValueError, match='compute the prototypes with this baseline'):
        train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'ood_list.txt', (cp[:, :4], op[:, :4]), d/'x', tcfg=tc, device='cpu')
    (bench/'ood'/'short.txt').write_text('\n'.join((bench/'ood'/'ood_list.txt').read_text().split()[:3]) + '\n')
    with pytest.raises(ValueError, match='fewer than one batch'):
        train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'short.txt', (cp, op), d/'y', tcfg=tc, device='cpu')
    assert not (d/'x'/'model.pt').exists() and not (d/'y'/'model.pt').exists()


def test_train_wood_gt_selection(tiny):
    d, bench, tc = tiny
    m = train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'ood_list.txt', d/'prototypes.npz', d/'s',
                   tcfg=replace(tc, epochs=2), device='cpu', select_by_gt_miou=True, select_split='val', select_scales=(1.0,))
    sel = load_classifier(d/'s'/'model.pt').meta['selection']
    assert sel['by'] == 'gt_miou' and sel['looks_at_ground_truth'] is True
    assert sorted(sel['per_epoch']) == ['1', '2'] and sel['miou'] == max(sel['per_epoch'].values())
    hist = load_classifier(d/'s'/'model.pt').meta['history']
    assert [h['gt_miou'] for h in hist] == [sel['per_epoch']['1'], sel['per_epoch']['2']]
    best = torch.load(d/'s'/'selected.pt', weights_only=True)
    assert torch.equal(m.classifier.weight.detach().cpu(), best['classifier.weight'])


def test_gt_selection_refuses_a_checkpoint_without_scores(tiny):
    d, bench, tc = tiny
    train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'ood_list.txt', d/'prototypes.npz', d/'r', tcfg=tc, device='cpu')
    (d/'r'/'model.pt').unlink()                                     # a finished checkpoint, but never scored
    with pytest.raises(ValueError, match='fresh output folder'):
        train_wood(d/'cls.pt', bench/'voc', 'train', bench/'ood', 'ood_list.txt', d/'prototypes.npz', d/'r', tcfg=tc,
                   device='cpu', select_by_gt_miou=True, select_split='val')


def test_reads_the_prototypes_step_files(tmp_path):
    protos = pytest.importorskip('wood_nb.prototypes')
    cp, op = torch.randn(3, 5), torch.randn(4, 5)
    protos.save_prototypes(tmp_path/'prototypes.npz', cp, op, {'k': 4}, ood_assign=np.arange(6) % 4)
    for src in (tmp_path/'prototypes.npz', tmp_path, protos.load_prototypes(tmp_path/'prototypes.npz')):
        a, b = prototype_pair(src)
        assert torch.equal(a, cp) and torch.equal(b, op)
    with pytest.raises(ValueError, match="'class_protos'"): prototype_pair({'c': np.ones((3, 4))})
