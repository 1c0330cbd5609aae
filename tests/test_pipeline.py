"`wood run` end to end on tiny data: settings, refusals, bad input, and a run killed (SIGKILL) at several points that still finishes with the same metrics."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

WOOD = [sys.executable, '-m', 'wood_nb.cli']
TINY_BENCH = ['--image-size', '48', '--n-train', '16', '--n-val', '4', '--n-ood', '40', '--jobs', '1']
SETS = ['scales=[1.0]', 'prototypes.k=4', 'mining.threshold=0.0', 'cls.epochs=2'] + [
    f'{sec}.{k}={v}' for sec in ('cls', 'wood_train', 'boundary', 'seg_train')
    for k, v in (('batch_size', 4), ('crop', 48), ('long_side', '[40,56]'), ('progress', 'false'))] + [
    f'{sec}.epochs=1' for sec in ('wood_train', 'boundary', 'seg_train')]
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}


def wood(*args):
    return subprocess.run([*WOOD, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)


def run_args(bench, out, *extra):
    sets = [x for s in SETS for x in ('--set', s)]
    return ['run', '--root', bench/'voc', '--pool', bench/'ood', '--out', out, '--device', 'cpu', *sets, *extra]


def results(run):
    "metrics.json without what may differ between runs (times, memory)."
    m = json.loads((Path(run)/'metrics.json').read_text())
    return {k: v for k, v in m.items() if k not in ('timings_s', 'peak_rss_mib')}


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp('pipe')/'bench'
    r = wood('synth', out, '--seed', 2, *TINY_BENCH)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope='module')
def reference(bench, tmp_path_factory):
    run = tmp_path_factory.mktemp('pipe')/'ref'
    r = wood(*run_args(bench, run))
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r


def test_run_writes_the_run_folder(reference):
    run, r = reference
    m = json.loads((run/'metrics.json').read_text())
    cfg = json.loads((run/'config.json').read_text())
    assert cfg['cls']['epochs'] == 2 and cfg['scales'] == [1.0] and cfg['preset'] == 'synthetic'
    for b in ('baseline', 'wood'):
        assert {'seed_miou', 'seed_threshold', 'cue_activation', 'mask_miou', 'seg_miou'} <= set(m[b])
    report = (run/'report.md').read_text()
    assert f"{m['baseline']['seg_miou']:.1f}" in report and 'figures/chain.png' in report
    assert f"{m['wood']['seed_miou']:15.1f}" in r.stdout
    assert sorted(p.stem for p in (run/'steps').glob('*.json')) == sorted(
        ['baseline', 'baseline_seeds', 'mining', 'prototypes', 'wood', 'wood_seeds', 'arms', 'refine', 'segment', 'report'])
    for d, epochs in (('cls', 2), ('wood', 1), ('refine/baseline', 1), ('refine/wood', 1), ('seg/baseline', 1), ('seg/wood', 1)):
        rows = (run/d/'history.csv').read_text().splitlines()              # one row an epoch of every training
        assert rows[0].startswith('epoch,loss') and len(rows) == 1 + epochs, (d, rows)
    for bar in ('cams', 'scoring', 'features', 'confident labels', 'pseudo-masks', 'segment'):   # inference shows progress too
        assert f'{bar}' in r.stderr and '%|' in r.stderr, bar


def test_rerun_refuses_changed_settings_and_redoes_from_a_step(bench, reference, tmp_path):
    run = tmp_path/'run'
    shutil.copytree(reference[0], run)
    r = wood(*run_args(bench, run, '--set', 'refine.beta=8'))
    assert r.returncode == 2 and "step 'refine' finished with other settings (refine.beta: 10.0 -> 8.0)" in r.stderr and '--from refine' in r.stderr
    before = (run/'steps'/'wood_seeds.json').read_text()
    r = wood(*run_args(bench, run, '--set', 'refine.beta=8', '--from', 'refine'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run/'steps'/'wood_seeds.json').read_text() == before                 # earlier steps untouched
    assert json.loads((run/'steps'/'refine.json').read_text())['settings']['refine']['beta'] == 8.0
    r = wood('run', '--out', run, '--device', 'cpu')                           # a rerun of the folder uses its own config.json
    assert r.returncode == 0 and 'step refine' not in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize('what', ['missing root', 'unknown key', 'broken image', 'empty pool', 'other classes'])
def test_bad_input_stops_before_any_work(bench, tmp_path, what):
    out, voc, pool, extra = tmp_path/'run', bench/'voc', bench/'ood', []
    if what == 'missing root': voc, msg = tmp_path/'nowhere', 'is not a folder'
    elif what == 'unknown key': extra, msg = ['--set', 'wood.lamda=0.1'], "'wood.lamda'"
    elif what == 'broken image':
        voc = tmp_path/'voc'; shutil.copytree(bench/'voc', voc)
        first = (voc/'ImageSets'/'Segmentation'/'train.txt').read_text().split()[0]
        (voc/'JPEGImages'/f'{first}.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
        msg = f'{first}.jpg'
    elif what == 'empty pool':
        pool = tmp_path/'ood'; shutil.copytree(bench/'ood', pool); (pool/'ood_list.txt').write_text('')
        msg = 'OoD pool is empty'
    else:
        from wood_nb.model import CAMClassifier, save_classifier
        save_classifier(CAMClassifier('resnet10t', 3), tmp_path/'three.pt')
        extra, msg = ['--set', f'weights.baseline={tmp_path/"three.pt"}'], 'is a classifier of 3 classes'
    r = wood('run', '--root', voc, '--pool', pool, '--out', out, '--device', 'cpu', *extra)
    assert r.returncode == 2 and msg in r.stderr, r.stderr[-2000:]
    assert not out.exists()                                                    # nothing a rerun could trust


def test_killed_run_finishes_with_the_same_metrics(bench, reference, tmp_path):
    run = tmp_path/'run'
    cmd = [*WOOD, *map(str, run_args(bench, run))]
    # kill points, each as soon as a file shows the run is inside that step: the baseline's second epoch
    # (its first checkpoint exists), mining, the random walk (masks are being written), segmentation (predictions)
    for what, pattern in (('baseline epoch 2', 'cls/checkpoint.pt'), ('mining', 'steps/mining.started.json'),
                          ('random walk', 'refine/baseline/masks/*.png'), ('prediction', 'seg/baseline/pred/*.png')):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
        t0 = time.time()
        while not list(run.glob(pattern)) and p.poll() is None and time.time() - t0 < 300: time.sleep(0.02)
        killed = p.poll() is None
        if killed: os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        assert killed, f'the run ended before the kill at {what!r}: ' + p.stderr.read().decode()[-2000:]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert results(run) == results(reference[0])
    assert not list(run.rglob('*.part')) and not list(run.rglob('.*.removing')) and not list(run.rglob('*.started.json'))


def test_official_variants_are_reachable_from_a_run(bench, tmp_path):
    "prototypes.init=first (the official k-means start) and wood_train.select_by_gt_miou=true (the official checkpoint choice)."
    run = tmp_path/'official'
    r = wood(*run_args(bench, run, '--set', 'prototypes.init=first', '--set', 'wood_train.select_by_gt_miou=true', '--set', 'seg.enabled=false'))
    assert r.returncode == 0, r.stderr[-3000:]
    from wood_nb.model import load_classifier
    from wood_nb.prototypes import load_prototypes
    assert load_prototypes(run/'prototypes'/'mined'/'prototypes.npz')['meta']['init'] == 'first'
    sel = load_classifier(run/'wood'/'model.pt').meta['selection']
    assert sel['by'] == 'gt_miou' and sel['looks_at_ground_truth'] and sel['split'] == 'train' and len(sel['per_epoch']) == 1
    cfg = json.loads((run/'config.json').read_text())
    assert cfg['prototypes']['init'] == 'first' and cfg['wood_train']['select_by_gt_miou'] is True
    r = wood(*run_args(bench, tmp_path/'bad', '--set', 'prototypes.init=random'))
    assert r.returncode == 2 and "'prototypes.init'" in r.stderr and not (tmp_path/'bad').exists()
