"Tests for wood_nb.metrics: confusion matrices, seeds, the threshold sweep and cue activation."
import json

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from wood_nb.core import IGNORE_INDEX, WoodInputError
from wood_nb.metrics import (SEED_THRESHOLDS, ConfusionMatrix, CueActivation, CueCamMass, SweepResult,
                             confusion_matrix, cue_activation, cue_cam_mass, seed_from_cams, sweep_thresholds)


# ---------------------------------------------------------------- confusion matrix, hand-worked
GT = np.array([[0, 0, 1, 1],
               [0, 2, 1, 1],
               [255, 2, 2, 0]], np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 1, 0],
                 [2, 2, 0, 0]], np.uint8)


def test_confusion_hand_worked():
    cm = confusion_matrix(PRED, GT, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [1, 3, 0], [1, 0, 2]])
    assert cm.dtype == np.int64 and cm.sum() == 11


def test_iou_hand_worked():
    # two disjoint 2x2 squares; class 1 predicted one column too wide: IoU 4/6, background 10/12
    gt = np.zeros((4, 4), np.uint8); gt[:2, :2] = 1
    pred = np.zeros((4, 4), np.uint8); pred[:2, :3] = 1
    acc = ConfusionMatrix(2).update(pred, gt)
    np.testing.assert_allclose(acc.iou(), [10 / 12, 4 / 6])
    assert acc.miou() == pytest.approx((10 / 12 + 4 / 6) / 2 * 100)
    np.testing.assert_allclose(acc.precision(), [10 / 10, 4 / 6])
    np.testing.assert_allclose(acc.recall(), [10 / 12, 4 / 4])
    assert acc.pixel_accuracy() == pytest.approx(14 / 16 * 100)


def test_absent_class_is_nan_and_not_averaged():
    acc = ConfusionMatrix(4).update(PRED, GT)
    iou = acc.iou()
    np.testing.assert_allclose(iou[:3], [3 / 6, 3 / 5, 2 / 3])
    assert np.isnan(iou[3])
    assert acc.miou() == pytest.approx((3 / 6 + 3 / 5 + 2 / 3) / 3 * 100)
    assert np.isnan(acc.precision()[3]) and np.isnan(acc.recall()[3])


def test_empty_matrix_gives_nan_without_warning():
    acc = ConfusionMatrix(3)
    with np.errstate(all='raise'):
        assert np.isnan(acc.miou()) and np.isnan(acc.pixel_accuracy())
    acc.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8))  # all ignored
    assert acc.mat.sum() == 0


def test_ignore_pixels_dropped_whatever_the_prediction():
    gt = np.array([[255, 1], [255, 0]], np.uint8)
    for p in (0, 1, 2, 255):
        pred = np.array([[p, 1], [p, 0]], np.uint8)
        np.testing.assert_array_equal(confusion_matrix(pred, gt, 3), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_other_ignore_index_and_dtypes():
    gt = torch.tensor([[-100, 1], [2, 0]])
    pred = torch.tensor([[1, 1], [2, 2]])
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 3, ignore_index=-100), [[0, 0, 1], [0, 1, 0], [0, 0, 1]])
    # an in-range ignore index removes that row only
    gt0 = np.where(GT == 255, 1, GT).astype(np.uint8)
    cm = confusion_matrix(PRED, gt0, 3, ignore_index=0)
    assert cm[0].sum() == 0 and cm[1:].sum() == 8
    np.testing.assert_array_equal(cm[1:], confusion_matrix(PRED, gt0, 3)[1:])
    with pytest.raises(WoodInputError, match='outside 0..254'):             # 255 is no class when 0 is the ignore value
        confusion_matrix(PRED, GT, 3, ignore_index=0)
    np.testing.assert_array_equal(confusion_matrix(PRED.astype(np.int32), GT.astype(np.int64), 3), confusion_matrix(PRED, GT, 3))


def test_batch_equals_sum_and_torch_equals_numpy():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 6, (4, 9, 7)).astype(np.uint8); g[rng.random(g.shape) < 0.2] = 255
    p = rng.integers(0, 6, (4, 9, 7)).astype(np.uint8)
    whole = confusion_matrix(p, g, 6)
    acc = ConfusionMatrix(6)
    for pi, gi in zip(p, g): acc.update(torch.from_numpy(pi), torch.from_numpy(gi))
    np.testing.assert_array_equal(acc.mat, whole)
    explicit = np.array([[((g == a) & (p == b)).sum() for b in range(6)] for a in range(6)])
    np.testing.assert_array_equal(whole, explicit)


@pytest.mark.parametrize('pred,gt,n,msg', [
    (PRED, GT, 2, 'class values [2]'),
    (np.where(GT == 1, 255, PRED).astype(np.uint8), GT, 3, 'IRN counts them as background'),
    (PRED[:2], GT, 3, 'shapes differ'),
    (PRED.astype(np.float32), GT, 3, 'integer class indices'),
    (PRED, GT, 0, '1..255'),
    (PRED.astype(np.int64) - 1, GT, 3, 'outside'),
])
def test_confusion_errors(pred, gt, n, msg):
    with pytest.raises(WoodInputError, match=msg.replace('[', r'\[').replace(']', r'\]')):
        confusion_matrix(pred, gt, n)


def test_gt_class_out_of_range_names_values():
    gt = GT.copy(); gt[0, 0] = 7
    with pytest.raises(ValueError, match=r'\[7\]'):
        confusion_matrix(PRED, gt, 3)


def test_summary_is_strict_json_with_names():
    s = ConfusionMatrix(4).update(PRED, GT).summary(['boat', 'train', 'bird'])
    json.dumps(s, allow_nan=False)
    assert list(s['iou']) == ['background', 'boat', 'train', 'bird']
    assert s['iou']['bird'] is None and s['iou']['train'] == pytest.approx(200 / 3)
    assert s['pixels'] == 11
    with pytest.raises(WoodInputError, match='names for 4 classes'):
        ConfusionMatrix(4).summary(['a'])


# ---------------------------------------------------------------- against torchmetrics
@pytest.mark.parametrize('seed', [0, 1])
def test_matches_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    n = 21
    g = rng.integers(0, n, (6, 40, 50)).astype(np.uint8); g[rng.random(g.shape) < 0.15] = 255
    p = rng.integers(0, n, (6, 40, 50)).astype(np.uint8)
    # make class 20 absent from truth and prediction, class 19 absent from truth only
    g[g == 20] = 0; p[p == 20] = 1; g[g == 19] = 3
    tg, tp = torch.from_numpy(g).long(), torch.from_numpy(p).long()
    tm_cm = MulticlassConfusionMatrix(num_classes=n, ignore_index=IGNORE_INDEX)(tp, tg).numpy()
    ours = ConfusionMatrix(n)
    for pi, gi in zip(p, g): ours.update(pi, gi)
    np.testing.assert_array_equal(ours.mat, tm_cm)
    tm_iou = MulticlassJaccardIndex(num_classes=n, average=None, ignore_index=IGNORE_INDEX)(tp, tg).numpy()
    iou = ours.iou()
    assert np.isnan(iou[20]) and iou[19] == 0
    np.testing.assert_allclose(iou[:20], tm_iou[:20], rtol=1e-6)
    assert ours.miou() == pytest.approx(tm_iou[:20].mean() * 100, rel=1e-6)


# ---------------------------------------------------------------- seeds
CAMS = np.array([[[0.9, 0.2, 0.3],
                  [0.1, 0.5, 0.3]],
                 [[0.4, 0.6, 0.3],
                  [0.1, 0.5, 0.2]]], np.float32)
KEYS = np.array([7, 15])


def test_seed_hand_worked_and_ties():
    np.testing.assert_array_equal(seed_from_cams(CAMS, KEYS, 0.25), [[7, 15, 7], [0, 7, 7]])
    np.testing.assert_array_equal(seed_from_cams(CAMS, KEYS, 0.3), [[7, 15, 0], [0, 7, 0]])  # equal to t: background
    np.testing.assert_array_equal(seed_from_cams(CAMS, KEYS, 0.0), [[7, 15, 7], [7, 7, 7]])
    np.testing.assert_array_equal(seed_from_cams(CAMS, KEYS, 0.9), np.zeros((2, 3)))        # the peak itself ties
    assert seed_from_cams(CAMS, KEYS, 0.3).dtype == np.uint8


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
def test_seed_equals_padded_argmax(dtype):
    rng = np.random.default_rng(3)
    cams = (rng.integers(0, 21, (3, 30, 30)) / 20).astype(dtype)  # many exact ties with the plane
    keys = np.array([4, 2, 9])
    for t in (0.05, 0.1, 0.3, 0.35, 0.5, 0.95):
        padded = np.concatenate([np.full((1, 30, 30), t, dtype), cams])
        np.testing.assert_array_equal(seed_from_cams(cams, keys, t), np.concatenate([[0], keys])[padded.argmax(0)])
        np.testing.assert_array_equal(seed_from_cams(torch.from_numpy(cams), torch.from_numpy(keys), t),
                                      seed_from_cams(cams, keys, t))


def test_seed_k0_is_background():
    np.testing.assert_array_equal(seed_from_cams(np.zeros((0, 4, 5), np.float32), np.zeros(0, np.int64), 0.0),
                                  np.zeros((4, 5), np.uint8))


@pytest.mark.parametrize('cams,keys,msg', [
    (CAMS, KEYS[:1], '2 CAMs but 1 keys'),
    (CAMS * 4, KEYS, 'max-normalised'),
    (CAMS - 0.5, KEYS, 'max-normalised'),
    (CAMS, np.array([0, 3]), 'distinct class indices'),
    (CAMS, np.array([3, 3]), 'distinct class indices'),
    (CAMS[0], KEYS, r'\(K, H, W\)'),
    ((CAMS > 0.5).astype(np.int64), KEYS, 'must be floats'),
])
def test_seed_errors(cams, keys, msg):
    with pytest.raises(ValueError, match=msg):
        seed_from_cams(cams, keys, 0.3)


def test_seed_rejects_nan_cams():
    cams = CAMS.copy(); cams[0, 0, 0] = np.nan
    with pytest.raises(WoodInputError, match='max-normalised'):
        seed_from_cams(cams, KEYS, 0.3)


# ---------------------------------------------------------------- the sweep
def _records(rng, n_img, C, H, W, dtype=np.float32, cue=False):
    recs = []
    for _ in range(n_img):
        K = int(rng.integers(0, 4))
        keys = rng.choice(np.arange(1, C + 1), K, replace=False)
        cams = (rng.integers(0, 101, (K, H, W)) / 100).astype(dtype)   # values on the threshold grid
        gt = rng.integers(0, C + 1, (H, W)).astype(np.uint8); gt[rng.random((H, W)) < 0.1] = 255
        rec = (cams, keys, gt)
        if cue: rec += ((rng.integers(0, C + 1, (H, W)) * (rng.random((H, W)) < 0.3)).astype(np.uint8),)
        recs.append(rec)
    return recs


def _naive(recs, n, thresholds):
    out = []
    for t in thresholds:
        acc = ConfusionMatrix(n)
        for cams, keys, gt, *_ in recs: acc.update(seed_from_cams(cams, keys, t), gt)
        out.append(acc.mat)
    return np.stack(out)


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
def test_sweep_equals_naive_loop(dtype):
    rng = np.random.default_rng(5)
    recs = _records(rng, 10, 5, 13, 17, dtype)
    res = sweep_thresholds(iter(recs), 6)
    assert isinstance(res, SweepResult)
    assert res.thresholds.tolist() == list(SEED_THRESHOLDS)
    np.testing.assert_array_equal(res.confusion, _naive(recs, 6, SEED_THRESHOLDS))
    assert res.best_threshold == float(res.thresholds[int(np.argmax(res.miou))])
    assert res.best_miou == pytest.approx(np.nanmax(res.miou))
    np.testing.assert_array_equal(res.at(res.best_threshold).mat, res.confusion[res.best])


@pytest.mark.parametrize('dtype', [np.float16, np.float32])
def test_sweep_continuous_cams_odd_thresholds(dtype):
    # continuous CAM values (most pixels far from any threshold) and thresholds off the 0.01 grid, below 0 and above 1
    rng = np.random.default_rng(11)
    recs = []
    for _ in range(6):
        K = int(rng.integers(1, 5)); keys = rng.choice(np.arange(1, 8), K, replace=False)
        cams = rng.random((K, 20, 24)).astype(dtype)
        cams[:, :2] = 0.0; cams[:, 2:4] = -0.0; cams[:, 4, :4] = 1.0        # zeros, negative zeros, exact ones
        gt = rng.integers(0, 8, (20, 24)).astype(np.uint8); gt[rng.random((20, 24)) < 0.1] = 255
        recs.append((cams, keys, gt))
    thr = np.concatenate([rng.random(37), [-0.5, 0.0, 1.0, 1.5, 0.123457]])
    res = sweep_thresholds(recs, 8, thresholds=thr)
    assert len(res.thresholds) == 42 and res.thresholds[0] == -0.5 and res.thresholds[-1] == 1.5
    np.testing.assert_array_equal(res.confusion, _naive(recs, 8, res.thresholds))


def test_sweep_custom_thresholds_rounded_and_sorted():
    rng = np.random.default_rng(6)
    recs = _records(rng, 4, 3, 8, 8)
    res = sweep_thresholds(recs, 4, thresholds=np.arange(0.30, 0.0, -0.02))
    assert res.thresholds.tolist() == [round(0.02 * i, 2) for i in range(1, 16)]
    np.testing.assert_array_equal(res.confusion, _naive(recs, 4, res.thresholds))


def test_sweep_default_thresholds_are_clean():
    assert len(SEED_THRESHOLDS) == 91
    assert SEED_THRESHOLDS[0] == 0.05 and SEED_THRESHOLDS[-1] == 0.95
    assert all(t == round(t, 2) for t in SEED_THRESHOLDS)
    assert all(b > a for a, b in zip(SEED_THRESHOLDS, SEED_THRESHOLDS[1:]))


def test_sweep_known_best_threshold():
    # one object whose CAM is 0.8 inside and 0.4 on a ring around it: best plane lies in [0.40, 0.80)
    gt = np.zeros((10, 10), np.uint8); gt[3:7, 3:7] = 1
    cam = np.zeros((1, 10, 10), np.float32); cam[0, 2:8, 2:8] = 0.4; cam[0, 3:7, 3:7] = 0.8
    res = sweep_thresholds([(cam, [1], gt)], 2, thresholds=np.arange(0.1, 0.91, 0.1))
    assert res.best_threshold == 0.4 and res.best_miou == 100.0
    assert res.miou[res.thresholds.tolist().index(0.3)] < 100
    assert res.miou[-1] < 100                                     # 0.9 leaves the object empty
    s = res.summary(['train'])
    assert s['seed_threshold'] == 0.4 and s['seed_miou'] == 100.0 and 'cue_activation' not in s
    json.dumps(s, allow_nan=False)


def test_sweep_errors():
    rng = np.random.default_rng(7)
    cams, keys, gt = _records(rng, 1, 3, 6, 6)[0]
    with pytest.raises(WoodInputError, match='no image'):
        sweep_thresholds([], 4)
    with pytest.raises(WoodInputError, match='resize the CAMs'):
        sweep_thresholds([(np.zeros((1, 5, 6), np.float32), [1], gt)], 4)
    with pytest.raises(WoodInputError, match='does not fit num_classes'):
        sweep_thresholds([(np.zeros((1, 6, 6), np.float32), [3], gt)], 3)
    bad = gt.copy(); bad[0, 0] = 9
    with pytest.raises(WoodInputError, match=r'class values \[9\]'):
        sweep_thresholds([(np.zeros((1, 6, 6), np.float32), [1], bad)], 4)
    with pytest.raises(WoodInputError, match='record 0'):
        sweep_thresholds([(np.zeros((1, 6, 6), np.float32), [1])], 4)
    with pytest.raises(WoodInputError, match='at least one finite'):
        sweep_thresholds([(cams, keys, gt)], 4, thresholds=[np.nan])


# ---------------------------------------------------------------- cue activation
def _cue_case():
    cue = np.zeros((8, 8), np.uint8); cue[4:8, 0:4] = 1; cue[0:2, 6:8] = 3
    seed = np.zeros((8, 8), np.uint8); seed[4, 0:4] = 1; seed[5, 0:2] = 1   # 6 of 16 cue-1 pixels
    seed[0:2, 6:8] = 2
    return seed, cue


def test_cue_activation_hand_built():
    seed, cue = _cue_case()
    acc = CueActivation().update(seed, cue, [1, 2])
    assert acc.compute() == dict(mean=0.375, per_class={1: 0.375}, pairs=1)
    acc.update(seed, np.zeros_like(cue), [1, 2])             # an image without cues contributes nothing
    assert acc.compute()['pairs'] == 1
    acc.update(seed, cue, [2])                               # cue 1 and cue 3, but neither class labelled
    assert acc.compute() == dict(mean=0.375, per_class={1: 0.375}, pairs=1)
    acc.update(torch.from_numpy((cue == 1).astype(np.uint8)), torch.from_numpy(cue), torch.tensor([1, 3]))
    r = acc.compute()
    assert r['pairs'] == 3 and r['per_class'] == {1: pytest.approx((0.375 + 1) / 2), 3: 0.0}
    assert r['mean'] == pytest.approx((0.375 + 1 + 0) / 3)


def test_cue_activation_function_and_empty():
    seed, cue = _cue_case()
    assert cue_activation([(seed, cue, [1]), (seed, cue, np.array([1, 1]))]) == dict(mean=0.375, per_class={1: 0.375}, pairs=2)
    r = cue_activation([(seed, cue, [2])])
    assert r['pairs'] == 0 and np.isnan(r['mean']) and r['per_class'] == {}
    with pytest.raises(WoodInputError, match='shapes differ'):
        cue_activation([(seed[:4], cue, [1])])
    with pytest.raises(WoodInputError, match='1..254'):
        cue_activation([(seed, cue, [0])])


def test_cue_cam_mass():
    _, cue = _cue_case()
    cams = np.zeros((2, 8, 8), np.float32)
    cams[0, 4:8, 0:4] = 0.5; cams[0, 0:4, 4:8] = 1.0                      # class 1: 8 on its cue, 16 off
    cams[1, 0:2, 6:8] = 1.0                                                 # class 3: all its mass on its cue
    r = cue_cam_mass([(cams, [1, 3], cue)])
    assert r['pairs'] == 2 and r['per_class'] == {1: pytest.approx(8 / 24), 3: pytest.approx(1.0)}
    r = cue_cam_mass([(cams[:1], [2], cue)])                                # class 2 has no cue
    assert r['pairs'] == 0
    assert cue_cam_mass([(np.zeros((1, 8, 8), np.float32), [1], cue)])['mean'] == 0.0
    acc = CueCamMass().update(cams, [1, 3], cue).update(cams[:1], [1], np.zeros_like(cue))
    assert acc.compute()['pairs'] == 2


def test_sweep_cue_activation_equals_naive():
    rng = np.random.default_rng(8)
    recs = _records(rng, 12, 4, 10, 12, cue=True)
    recs.append(recs[0][:3])                                   # a record without a cue mask
    recs.append((*recs[1][:3], None))                          # an explicit None
    res = sweep_thresholds(recs, 5)
    np.testing.assert_array_equal(res.confusion, _naive(recs, 5, SEED_THRESHOLDS))
    for j, t in enumerate(res.thresholds):
        acc = CueActivation()
        for cams, keys, gt, *cue in recs:
            if cue and cue[0] is not None: acc.update(seed_from_cams(cams, keys, t), cue[0], keys)
        ref = acc.compute()
        assert ref['pairs'] == res.cue_pairs.sum() > 0
        assert res.cue_activation[j] == pytest.approx(ref['mean'], abs=1e-12)
        pc = res.cue_activation_per_class(j)
        for k, v in ref['per_class'].items(): assert pc[k] == pytest.approx(v, abs=1e-12)
    assert res.best_cue_activation == res.cue_activation[res.best]
    s = res.summary(['a', 'b', 'c', 'd'])
    assert s['cue_activation'] == pytest.approx(res.best_cue_activation) and s['cue_pairs'] == res.cue_pairs.sum()
    assert len(s['sweep']['cue_activation']) == 91
    json.dumps(s, allow_nan=False)


def test_sweep_without_cues_has_no_cue_numbers():
    rng = np.random.default_rng(9)
    res = sweep_thresholds(_records(rng, 3, 3, 6, 6), 4)
    assert not res.has_cues and res.cue_activation is None and res.best_cue_activation is None


def test_cue_activation_separates_a_biased_classifier():
    # rails (cue of class 1) under an object; a biased CAM also fires on the rails
    yy, xx = np.mgrid[:24, :32]
    d = np.sqrt((yy - 8) ** 2 + (xx - 16) ** 2)
    gt = (d < 5).astype(np.uint8)
    cue = np.zeros_like(gt); cue[18:21] = 1
    clean = np.clip(1 - d / 7, 0, None)
    biased = np.maximum(clean, 0.6 * cue)
    r_clean = sweep_thresholds([(clean[None].astype(np.float32), [1], gt, cue)], 2)
    r_biased = sweep_thresholds([(biased[None].astype(np.float32), [1], gt, cue)], 2)
    assert r_clean.best_cue_activation == 0.0
    assert r_biased.best_cue_activation == 1.0
    assert r_biased.best_miou < r_clean.best_miou
