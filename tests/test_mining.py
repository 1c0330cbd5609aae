"Hard-OoD mining: scoring a pool (batched, mixed sizes, the model's normalisation), ranking, curation, the files `mine` writes, sharding under torchrun."
import csv, json, os, signal, socket, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wood_nb.core import WoodInputError
from wood_nb.data import OoDDataset, read_ood_list, read_ood_meta
from wood_nb.mining import (Candidate, curate, map_dataset, mine, plot_candidates, rank_candidates, read_ranked,
                            score_pool, write_ood_list, write_ranked)
from wood_nb.model import CAMClassifier
from wood_nb.synth import SynthConfig, generate

W = torch.tensor([[3., -1., 0.5], [-2., 2., 0.], [0., 1., -3.]])   # channel means -> 3 logits


class ChannelModel(nn.Module):
    "Logits = per-channel mean of the normalised image @ W: scores that can be computed from the pixels alone."
    num_classes, classes = 3, ['red', 'green', 'blue']
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    def __init__(self): super().__init__(); self.w = nn.Parameter(W.clone())
    def forward(self, x): return x.mean((2, 3)) @ self.w


def expected_score(path):
    "The score of one image, straight from its pixels with numpy."
    arr = np.asarray(Image.open(path).convert('RGB'), np.float64)/255
    z = ((arr - ChannelModel.mean)/np.array(ChannelModel.std)).mean((0, 1))
    p = 1/(1 + np.exp(-(z @ W.double().numpy())))
    return float(p.max()), int(p.argmax())


@pytest.fixture(scope='module')
def colour_pool(tmp_path_factory):
    "A pool of 11 PNGs of two sizes with random colours, a list and a metadata file."
    root = tmp_path_factory.mktemp('pool')
    rng = np.random.default_rng(0)
    (root/'img').mkdir()
    paths, rows = [], []
    for i in range(11):
        h, w = (12, 16) if i % 3 else (20, 10)
        arr = (rng.random((h, w, 3))*255).astype(np.uint8)
        arr[..., i % 3] = np.clip(arr[..., i % 3].astype(int) + 60*(i % 4), 0, 255)
        Image.fromarray(arr).save(root/'img'/f'{i:02d}.png')
        paths.append(f'img/{i:02d}.png'); rows.append([paths[-1], int(i % 5 == 0), ['hard', 'easy', 'contaminated'][i % 3]])
    (root/'ood_list.txt').write_text('\n'.join(paths) + '\n')
    with open(root/'ood_meta.csv', 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['path', 'contains_foreground', 'kind']); w.writerows(rows)
    return root


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('b')/'b', seed=2, cfg=SynthConfig(image_size=40, n_train=6, n_val=2, n_ood=30))


def test_scores_follow_the_pixels_in_list_order(colour_pool):
    scores = score_pool(ChannelModel(), colour_pool, batch_size=4)
    assert [c.path for c in scores] == read_ood_list(colour_pool)
    for c in scores:
        s, k = expected_score(colour_pool/c.path)
        assert c.score == pytest.approx(s, abs=1e-5) and c.cls == k, c.path
    assert len({c.cls for c in scores}) > 1                      # the pool is not degenerate


def test_batched_scores_equal_single_image_scores(bench):
    torch.manual_seed(0)
    model = CAMClassifier('resnet10t', 6, 16).train()
    a = score_pool(model, bench/'ood', batch_size=7)
    assert model.training                                         # mode restored after the pass
    b = score_pool(model, bench/'ood', batch_size=1)
    assert [x.path for x in a] == [x.path for x in b]
    np.testing.assert_allclose([x.score for x in a], [x.score for x in b], rtol=0, atol=1e-5)
    assert [x.cls for x in a] == [x.cls for x in b]


def test_map_dataset_rejects_a_bad_batch_size():
    with pytest.raises(WoodInputError, match='batch_size'):
        map_dataset(ChannelModel(), [{'image': torch.zeros(3, 2, 2)}], lambda m, x: m(x), batch_size=0)


def test_rank_threshold_top_k_and_ties():
    s = [('b', 0.7, 0), ('a', 0.7, 1), ('c', 0.5, 0), ('d', 0.51, 2), ('e', 0.95, 1), ('f', 0.1, 0)]
    r = rank_candidates(s)
    assert [c.path for c in r] == ['e', 'a', 'b', 'd']              # > 0.5 strictly; ties by path
    assert all(isinstance(c, Candidate) for c in r)
    assert [c.path for c in rank_candidates(s, top_k=2)] == ['e', 'a']
    assert [c.path for c in rank_candidates(s, threshold=None, top_k=5)] == ['e', 'a', 'b', 'd', 'c']
    assert [c.path for c in rank_candidates(s, threshold=0.0)] == ['e', 'a', 'b', 'd', 'c', 'f']
    for bad in (-0.1, 1.5, True, '0.5'):
        with pytest.raises(WoodInputError, match='threshold'): rank_candidates(s, threshold=bad)
    for bad in (0, -3, 2.5):
        with pytest.raises(WoodInputError, match='top_k'): rank_candidates(s, top_k=bad)


def test_ranked_csv_round_trip(tmp_path):
    r = [Candidate('img/a,b.png', 0.912345678, 2), Candidate('img/c.png', 0.6, 0)]   # a comma in a name is quoted
    write_ranked(tmp_path/'r.csv', r, ['red', 'green', 'blue'])
    rows = list(csv.reader(open(tmp_path/'r.csv')))
    assert rows == [['path', 'score', 'predicted_class'], ['img/a,b.png', '0.912346', 'blue'], ['img/c.png', '0.600000', 'red']]
    back = read_ranked(tmp_path/'r.csv', ['red', 'green', 'blue'])
    assert [(c.path, c.cls) for c in back] == [('img/a,b.png', 2), ('img/c.png', 0)]
    with pytest.raises(WoodInputError, match='does not fit 2 class names'): write_ranked(tmp_path/'x.csv', r, ['red', 'green'])
    (tmp_path/'bad.csv').write_text('file,prob\n')
    with pytest.raises(WoodInputError, match='header'): read_ranked(tmp_path/'bad.csv')


def test_write_ood_list_is_the_official_format(tmp_path, colour_pool):
    f = write_ood_list(tmp_path/'ood_list.txt', ['img/03.png', 'img/00.png'])
    assert f.read_text() == 'img/03.png\nimg/00.png\n'
    ds = OoDDataset(colour_pool, tmp_path/'ood_list.txt', 3)          # usable as the pool's list
    assert ds.ids == ['img/03.png', 'img/00.png'] and ds[0]['image'].shape[0] == 3
    for bad, msg in (([], 'no image path'), (['/abs/x.png'], 'inside the pool'), (['a/../b.png'], 'inside the pool'),
                     (['x.png', 'x.png'], 'listed twice'), ([' x.png'], 'not a clean path')):
        with pytest.raises(WoodInputError, match=msg): write_ood_list(tmp_path/'bad.txt', bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ood_list.txt']   # nothing half-written


def test_curation_modes(colour_pool, tmp_path):
    ranked = rank_candidates(score_pool(ChannelModel(), colour_pool), threshold=None, top_k=9)
    meta = read_ood_meta(colour_pool)
    assert [c.path for c in curate(ranked, 'meta', colour_pool)] == [c.path for c in ranked if not meta[c.path]]
    assert any(meta[c.path] for c in ranked)                       # the annotator had something to remove
    lst = tmp_path/'kept.txt'
    lst.write_text(f'{ranked[5].path}\n{ranked[1].path}\n')
    assert curate(ranked, 'list', colour_pool, lst) == [ranked[1], ranked[5]]
    not_ranked = next(p for p in read_ood_list(colour_pool) if p not in {c.path for c in ranked})
    lst.write_text(f'{ranked[0].path}\n{not_ranked}\n')
    with pytest.warns(UserWarning, match='1 kept path'): assert curate(ranked, 'list', colour_pool, lst) == [ranked[0]]
    lst.write_text('img/00.png\nimg/zz.png\n')
    with pytest.raises(WoodInputError, match=r'kept\.txt: 1 path\(s\) are not in the pool'): curate(ranked, 'list', colour_pool, lst)
    lst.write_text('/tmp/img/00.png\n')
    with pytest.raises(WoodInputError, match='not a path inside the pool'): curate(ranked, 'list', colour_pool, lst)
    with pytest.raises(WoodInputError, match="needs the curated list"): curate(ranked, 'list', colour_pool)
    with pytest.warns(UserWarning, match='all 9 candidates are kept unchecked'): assert curate(ranked, 'none') == ranked
    with pytest.raises(WoodInputError, match="curation 'meta' simulates"): curate(ranked, 'meta', tmp_path)
    with pytest.raises(WoodInputError, match='not a curation mode'): curate(ranked, 'person', colour_pool)


def test_mine_writes_every_file_and_counts_right(colour_pool, tmp_path):
    model = ChannelModel()
    scores = score_pool(model, colour_pool)
    thr = float(np.quantile([c.score for c in scores], 0.3))
    s = mine(model, colour_pool, tmp_path/'m', threshold=thr, curation='meta')
    out = tmp_path/'m'
    assert sorted(p.name for p in out.iterdir()) == ['mining.json', 'ood_list.txt', 'ranked.csv', 'scores.csv']
    allrows = list(csv.DictReader(open(out/'scores.csv')))
    assert [r['path'] for r in allrows] == read_ood_list(colour_pool)
    ranked = read_ranked(out/'ranked.csv', model.classes)
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True) and all(c.score > thr - 1e-6 for c in ranked)
    want = sorted((c for c in scores if c.score > thr), key=lambda c: -c.score)
    assert [c.path for c in ranked] == [c.path for c in want]
    meta = read_ood_meta(colour_pool, columns=True)
    kept = read_ood_list(out)
    assert kept == [c.path for c in want if not meta[c.path]['contains_foreground']]
    j = json.loads((out/'mining.json').read_text())
    assert j == s
    assert (j['pool'], j['candidates'], j['kept'], j['removed_by_curation']) == (11, len(want), len(kept), len(want) - len(kept))
    assert j['kinds']['kept'] == {k: sum(meta[p]['kind'] == k for p in kept) for k in {meta[p]['kind'] for p in kept}}
    assert j['hard_share_kept'] == pytest.approx(sum(meta[p]['kind'] == 'hard' for p in kept)/len(kept))
    assert sum(j['kept_kind_share'].values()) == pytest.approx(1.0)
    assert j['threshold'] == thr and j['curation'] == 'meta'


def test_mine_with_a_persons_list_and_top_k(colour_pool, tmp_path):
    model = ChannelModel()
    top = rank_candidates(score_pool(model, colour_pool), threshold=None, top_k=4)
    lst = tmp_path/'curated.txt'; lst.write_text(f'{top[2].path}\n{top[0].path}\n')
    s = mine(model, colour_pool, tmp_path/'m', threshold=None, top_k=4, curation='list', curated_list=lst)
    assert read_ood_list(tmp_path/'m') == [top[0].path, top[2].path]
    assert (s['candidates'], s['kept'], s['removed_by_curation']) == (4, 2, 2)
    with pytest.warns(UserWarning, match='unchecked'):
        mine(model, colour_pool, tmp_path/'n', threshold=None, top_k=3, curation='none')
    assert len(read_ood_list(tmp_path/'n')) == 3


def test_mine_refuses_bad_input_before_writing(colour_pool, tmp_path):
    model = ChannelModel()
    for kw, msg in ((dict(threshold=1.2), '--threshold: 1.2 is outside 0..1'), (dict(threshold=-0.5), 'outside 0..1'),
                    (dict(threshold=None), 'neither a threshold nor top_k'), (dict(top_k=0), '--top-k'),
                    (dict(curation='list'), 'needs the curated list'), (dict(curation='list', curated_list=tmp_path/'no.txt'), 'curated list is missing')):
        with pytest.raises(WoodInputError, match=msg): mine(model, colour_pool, tmp_path/'m', **kw)
    assert not (tmp_path/'m').exists()
    lst = tmp_path/'c.txt'; lst.write_text('img/00.png\nother/x.png\n')
    with pytest.raises(WoodInputError, match=r'c\.txt: 1 path\(s\) are not in the pool'):
        mine(model, colour_pool, tmp_path/'m', threshold=0.0, curation='list', curated_list=lst)
    assert not (tmp_path/'m').exists()                                 # refused before scoring


def test_empty_pool_and_nothing_kept(colour_pool, tmp_path):
    empty = tmp_path/'empty'; empty.mkdir(); (empty/'ood_list.txt').write_text('\n')
    with pytest.raises(WoodInputError, match='OoD list is empty'): mine(ChannelModel(), empty, tmp_path/'m', curation='none')
    with pytest.raises(WoodInputError, match='OoD pool folder does not exist'): score_pool(ChannelModel(), tmp_path/'nowhere')
    with pytest.raises(WoodInputError, match='no pool image scored above the threshold'):
        mine(ChannelModel(), colour_pool, tmp_path/'k', threshold=1.0, curation='meta')
    assert (tmp_path/'k'/'scores.csv').exists() and not (tmp_path/'k'/'mining.json').exists()


def test_plot_candidates(colour_pool):
    import matplotlib; matplotlib.use('Agg')
    ranked = rank_candidates(score_pool(ChannelModel(), colour_pool), threshold=None)
    fig = plot_candidates(colour_pool, ranked, 7, ChannelModel.classes, ncols=4)
    shown = [a for a in fig.axes if a.images]
    assert len(fig.axes) == 8 and len(shown) == 7
    meta = read_ood_meta(colour_pool, columns=True)
    for ax, c in zip(shown, ranked):
        assert ax.get_title().splitlines() == [f'{c.score:.3f} {ChannelModel.classes[c.cls]}', meta[c.path]['kind']]


# --- sharded scoring under torchrun (this file is also the worker) -------------------------------------------

def test_sharded_scoring_matches_one_process(colour_pool, tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-addr', '127.0.0.1',
           '--master-port', str(port), __file__, str(colour_pool), str(tmp_path)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try: log, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate()
        pytest.fail('torchrun did not finish in 240 s')
    assert p.returncode == 0, log[-4000:]
    single = [list(c) for c in score_pool(ChannelModel(), colour_pool)]
    for r in (0, 1):
        got = json.loads((tmp_path/f'scores_rank{r}.json').read_text())
        assert [g[0] for g in got] == [s[0] for s in single]          # every process gets every image, in order
        np.testing.assert_allclose([g[1] for g in got], [s[1] for s in single], atol=1e-6)
    assert read_ood_list(tmp_path/'m') == [c.path for c in curate(rank_candidates(score_pool(ChannelModel(), colour_pool), 0.0), 'meta', colour_pool)]


if __name__ == '__main__':                                            # torchrun worker
    from wood_nb.train import dist_info, init_distributed
    pool, out = Path(sys.argv[1]), Path(sys.argv[2])
    init_distributed('cpu'); rank, world, _ = dist_info()
    assert world == 2
    scores = score_pool(ChannelModel(), pool, batch_size=2)
    (out/f'scores_rank{rank}.json').write_text(json.dumps([list(c) for c in scores]))
    mine(ChannelModel(), pool, out/'m', threshold=0.0, curation='meta')
