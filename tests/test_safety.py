"Safe with the user's files: folders the kit does not own are never written, bad checkpoints, options and devices end in a clear error."
import json, os, pickle, stat
from pathlib import Path

import pytest
import torch

from wood_nb.cli import main
from wood_nb.core import MARKER, WoodInputError, claim_dir, own, save_weights, write_text
from wood_nb.model import CAMClassifier, save_classifier
from wood_nb.synth import SynthConfig, generate

os.environ.setdefault('HF_HUB_OFFLINE', '1')
TINY = SynthConfig(image_size=48, n_train=8, n_val=4, n_ood=12)
SETS = ['scales=[1.0]', 'prototypes.k=2', 'mining.threshold=0.0'] + [
    f'{sec}.{k}={v}' for sec in ('cls', 'wood_train', 'boundary', 'seg_train')
    for k, v in (('batch_size', 4), ('crop', 48), ('long_side', '[40,56]'), ('progress', 'false'), ('epochs', 1))]


def snapshot(root):
    "Every path under `root` with its bytes and mode (what a refused command must leave as it was)."
    out = {}
    for p in sorted(Path(root).rglob('*')):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (stat.S_IMODE(st.st_mode), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def wood(capsys, *args):
    "Run the `wood` command in this process; returns (exit status, stderr)."
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, err


def run_args(bench, out, *extra):
    return ['run', '--root', bench/'voc', '--pool', bench/'ood', '--out', out, '--device', 'cpu',
            *[x for s in SETS for x in ('--set', s)], *extra]


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('safety')/'bench', seed=1, cfg=TINY)


@pytest.fixture(scope='module')
def weights(bench, tmp_path_factory):
    d = tmp_path_factory.mktemp('weights')
    classes = (bench/'voc'/'classes.txt').read_text().split()
    save_classifier(CAMClassifier('resnet10t', len(classes), classes=classes), d/'model.pt')
    return d/'model.pt'


@pytest.fixture
def user_dir(tmp_path):
    "A folder of the user's: a config.json, a hidden .part file, a cls/ folder, report.md, metrics.json, figures/."
    u = tmp_path/'mine'
    (u/'cls').mkdir(parents=True); (u/'figures').mkdir()
    (u/'config.json').write_text('{"mine": true}'); (u/'.notes.txt.abc.part').write_text('draft')
    (u/'cls'/'model.pt').write_text('my model'); (u/'report.md').write_text('# my report')
    (u/'metrics.json').write_text('{}'); (u/'figures'/'a.png').write_text('png')
    return u


# --- 1. run folders: only what the kit owns
@pytest.mark.parametrize('extra', [[], ['--from', 'baseline']])
def test_run_refuses_a_folder_it_did_not_create(capsys, bench, user_dir, extra):
    before = snapshot(user_dir)
    rc, err = wood(capsys, *run_args(bench, user_dir, *extra))
    assert rc == 2 and str(user_dir) in err and 'not created by wood_nb' in err and '--out' in err
    assert snapshot(user_dir) == before


def test_demo_refuses_a_folder_it_did_not_create(capsys, user_dir):
    before = snapshot(user_dir)
    rc, err = wood(capsys, 'demo', '--out', user_dir)
    assert rc == 2 and 'not created by wood_nb' in err
    assert snapshot(user_dir) == before


@pytest.mark.parametrize('which', ['voc', 'ood', 'voc/JPEGImages'])
def test_run_refuses_an_input_root_as_out(capsys, bench, which):
    before = snapshot(bench)
    rc, err = wood(capsys, *run_args(bench, bench/which))
    assert rc == 2 and 'input folder' in err
    assert snapshot(bench) == before


def test_from_deletes_only_what_the_kit_recorded(capsys, bench, tmp_path):
    "A marked run folder in which the user put a step's output folder: --from refuses rather than deleting it."
    run = claim_dir(tmp_path/'run')
    own(run, ['config.json', 'steps'])
    (run/'figures').mkdir(); (run/'figures'/'mine.png').write_text('mine')
    (run/'.report.md.x1.part').write_text('not the kit temp of an owned entry')
    before = snapshot(run)
    rc, err = wood(capsys, *run_args(bench, run, '--from', 'report'))
    assert rc == 2 and 'figures' in err and 'not written by wood_nb' in err
    assert snapshot(run) == before


def test_clean_partial_touches_only_owned_entries(tmp_path):
    from wood_nb.pipeline import clean_partial
    run = claim_dir(tmp_path/'run'); own(run, ['cls', 'metrics.json'])
    (run/'cls').mkdir(); (run/'cls'/'.model.pt.abc.part').write_text('killed write')
    (run/'.metrics.json.xyz.part').write_text('killed write')
    (run/'mine').mkdir(); (run/'mine'/'.x.part').write_text('user')
    (run/'.other.part').write_text('user')
    assert clean_partial(run) == 2
    assert not (run/'cls'/'.model.pt.abc.part').exists() and not (run/'.metrics.json.xyz.part').exists()
    assert (run/'mine'/'.x.part').exists() and (run/'.other.part').exists()


@pytest.mark.parametrize('cmd', ['cam', 'mine'])
def test_stage_commands_refuse_a_user_folder(capsys, bench, weights, user_dir, cmd):
    before = snapshot(user_dir)
    args = (['cam', bench/'voc', '--weights', weights, '--out', user_dir, '--device', 'cpu'] if cmd == 'cam'
            else ['mine', bench/'ood', '--weights', weights, '--out', user_dir, '--device', 'cpu'])
    rc, err = wood(capsys, *args)
    assert rc == 2 and 'not created by wood_nb' in err
    assert snapshot(user_dir) == before


def test_stage_command_reuses_its_own_folder(capsys, bench, weights, tmp_path):
    out = tmp_path/'cams'
    for _ in range(2):
        rc, err = wood(capsys, 'cam', bench/'voc', '--weights', weights, '--out', out, '--device', 'cpu', '--scales', 1.0, '--split', 'val')
        assert rc == 0, err
    assert (out/MARKER).is_file() and len(list(out.glob('*.npz'))) == 4


def test_synth_overwrite_replaces_only_a_benchmark(capsys, user_dir):
    before = snapshot(user_dir)
    rc, err = wood(capsys, 'synth', user_dir, '--overwrite', '--image-size', 48, '--n-train', 4, '--n-val', 2, '--n-ood', 4, '--jobs', 1)
    assert rc == 2 and 'not a benchmark folder written by wood_nb' in err
    assert snapshot(user_dir) == before


def test_json_output_never_overwrites_a_user_file(capsys, bench, tmp_path):
    f = tmp_path/'README.md'; f.write_text('my notes')
    rc, err = wood(capsys, 'eval-cam', bench/'voc', '--cams', tmp_path, '--json', f)
    assert rc == 2 and 'README.md' in err and f.read_text() == 'my notes'


# --- 3. a clear error for every bad input
def test_out_that_is_a_file_or_cannot_be_created(capsys, bench, tmp_path):
    f = tmp_path/'file.txt'; f.write_text('x')
    rc, err = wood(capsys, *run_args(bench, f))
    assert rc == 2 and 'is not a folder' in err and f.read_text() == 'x'
    rc, err = wood(capsys, *run_args(bench, f/'sub'))
    assert rc == 2 and 'Traceback' not in err and 'sub' in err


def test_out_not_writable(capsys, bench, tmp_path, monkeypatch):
    "A folder the user may not write (simulated: this test runs as root, which may write anywhere)."
    ro = tmp_path/'ro'; ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, m, *a, **k: False if Path(p) == ro/'run' else real(p, m, *a, **k))
    rc, err = wood(capsys, *run_args(bench, ro/'run'))
    assert rc == 2 and 'cannot be created or written' in err and 'Permission denied' in err


@pytest.fixture
def bad_checkpoints(tmp_path, weights):
    class Evil:
        def __reduce__(self): return (os.system, ('echo pwned > /dev/null',))
    d = tmp_path/'ck'; d.mkdir()
    (d/'truncated.pt').write_bytes(weights.read_bytes()[:4000])
    (d/'text.pt').write_text('not a checkpoint')
    torch.save({'x': Evil()}, d/'evil.pt')
    torch.save({'conv.weight': torch.zeros(2)}, d/'foreign.pt')
    save_weights({'format': 'wood_nb.cam_classifier/1', 'config': {}, 'state_dict': {}}, d/'damaged.pt')
    return d


@pytest.mark.parametrize('name,says', [('truncated.pt', 'truncated'), ('text.pt', 'not a readable PyTorch weights file'),
                                       ('evil.pt', 'could run code'), ('foreign.pt', 'is not a CAM classifier checkpoint written by wood_nb'),
                                       ('damaged.pt', 'checkpoint')])
def test_bad_checkpoints_name_the_file(capsys, bench, bad_checkpoints, tmp_path, name, says):
    rc, err = wood(capsys, 'cam', bench/'voc', '--weights', bad_checkpoints/name, '--out', tmp_path/'out', '--device', 'cpu')
    assert rc == 2 and name in err and says in err, err
    assert 'weights_only' not in err and 'Traceback' not in err and len(err.splitlines()) <= 3
    assert not (tmp_path/'out').exists()


@pytest.mark.parametrize('setting,says', [('cls.lr=-0.1', "'cls.lr'"), ('cls.epochs=-3', "'cls.epochs'"), ('mining.top_k=abc', "'mining.top_k'"),
                                          ('mining.threshold=2', '[0, 1]'), ('scales=[0]', "'scales'"), ('wood.tau=1.5', 'tau'),
                                          ('boundary.long_side=[60,40]', 'lo <= hi'), ('cls.seed=-1', "'cls.seed'")])
def test_config_values_out_of_range(capsys, bench, tmp_path, setting, says):
    rc, err = wood(capsys, *run_args(bench, tmp_path/'run'), '--set', setting)
    assert rc == 2 and says in err, err
    assert not (tmp_path/'run').exists()


@pytest.mark.parametrize('device,says', [('tpu:9', 'not a device name'), ('xla', 'not a device this kit runs on'),
                                         ('cuda:7', 'cuda:7')])
def test_unknown_or_missing_device(capsys, bench, tmp_path, device, says):
    if device.startswith('cuda') and torch.cuda.device_count() > 7: pytest.skip('this machine has 8 GPUs')
    args = [a if a != 'cpu' else device for a in run_args(bench, tmp_path/'run')]
    rc, err = wood(capsys, *args)
    assert rc == 2 and '--device' in err and says in err, err
    assert not (tmp_path/'run').exists()


# --- 5. modes follow the umask
def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path/'a'/'x.txt', 'x')
        bench = generate(tmp_path/'b', seed=0, cfg=SynthConfig(image_size=32, n_train=2, n_val=1, n_ood=2))
        run = claim_dir(tmp_path/'run')
    finally: os.umask(old)
    assert stat.S_IMODE((tmp_path/'a'/'x.txt').stat().st_mode) == 0o644
    assert stat.S_IMODE(bench.stat().st_mode) == 0o755
    assert stat.S_IMODE((bench/'voc'/'classes.txt').stat().st_mode) == 0o644
    assert stat.S_IMODE((run/MARKER).stat().st_mode) == 0o644


def test_a_refused_stage_command_leaves_no_output_folder(capsys, bench, bad_checkpoints, tmp_path):
    rc, err = wood(capsys, 'eval-seg', bench/'voc', '--weights', bad_checkpoints/'text.pt', '--out', tmp_path/'pred', '--device', 'cpu')
    assert rc == 2 and 'text.pt' in err
    assert not (tmp_path/'pred').exists()


@pytest.mark.parametrize('args,says', [
    (['train-cls', '{voc}', '--out', '{out}', '--epochs', '-3'], '--epochs'),
    (['train-cls', '{voc}', '--out', '{out}', '--lr', '-0.1'], '--lr'),
    (['train-cls', '{voc}', '--out', '{out}', '--device', 'tpu:9'], '--device'),
    (['mine', '{ood}', '--weights', '{w}', '--out', '{out}', '--threshold', '1.5'], '--threshold'),
    (['cam', '{voc}', '--weights', '{w}', '--out', '{out}', '--batch-size', '0'], '--batch-size'),
    (['prototypes', '{voc}', '--weights', '{w}', '--pool', '{ood}', '--ood-list', 'ood_list.txt', '--out', '{out}', '--k', '0'], '--k'),
    (['synth', '{out}', '--seed', '-1'], '--seed'),
    (['demo', '--out', '{out}', '--seed', '-5'], '--seed'),
    (['run', '--root', '{voc}', '--pool', '{ood}', '--out', '{out}', '--config', '{voc}'], 'is not a file'),
])
def test_stage_command_options_out_of_range(capsys, bench, weights, tmp_path, args, says):
    args = [a.format(voc=bench/'voc', ood=bench/'ood', out=tmp_path/'out', w=weights) for a in args]
    try: rc = main(args)
    except SystemExit as e: rc = e.code                     # argparse refuses a typed option itself
    err = capsys.readouterr().err
    assert rc == 2 and says in err and 'Traceback' not in err, err
    assert not (tmp_path/'out').exists()


def test_run_refuses_a_kit_folder_of_another_kind(capsys, bench):
    "A benchmark folder carries the marker too, but a run does not write into it."
    before = snapshot(bench)
    rc, err = wood(capsys, *run_args(bench, bench))
    assert rc == 2 and 'not a run folder' in err
    assert snapshot(bench) == before


def test_damaged_step_record_names_itself(capsys, bench, tmp_path):
    run = claim_dir(tmp_path/'run'); own(run, ['steps']); (run/'steps').mkdir()
    (run/'steps'/'baseline.json').write_text('{"fingerprint": ')
    rc, err = wood(capsys, *run_args(bench, run))
    assert rc == 2 and 'baseline.json' in err and '--from baseline' in err
