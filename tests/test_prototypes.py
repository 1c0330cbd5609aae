"Prototypes: GAP features, class means, torch k-means (against scikit-learn and the official loop), prototype files, the compute step."
import json, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wood_nb.core import WoodInputError, save_npz
from wood_nb.data import OoDDataset, VOCDataset, eval_transforms
from wood_nb.mining import write_ood_list
from wood_nb.model import CAMClassifier
from wood_nb.prototypes import (class_prototypes, compute_prototypes, cue_purity, image_features, kmeans, load_prototypes,
                                partition_inertia, plot_clusters, save_prototypes)
from wood_nb.synth import SynthConfig, generate

try: from sklearn.cluster import KMeans
except ImportError: KMeans = None
needs_sklearn = pytest.mark.skipif(KMeans is None, reason='scikit-learn is not installed (pip install scikit-learn; it is a dev requirement)')


def blobs(n, d, k, seed, dtype=np.float64, spread=3.0, offset=5.0):
    "n points around k random centres, all shifted by `offset` (like positive ReLU features)."
    rng = np.random.default_rng(seed)
    cent = rng.normal(0, spread, (k, d))
    return (cent[rng.integers(0, k, n)] + rng.normal(0, 1, (n, d)) + offset).astype(dtype)


def sk(x, init, iters):
    return KMeans(n_clusters=len(init), init=np.asarray(init), n_init=1, max_iter=iters, algorithm='lloyd', tol=0).fit(np.asarray(x))


@needs_sklearn
@pytest.mark.parametrize('init', ['first', 'k-means++'])
@pytest.mark.parametrize('n,d,k', [(600, 32, 10), (1500, 128, 50)])
def test_kmeans_matches_sklearn_float64(n, d, k, init):
    x = blobs(n, d, k, seed=n + k)
    c0, _, _ = kmeans(x, k, 0, init)                    # iters=0: the initial centres
    c, a, inertia = kmeans(x, k, 10, init)
    ref = sk(x, c0.numpy(), 10)
    np.testing.assert_allclose(c.numpy(), ref.cluster_centers_, rtol=0, atol=1e-9)
    assert (a.numpy() == ref.labels_).all()
    assert inertia == pytest.approx(ref.inertia_, rel=1e-10)


@needs_sklearn
def test_kmeans_matches_sklearn_float32_and_unconverged():
    x = blobs(2000, 256, 20, seed=1, dtype=np.float32, spread=0.6)      # overlapping blobs: 3 iterations do not converge
    init = x[:20].copy()
    c, a, inertia = kmeans(torch.from_numpy(x), 20, 3, torch.from_numpy(init))
    ref = sk(x, init, 3)
    assert ref.n_iter_ == 3
    assert c.dtype == torch.float32
    np.testing.assert_allclose(c.numpy(), ref.cluster_centers_, rtol=0, atol=1e-4)
    assert (a.numpy() == ref.labels_).mean() > 0.999
    assert inertia == pytest.approx(ref.inertia_, rel=1e-5)


@needs_sklearn
def test_long_runs_of_incremental_updates_do_not_drift():
    x = blobs(3000, 64, 30, seed=9, spread=0.4)                        # heavily overlapping: labels keep changing
    init = x[:30].copy()
    c, a, inertia = kmeans(torch.from_numpy(x), 30, 80, torch.from_numpy(init))
    ref = sk(x, init, 80)
    assert ref.n_iter_ > 20                                             # many iterations, most of them incremental
    np.testing.assert_allclose(c.numpy(), ref.cluster_centers_, rtol=0, atol=1e-9)
    assert (a.numpy() == ref.labels_).all() and inertia == pytest.approx(ref.inertia_, rel=1e-10)


@needs_sklearn
def test_empty_cluster_is_reseeded_like_sklearn():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (400, 8))
    init = np.concatenate([x[:3], np.full((1, 8), 50.0)])               # the last centre attracts no point
    c, a, inertia = kmeans(x, 4, 6, torch.from_numpy(init))
    ref = sk(x, init, 6)
    np.testing.assert_allclose(c.numpy(), ref.cluster_centers_, rtol=0, atol=1e-10)
    assert (a.numpy() == ref.labels_).all() and inertia == pytest.approx(ref.inertia_, rel=1e-10)
    assert np.bincount(a.numpy(), minlength=4).min() > 0


def official_kmeans(x, K, Niter):
    "The official KMeans (naver-ai/w-ood step/train_utils.py), with dense torch in place of KeOps."
    c = x[:K].clone()
    for _ in range(Niter):
        cl = ((x[:, None] - c[None])**2).sum(-1).argmin(1)
        c.zero_(); c.scatter_add_(0, cl[:, None].repeat(1, x.shape[1]), x)
        c /= torch.bincount(cl, minlength=K).type_as(c).view(K, 1)
    return cl, c


def test_first_init_reproduces_the_official_loop():
    x = torch.from_numpy(blobs(500, 24, 12, seed=7))
    _, c_off = official_kmeans(x, 12, 10)
    assert torch.isfinite(c_off).all()
    c, a, _ = kmeans(x, 12, 10, init='first')
    torch.testing.assert_close(c, c_off, rtol=0, atol=1e-9)
    # the official loop gives NaN when a pool lists an image twice among the first k; ours does not
    dup = torch.cat([x[:1], x])
    assert torch.isnan(official_kmeans(dup, 12, 10)[1]).any()
    c, a, _ = kmeans(dup, 12, 10, init='first')
    assert torch.isfinite(c).all() and len(torch.unique(a)) == 12


def test_kmeanspp_is_deterministic_and_picks_points():
    x = torch.from_numpy(blobs(800, 16, 8, seed=11, spread=20.0))
    c1, a1, i1 = kmeans(x, 8, 0, seed=5)
    c2, a2, i2 = kmeans(x, 8, 0, seed=5)
    assert torch.equal(c1, c2) and torch.equal(a1, a2) and i1 == i2
    c3, _, _ = kmeans(x, 8, 0, seed=6)
    assert not torch.equal(c1, c3)
    d = (c1[:, None] - x[None]).abs().amax(-1)                       # every initial centre is a data point
    assert d.min(1).values.max() < 1e-12
    truth = torch.from_numpy(np.random.default_rng(11).normal(0, 20.0, (8, 16)) + 5.0)
    assert len(torch.unique(torch.cdist(c1, truth).argmin(1))) == 8  # well separated blobs: one seed per blob


def test_iters_zero_and_the_fixed_point():
    x = torch.from_numpy(blobs(300, 4, 3, seed=2, spread=30.0))
    c0, a0, in0 = kmeans(x, 3, 0, init='first')
    torch.testing.assert_close(c0, x[:3], rtol=0, atol=1e-12)
    assert torch.equal(a0, torch.cdist(x, x[:3]).argmin(1))
    c10, a10, in10 = kmeans(x, 3, 10, init='first')
    c50, a50, in50 = kmeans(x, 3, 50, init='first')                  # converged: more iterations change nothing
    assert torch.equal(c10, c50) and torch.equal(a10, a50) and in10 == in50 and in10 < in0
    groups = torch.stack([x[a10 == j].mean(0) for j in range(3)])
    torch.testing.assert_close(c10, groups, rtol=0, atol=1e-9)        # converged centres are their groups' means
    assert in10 == pytest.approx(float(((x - c10[a10])**2).sum()), rel=1e-12)


def test_kmeans_input_errors():
    x = torch.randn(10, 3)
    with pytest.raises(WoodInputError, match='11 clusters were asked for 10 points'): kmeans(x, 11)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        c, a, inertia = kmeans(x, 11, clamp=True)
    assert c.shape == (10, 3) and inertia == pytest.approx(0, abs=1e-5) and 'using k=10' in str(w[0].message)
    for kw, msg in ((dict(k=0), 'k: 0'), (dict(k=2.0), 'k: 2.0'), (dict(k=2, iters=-1), 'iters'), (dict(k=2, init='random'), 'not an initialisation'),
                    (dict(k=2, init=torch.zeros(3, 3)), 'not \\(2, 3\\)')):
        with pytest.raises(WoodInputError, match=msg): kmeans(x, **kw)
    x[4, 1] = float('nan')
    with pytest.raises(WoodInputError, match='NaN or infinite values \\(1 rows\\)'): kmeans(x, 2)
    with pytest.raises(WoodInputError, match='not \\(N, D\\)'): kmeans(torch.zeros(5), 2)
    c, a, _ = kmeans(torch.randint(0, 5, (20, 2)), 2)                # integers are clustered as float32
    assert c.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_kmeans_on_gpu_matches_cpu():
    x = torch.from_numpy(blobs(5000, 64, 20, seed=4, dtype=np.float32))
    c, a, i = kmeans(x, 20, 10, seed=1)
    cg, ag, ig = kmeans(x.cuda(), 20, 10, seed=1)
    assert cg.is_cuda and ag.is_cuda
    torch.testing.assert_close(cg.cpu(), c, rtol=0, atol=1e-3)
    assert (ag.cpu() == a).float().mean() > 0.999 and ig == pytest.approx(i, rel=1e-4)


def test_class_prototypes_are_means_of_labelled_images():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 6, generator=g)
    y = (torch.rand(40, 4, generator=g) > 0.5).float()
    y[0] = 1
    p = class_prototypes(f, y)
    for c in range(4): torch.testing.assert_close(p[c], f[y[:, c] == 1].mean(0))
    y[:, 2] = 0
    with pytest.raises(WoodInputError, match=r"\['c2'\] have no image"): class_prototypes(f, y, ['c0', 'c1', 'c2', 'c3'])
    with pytest.raises(ValueError, match='40 feature rows but 39 label rows'): class_prototypes(f, y[:39])


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('b')/'b', seed=5, cfg=SynthConfig(image_size=40, n_train=18, n_val=2, n_ood=24))


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return CAMClassifier('resnet10t', 6, 16).train()


def test_image_features_are_the_pooled_features(bench, model):
    ds = VOCDataset(bench/'voc', 'train', transform=eval_transforms(model.mean, model.std), with_mask=False)
    f = image_features(model, ds, batch_size=5)
    assert model.training and f.shape == (18, model.feat_dim) and f.dtype == torch.float32
    model.eval()
    with torch.no_grad(): want = torch.cat([model.pooled(ds[i]['image'][None].as_subclass(torch.Tensor)) for i in range(len(ds))])
    model.train()
    torch.testing.assert_close(f, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(WoodInputError, match='holds no image'): image_features(model, [])


def test_mixed_sizes_keep_dataset_order():
    class Mean(nn.Module):
        def __init__(self): super().__init__(); self.p = nn.Parameter(torch.zeros(1))
        def pooled(self, x): return x.mean((2, 3))
    items = [{'image': torch.full((3, 4 + 3*(i % 3), 5), float(i))} for i in range(8)]
    f = image_features(Mean(), items, batch_size=3)
    assert f[:, 1].tolist() == list(range(8))


def test_prototype_file_round_trip(tmp_path):
    cp, op = torch.randn(4, 8), torch.randn(6, 8)
    save_prototypes(tmp_path/'prototypes.npz', cp, op, {'k': 6, 'classes': ['a', 'b']}, ood_paths=np.array(['x/1.jpg', 'y/2.jpg']), ood_assign=np.arange(2))
    for src in (tmp_path/'prototypes.npz', tmp_path):               # a folder means <folder>/prototypes.npz
        r = load_prototypes(src)
        assert torch.equal(r['class_protos'], cp) and torch.equal(r['ood_protos'], op)
        assert r['meta'] == {'k': 6, 'classes': ['a', 'b']} and r['ood_paths'] == ['x/1.jpg', 'y/2.jpg']
        assert r['ood_assign'].tolist() == [0, 1]
    with np.load(tmp_path/'prototypes.npz', allow_pickle=False) as z:
        assert sorted(z.files) == ['class_protos', 'format', 'meta', 'ood_assign', 'ood_paths', 'ood_protos']
    with pytest.raises(WoodInputError, match='same D'): save_prototypes(tmp_path/'q.npz', cp, torch.randn(6, 7))
    with pytest.raises(WoodInputError, match='object array'): save_prototypes(tmp_path/'q.npz', cp, op, ood_paths=np.array([{'a': 1}], dtype=object))
    with pytest.raises(WoodInputError, match='JSON'): save_prototypes(tmp_path/'q.npz', cp, op, {'f': np.float32})
    assert not (tmp_path/'q.npz').exists()
    save_npz(tmp_path/'other.npz', a=np.zeros(3))
    with pytest.raises(WoodInputError, match='not a prototypes file'): load_prototypes(tmp_path/'other.npz')


def test_compute_prototypes_end_to_end(bench, model, tmp_path):
    pool = bench/'ood'
    mined = tmp_path/'mining'/'ood_list.txt'                        # a curated list outside the pool folder
    keep = (pool/'ood_list.txt').read_text().split()[3:19]
    write_ood_list(mined, keep)
    p = compute_prototypes(model, bench/'voc', 'train', pool, mined.resolve(), tmp_path/'protos', k=5, iters=10, init='first')
    assert p == tmp_path/'protos'/'prototypes.npz'
    r = load_prototypes(p)
    tf = eval_transforms(model.mean, model.std)
    ds = VOCDataset(bench/'voc', 'train', transform=tf, with_mask=False)
    torch.testing.assert_close(r['class_protos'], class_prototypes(image_features(model, ds), ds.labels()), rtol=1e-5, atol=1e-5)
    of = image_features(model, OoDDataset(pool, mined.resolve(), 6, transform=tf))
    c, a, inertia = kmeans(of, 5, 10, init='first')
    torch.testing.assert_close(r['ood_protos'], c, rtol=1e-5, atol=1e-5)
    assert r['ood_paths'] == keep and r['ood_assign'].tolist() == a.tolist()
    m = r['meta']
    assert (m['k'], m['iters'], m['init'], m['n_ood'], m['n_images'], m['feat_dim']) == (5, 10, 'first', 16, 18, model.feat_dim)
    assert m['cluster_sizes'] == np.bincount(a.numpy(), minlength=5).tolist() and m['inertia'] == pytest.approx(inertia, rel=1e-5)
    assert r['class_counts'].tolist() == (ds.labels() > 0.5).sum(0).tolist()
    with pytest.raises(WoodInputError, match='17 clusters were asked for 16 points'):
        compute_prototypes(model, bench/'voc', 'train', pool, mined.resolve(), tmp_path/'p2', k=17)
    assert not (tmp_path/'p2'/'prototypes.npz').exists()
    with pytest.raises(WoodInputError, match='has 6 classes but the model 3'):
        compute_prototypes(CAMClassifier('resnet10t', 3, 16), bench/'voc', 'train', pool, 'ood_list.txt', tmp_path/'p3', k=2)


def test_plot_clusters_shows_the_nearest_images(bench, model):
    import matplotlib; matplotlib.use('Agg')
    pool = bench/'ood'
    ds = OoDDataset(pool, num_classes=6, transform=eval_transforms(model.mean, model.std))
    f = image_features(model, ds)
    c, a, _ = kmeans(f, 4, 10)
    fig = plot_clusters(pool, ds.ids, a, c, f, n_clusters=3, n_per=4)
    sizes = sorted(torch.bincount(a, minlength=4).tolist(), reverse=True)
    assert len(fig.axes) == 12 and sum(bool(ax.images) for ax in fig.axes) == sum(min(4, s) for s in sizes[:3])
    with pytest.raises(ValueError, match='one each per image'): plot_clusters(pool, ds.ids[:-1], a, c, f)


def test_partition_inertia_and_cue_purity():
    f = torch.tensor([[0., 0.], [2., 0.], [10., 1.], [10., 3.]])
    assert partition_inertia(f, [5, 5, 7, 7]) == pytest.approx(2 + 2)
    assert partition_inertia(f, [0, 0, 0, 0]) == pytest.approx(float(((f - f.mean(0))**2).sum()))
    assert cue_purity(['w', 'w', 'r', 'w'], [0, 0, 1, 1]) == pytest.approx(0.75)
