"`wood run --print-config` and `--dry-run`: the resolved settings and the plan, with nothing written."
import json, os, subprocess, sys
from pathlib import Path

import pytest

from wood_nb.synth import SynthConfig, generate

WOOD = [sys.executable, '-m', 'wood_nb.cli']
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}


def wood(*args):
    return subprocess.run([*WOOD, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('plan')/'bench', seed=3, cfg=SynthConfig(image_size=48, n_train=8, n_val=4, n_ood=12))


def test_print_config_resolves_preset_config_and_sets(tmp_path):
    (tmp_path/'c.json').write_text(json.dumps({'wood': {'lam': 0.01}, 'cls.epochs': 4}))
    r = wood('run', '--preset', 'voc', '--out', tmp_path/'run', '--config', tmp_path/'c.json', '--set', 'cls.epochs=2', '--print-config')
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg['preset'] == 'voc' and cfg['split'] == 'train_aug' and cfg['score_split'] == 'train'
    assert cfg['cls']['epochs'] == 2 and cfg['wood']['lam'] == 0.01 and cfg['cls']['lr'] == 0.1   # --set wins over --config; the rest is the preset's
    assert not (tmp_path/'run').exists()


def test_dry_run_checks_and_plans_without_writing(bench, tmp_path):
    r = wood('run', '--root', bench/'voc', '--pool', bench/'ood', '--out', tmp_path/'run', '--dry-run', '--set', 'cls.epochs=2')
    assert r.returncode == 0, r.stderr
    assert '8 training images (train), 4 evaluation images (val), 12 pool images' in r.stdout
    assert r.stdout.count('would run') == 10 and 'min on 2 CPU cores' in r.stdout and 'rough total' in r.stdout
    assert not (tmp_path/'run').exists()
    r = wood('run', '--root', bench/'voc', '--pool', bench/'ood', '--out', bench, '--dry-run')   # the checks of a real run
    assert r.returncode == 2 and 'not a run folder' in r.stderr


def test_help_shows_real_defaults_and_version():
    import wood_nb
    r = wood('train-seg', '--help')
    assert r.returncode == 0 and 'default: 12 (synthetic), 28 (voc)' in r.stdout          # DeepLab-v2 epochs of each preset
    r = wood('refine', '--help')
    assert 'default: 3 (synthetic), 3 (voc)' in r.stdout and "the preset's" not in r.stdout.split('--epochs')[1][:80]
    r = wood('--version')
    assert r.returncode == 0 and r.stdout.strip() == f'wood_nb {wood_nb.__version__}'


def test_segmentation_settings_checked_before_any_work(bench, tmp_path):
    "seg.init, seg.rates and seg.freeze_backbone: bad values are refused by name; the frozen recipe is priced as such."
    base = ['run', '--root', bench/'voc', '--pool', bench/'ood', '--out', tmp_path/'run', '--dry-run']
    for sets, msg in ((['seg.init=resnet'], "'seg.init'"), (['seg.rates=[0]'], "'seg.rates'"), (['seg.freeze_backbone=3'], "'seg.freeze_backbone'")):
        r = wood(*base, *[x for s in sets for x in ('--set', s)])
        assert r.returncode == 2 and msg in r.stderr, (sets, r.stderr)
    r = wood('run', '--preset', 'voc', '--out', tmp_path/'v', '--set', 'seg.init=classifier', '--print-config')
    assert r.returncode == 2 and 'is not its classifier' in r.stderr                  # voc: a ResNet-101 segmenter, a ResNet-50 classifier
    assert not (tmp_path/'run').exists() and not (tmp_path/'v').exists()
    from wood_nb.config import DEMO_PROFILES
    from wood_nb.runconfig import run_config
    from wood_nb.pipeline import estimate_seconds
    q = run_config('synthetic', DEMO_PROFILES['quick'][1])
    counts = dict(train=320, eval=80, pool=320)
    frozen, whole = estimate_seconds(q, 'segment', counts), estimate_seconds(run_config('synthetic', {**DEMO_PROFILES['quick'][1], 'seg.freeze_backbone': False}), 'segment', counts)
    assert 30 < frozen < 120 < whole                                                    # the quick demo measured 48.7 s for both networks
