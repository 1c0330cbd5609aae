"""`wood run` under torchrun with two CPU processes (gloo) against the same run in one process.

Both runs go through tests/pipeline_ddp_worker.py: `wood` with random flips switched off, so that with
`long_side` = crop = image size (48) the augmentation is deterministic and both runs train on the same
global batches (batch sizes are global: 4 = 2 processes x 2). The two-process run also logs which
process wrote every file. torchrun is started through tests/torchrun_loopback.py (the stock launcher
with its rendezvous store bound to 127.0.0.1) and gloo uses the loopback interface, so nothing listens
beyond 127.0.0.1.
"""
import json, os, shutil, signal, socket, subprocess, sys, time
from collections import Counter
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
WORKER = str(HERE/'pipeline_ddp_worker.py')
TINY_BENCH = ['--image-size', '48', '--n-train', '16', '--n-val', '4', '--n-ood', '40', '--jobs', '1']
SECTIONS = ('cls', 'wood_train', 'boundary', 'seg_train')
SETS = ['scales=[1.0]', 'prototypes.k=4', 'mining.threshold=0.0', 'cls.epochs=2'] + [
    f'{sec}.{k}={v}' for sec in SECTIONS
    for k, v in (('batch_size', 4), ('crop', 48), ('long_side', '[48,48]'), ('progress', 'false'))] + [
    f'{sec}.epochs=1' for sec in ('wood_train', 'boundary', 'seg_train')]
from wood_nb.config import STEPS   # every step of a run, in order
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}
# float tolerance of DDP against one process: DDP averages the two processes' gradients, one process
# sums the batch in another order; on this tiny run the weights agree to 6e-8 (cls) .. 5e-7 (seg)
RTOL, ATOL = 1e-4, 1e-5


def free_port()->int:
    with socket.socket() as s:                              # a free port on the loopback interface only
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def run_args(bench, out, *extra):
    return ['run', '--root', bench/'voc', '--pool', bench/'ood', '--out', out, '--device', 'cpu',
            *[x for s in SETS for x in ('--set', s)], *extra]


def launch(args, nproc=1, env=None, timeout=600):
    "Run the worker (under torchrun for nproc > 1) in its own process group; kill the group on timeout."
    pre = [sys.executable] if nproc == 1 else [sys.executable, str(HERE/'torchrun_loopback.py'), '--nproc-per-node', str(nproc),
                                               '--master-addr', '127.0.0.1', '--master-port', str(free_port()), '--local-addr', '127.0.0.1']
    p = subprocess.Popen([*pre, WORKER, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**ENV, **(env or {})}, start_new_session=True)
    try: out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate()    # no stray workers survive the test
        pytest.fail(f'{"torchrun" if nproc > 1 else "wood run"} did not finish in {timeout} s')
    return p.returncode, out


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp_pipe')
    r = subprocess.run([sys.executable, '-m', 'wood_nb.cli', 'synth', root/'bench', '--seed', '2', *TINY_BENCH],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    t = time.perf_counter()
    rc1, log1 = launch(run_args(root/'bench', root/'one'))
    t1 = time.perf_counter()
    rc2, log2 = launch(run_args(root/'bench', root/'two'), nproc=2, env={'WOOD_TEST_WRITES': str(root/'writes')})
    print(f'one process {t1 - t:.0f} s, two processes {time.perf_counter() - t1:.0f} s')
    return dict(root=root, bench=root/'bench', one=root/'one', two=root/'two', writes=root/'writes', rc=(rc1, rc2), log=(log1, log2))


def split_ids(bench, split):
    return (bench/'voc'/'ImageSets'/'Segmentation'/f'{split}.txt').read_text().split()


def test_both_runs_finish_every_step(runs):
    for rc, log in zip(runs['rc'], runs['log']): assert rc == 0, log[-4000:]
    for name, procs in (('one', 1), ('two', 2)):
        recs = {s: json.loads((runs[name]/'steps'/f'{s}.json').read_text()) for s in STEPS}
        assert all(r['processes'] == procs for r in recs.values()), name
        assert json.loads((runs[name]/'metrics.json').read_text())['timings_s'].keys() == set(STEPS[:-1])   # the report's own comes after it
        assert not list((runs[name]/'steps').glob('*.started.json'))
    assert runs['log'][1].count('step wood_seeds ...') == 1        # progress printed by rank 0 only
    # the settings fingerprints do not depend on the number of processes
    assert [json.loads((runs['one']/'steps'/f'{s}.json').read_text())['fingerprint'] for s in STEPS] == \
           [json.loads((runs['two']/'steps'/f'{s}.json').read_text())['fingerprint'] for s in STEPS]


def test_sharded_outputs_are_written_once_each(runs):
    bench, run = runs['bench'], runs['two']
    train, val = split_ids(bench, 'train'), split_ids(bench, 'val')
    for pattern, n in [('cam/baseline/*.npz', len(train)), ('cam/wood/*.npz', len(train)), ('refine/baseline/labels/*.png', len(train)),
                       ('refine/wood/labels/*.png', len(train)), ('refine/baseline/masks/*.png', len(train)),
                       ('refine/wood/masks/*.png', len(train)), ('seg/baseline/pred/*.png', len(val)), ('seg/wood/pred/*.png', len(val))]:
        assert len(list(run.glob(pattern))) == n, pattern
    assert not list(run.rglob('*.part')) and not list(run.rglob('.*.removing'))
    # who wrote what: process r wrote items r, r+2, ... of each split, each exactly once; the shared files only rank 0
    logs = [(runs['writes']/f'rank{r}.txt').read_text().split() for r in (0, 1)]
    per_image = lambda p: p.suffix in ('.png', '.npz') and (p.parent.name in ('labels', 'masks', 'pred') or p.parent.parent.name == 'cam')
    mine = [[Path(p) for p in log if per_image(Path(p))] for log in logs]
    assert not [p for p in logs[1] if not per_image(Path(p))]          # rank 1 wrote no shared file
    for folder, ids in [('cam/baseline', train), ('cam/wood', train), ('refine/baseline/labels', train), ('refine/wood/labels', train),
                        ('refine/baseline/masks', train), ('refine/wood/masks', train), ('seg/baseline/pred', val), ('seg/wood/pred', val)]:
        d = (run/folder).resolve()
        for r in (0, 1):
            assert sorted(p.stem for p in mine[r] if p.parent == d) == sorted(ids[r::2]), (folder, r)
    counts = Counter(logs[0] + logs[1])
    again = {p for p, c in counts.items() if c > 1 and Path(p).name not in ('checkpoint.pt', 'history.csv', '.wood_nb.json')}   # checkpoints and history: once per epoch; the marker: once per step (its ledger of owned entries)
    assert not again, sorted(again)[:5]
    shared = {str((run/f).resolve()) for f in ('cls/model.pt', 'wood/model.pt', 'prototypes/mined/prototypes.npz', 'mining/ood_list.txt',
                                               'mining/mining.json', 'eval/baseline.json', 'eval/wood.json', 'refine/wood/masks.json',
                                               'seg/baseline/eval.json', 'metrics.json', 'report.md', 'figures/chain.png')}
    assert shared <= set(logs[0])


def test_ddp_training_matches_one_process(runs):
    one, two = runs['one'], runs['two']
    for f in ('cls/model.pt', 'wood/model.pt', 'refine/baseline/model.pt', 'refine/wood/model.pt', 'seg/baseline/model.pt', 'seg/wood/model.pt'):
        a, b = (torch.load(r/f, weights_only=True) for r in (one, two))
        assert a['state_dict'].keys() == b['state_dict'].keys()
        for k, v in a['state_dict'].items(): torch.testing.assert_close(b['state_dict'][k], v, rtol=RTOL, atol=ATOL, msg=lambda m: f'{f} {k}: {m}')
    ca = torch.load(one/'cls'/'model.pt', weights_only=True)
    assert ca['meta']['train_config']['batch_size'] == 4 and len(ca['meta']['history']) == 2
    # not vacuous: W-OoD fine-tuning moved the weights by far more than the tolerance
    wa = torch.load(one/'wood'/'model.pt', weights_only=True)['state_dict']
    assert max((wa[k].float() - v.float()).abs().max().item() for k, v in ca['state_dict'].items()) > 100*ATOL


def test_metrics_agree(runs):
    a, b = (json.loads((runs[r]/'metrics.json').read_text()) for r in ('one', 'two'))
    for m in ('baseline', 'wood'):
        for k in ('seed_miou', 'mask_miou', 'seg_miou'): assert abs(a[m][k] - b[m][k]) <= 0.05, (m, k, a[m][k], b[m][k])
        assert a[m]['seed_threshold'] == b[m]['seed_threshold']
        assert abs(a[m]['cue_activation'] - b[m]['cue_activation']) <= 1e-3
    assert a['mining'] == b['mining']


def test_an_error_on_rank0_stops_both_processes(runs, tmp_path):
    run = tmp_path/'two'
    shutil.copytree(runs['two'], run)
    rc, log = launch(run_args(runs['bench'], run, '--from', 'mining', '--set', 'mining.threshold=0.9999'), nproc=2, timeout=300)
    assert rc != 0
    # ranking and curation run on rank 0 alone; its error reaches rank 1, which stops with the same message
    assert log.count('error: --threshold: no OoD image was kept: no pool image scored above the threshold.') == 2, log[-3000:]
    assert (run/'mining'/'scores.csv').exists() and not (run/'mining'/'mining.json').exists()
