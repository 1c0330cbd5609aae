"The `wood` command end to end on tiny data: exit codes, messages, and the classifier -> CAM -> evaluation chain."
import io, json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from wood_nb.cli import main, run_demo
from wood_nb.config import DEMO_PROFILES
from wood_nb.model import load_classifier
from wood_nb.segment import load_segmenter
from wood_nb.synth import SynthConfig
from wood_nb.train import TrainConfig

WOOD = [sys.executable, '-c', 'import sys; from wood_nb.cli import main; sys.exit(main())']
TINY = ['--image-size', '48', '--n-train', '16', '--n-val', '4', '--n-ood', '6', '--jobs', '1']


def wood(*args, cwd=None):
    return subprocess.run([*WOOD, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg'}, timeout=600)


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp('cli')/'bench'
    r = wood('synth', out, '--seed', 1, *TINY)
    assert r.returncode == 0, r.stderr
    return out


def test_validate_ok_and_broken(bench, tmp_path):
    r = wood('validate', bench)
    assert r.returncode == 0 and 'problem' not in r.stdout, r.stdout + r.stderr
    import shutil
    broken = tmp_path/'broken'; shutil.copytree(bench/'voc', broken)
    (broken/'JPEGImages'/'train_00003.jpg').write_bytes(b'not a jpeg')
    (broken/'ImageSets/Segmentation/val.txt').write_text('val_00000\nval_09999\n')
    r = wood('validate', broken)
    assert r.returncode == 1
    assert 'train_00003.jpg' in r.stdout and 'val_09999' in r.stdout and 'Fix:' in r.stdout
    r = wood('validate', tmp_path/'missing')
    assert r.returncode == 2 and 'does not exist' in r.stderr


def test_bad_options_are_refused_before_work(bench, tmp_path):
    r = wood('synth', tmp_path/'x', '--cue-rate', '1.5')
    assert r.returncode == 2 and 'SynthConfig.cue_rate' in r.stderr and not (tmp_path/'x').exists()
    r = wood('train-cls', tmp_path/'nowhere', '--out', tmp_path/'cls')
    assert r.returncode == 2 and 'does not exist' in r.stderr
    r = wood('train-cls', bench/'voc', '--out', tmp_path/'cls', '--split', 'nosuch')
    assert r.returncode == 2 and 'nosuch' in r.stderr and not (tmp_path/'cls'/'model.pt').exists()


def test_classifier_cam_eval_chain(bench, tmp_path):
    voc = bench/'voc'
    r = wood('train-cls', voc, '--out', tmp_path/'cls', '--epochs', 1, '--batch-size', 8, '--crop', 48, '--long-side', 40, 56, '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path/'cls'/'model.pt').exists()
    r = wood('cam', voc, '--weights', tmp_path/'cls'/'model.pt', '--out', tmp_path/'cams', '--scales', 1.0, 0.5)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.stem for p in (tmp_path/'cams').glob('*.npz')) == (voc/'ImageSets/Segmentation/train.txt').read_text().split()
    r = wood('eval-cam', voc, '--cams', tmp_path/'cams', '--json', tmp_path/'e.json')
    assert r.returncode == 0, r.stderr[-3000:]
    block = json.loads((tmp_path/'e.json').read_text())
    assert 0 <= block['seed_miou'] <= 100 and 0.05 <= block['seed_threshold'] <= 0.95 and 0 <= block['cue_activation'] <= 1
    assert f"seed mIoU {block['seed_miou']:.2f}" in r.stdout
    r = wood('eval-cam', voc, '--cams', tmp_path/'cams', '--split', 'val')
    assert r.returncode == 2 and 'no CAM record' in r.stderr


TINY_RUN = {'scales': [1.0], 'prototypes.k': 4, 'mining.threshold': 0.0,
            **{f'{sec}.{k}': v for sec in ('cls', 'wood_train', 'boundary', 'seg_train')
               for k, v in dict(epochs=1, batch_size=4, crop=48, long_side=[40, 56], progress=False).items()}}


# the quick profile's segmentation: DeepLab's head on each model's own frozen classifier backbone
QUICK_SEG = {k: v for k, v in DEMO_PROFILES['quick'][1].items() if k.startswith('seg.')} | {'seg_train.long_side': [48, 48]}


def test_demo_small(tmp_path):
    cfg = SynthConfig(image_size=48, n_train=16, n_val=4, n_ood=40)
    log = io.StringIO()
    m = run_demo(tmp_path/'run', seed=0, cfg=cfg, overrides=TINY_RUN | QUICK_SEG, workers=1, device='cpu', log=log)
    on_disk = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert on_disk == json.loads(json.dumps(m))
    for block in ('baseline', 'wood'):
        assert set(on_disk[block]) >= {'seed_miou', 'seed_threshold', 'cue_activation', 'per_class_iou', 'mask_miou', 'seg_miou'}
        for k in ('seed_miou', 'mask_miou', 'seg_miou'): assert 0 <= on_disk[block][k] <= 100
        masks = json.loads((tmp_path/'run'/'refine'/block/'masks.json').read_text())
        seg = json.loads((tmp_path/'run'/'seg'/block/'eval.json').read_text())
        assert on_disk[block]['mask_miou'] == round(masks['miou'], 2) and on_disk[block]['seg_miou'] == round(seg['miou'], 2)
        assert masks['planes']['mode'] == 'seed' and masks['planes']['fg_thresh'] == on_disk[block]['seed_threshold']
        assert len(list((tmp_path/'run'/'seg'/block/'pred').glob('*.png'))) == 4
    assert on_disk['mining']['kept'] >= 8 and on_disk['mining']['foreground_share_kept'] == 0   # the annotator removed the contaminated
    assert {'baseline', 'mining', 'wood', 'refine', 'segment'} <= set(on_disk['timings_s'])
    for f in ('benchmark.png', 'config.json', 'report.md', 'figures/cams.png', 'figures/wood_history.png', 'cls/model.pt', 'wood/model.pt',
              'mining/ood_list.txt', 'prototypes/mined/prototypes.npz', 'figures/chain.png', 'figures/class_change_masks.png',
              'figures/class_change_seg.png', 'refine/wood/model.pt', 'seg/baseline/model.pt'):
        assert (tmp_path/'run'/f).exists(), f
    assert json.loads((tmp_path/'run'/'config.json').read_text())['cls']['seed'] == 0
    for block, clf in (('baseline', 'cls'), ('wood', 'wood')):                # each segmenter kept its own classifier's backbone
        seg, c = load_segmenter(tmp_path/'run'/'seg'/block/'model.pt'), load_classifier(tmp_path/'run'/clf/'model.pt')
        assert seg.meta['freeze_backbone'] is True and seg.output_stride == 16 and seg.rates == (1, 2, 3) and seg.aspp.dropout == 0.5
        for k, v in c.backbone.state_dict().items(): assert torch.equal(seg.backbone.state_dict()[k], v), (block, k)
    assert 'W-OoD' in log.getvalue() and f"{m['wood']['seed_miou']:15.1f}" in log.getvalue() and f"{m['wood']['seg_miou']:15.1f}" in log.getvalue()
    again = run_demo(tmp_path/'run', seed=0, cfg=cfg, overrides=TINY_RUN | QUICK_SEG, workers=1, device='cpu', log=io.StringIO())
    assert again == m                                                          # a rerun reuses every finished step
    for step in ('wood', 'report'):                                            # one step of a finished run: skipped, exit 0
        assert main(['run', '--out', str(tmp_path/'run'), '--only', step]) == 0   # (`--only wood` crashed printing the summary)


def test_mine_and_prototypes_commands(bench, tmp_path):
    voc, pool = bench/'voc', bench/'ood'
    r = wood('train-cls', voc, '--out', tmp_path/'cls', '--epochs', 1, '--batch-size', 8, '--crop', 48, '--long-side', 40, 56, '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    r = wood('mine', pool, '--weights', tmp_path/'cls'/'model.pt', '--out', tmp_path/'mining', '--threshold', 0.0)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path/'mining'/'mining.json').read_text())
    kept = (tmp_path/'mining'/'ood_list.txt').read_text().split()
    meta = {l.split(',')[0]: l.split(',')[1] for l in (pool/'ood_meta.csv').read_text().splitlines()[1:]}
    assert kept and all(meta[p] == '0' for p in kept)             # the simulated annotator removed every contaminated image
    assert len(kept) == len([p for p, f in meta.items() if f == '0'])   # threshold 0: every clean candidate kept
    r = wood('prototypes', voc, '--weights', tmp_path/'cls'/'model.pt', '--pool', pool, '--ood-list', tmp_path/'mining'/'ood_list.txt',
             '--out', tmp_path/'protos', '--k', 2, '--iters', 3)
    assert r.returncode == 0, r.stderr[-3000:]
    from wood_nb.prototypes import load_prototypes
    p = load_prototypes(tmp_path/'protos'/'prototypes.npz')
    assert tuple(p['class_protos'].shape)[0] == 6 and tuple(p['ood_protos'].shape)[0] == 2
    r = wood('mine', pool, '--weights', tmp_path/'cls'/'model.pt', '--out', tmp_path/'m2', '--threshold', 1.5)
    assert r.returncode == 2 and 'threshold' in r.stderr
    r = wood('train-wood', voc, '--weights', tmp_path/'cls'/'model.pt', '--pool', pool, '--ood-list', tmp_path/'mining'/'ood_list.txt',
             '--prototypes', tmp_path/'protos'/'prototypes.npz', '--out', tmp_path/'wood', '--epochs', 1, '--batch-size', 2,
             '--crop', 48, '--long-side', 40, 56, '--no-progress', '--lam', 0.2, '--normalize')
    assert r.returncode == 0, r.stderr[-3000:]
    from wood_nb.model import load_classifier
    meta = load_classifier(tmp_path/'wood'/'model.pt').meta
    assert meta['wood_config']['lam'] == 0.2 and meta['wood_config']['normalize'] is True and meta['wood_config']['gamma'] == 0.25
    assert meta['train_config']['epochs'] == 1 and meta['train_config']['lr'] == TrainConfig.preset('synthetic').lr   # the baseline's preset
    assert 'W-OoD classifier' in r.stdout
    r = wood('train-wood', voc, '--weights', tmp_path/'cls'/'model.pt', '--pool', pool, '--ood-list', tmp_path/'mining'/'ood_list.txt',
             '--prototypes', tmp_path/'nope.npz', '--out', tmp_path/'w2')
    assert r.returncode == 2 and 'nope.npz' in r.stderr and 'prototypes.npz' in r.stderr
    r = wood('train-wood', voc, '--weights', tmp_path/'cls'/'model.pt', '--pool', pool, '--ood-list', tmp_path/'mining'/'ood_list.txt',
             '--prototypes', tmp_path/'protos'/'prototypes.npz', '--out', tmp_path/'w3', '--tau', 1.5)
    assert r.returncode == 2 and 'tau' in r.stderr and not (tmp_path/'w3').exists()


def test_train_seg_and_eval_seg_commands(bench, tmp_path):
    voc = bench/'voc'
    r = wood('train-seg', voc, '--masks', 'SegmentationClass', '--out', tmp_path/'seg', '--epochs', 1, '--batch-size', 4,
             '--crop', 48, '--long-side', 40, 56, '--no-progress', '--balanced')
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path/'seg'/'model.pt').exists() and 'segmenter' in r.stdout
    r = wood('eval-seg', voc, '--weights', tmp_path/'seg'/'model.pt', '--out', tmp_path/'pred', '--split', 'val', '--json', tmp_path/'s.json')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path/'s.json').read_text())
    assert 0 <= res['miou'] <= 100 and res['images'] == 4 and f"seg mIoU {res['miou']:.2f}" in r.stdout
    assert len(list((tmp_path/'pred').glob('*.png'))) == 4
    r = wood('train-seg', voc, '--masks', tmp_path/'nowhere', '--out', tmp_path/'seg2')
    assert r.returncode == 2 and 'mask folder does not exist' in r.stderr and not (tmp_path/'seg2'/'model.pt').exists()


def test_refine_command(bench, tmp_path):
    voc = bench/'voc'
    r = wood('train-cls', voc, '--out', tmp_path/'cls', '--epochs', 1, '--batch-size', 8, '--crop', 48, '--long-side', 40, 56, '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    r = wood('cam', voc, '--weights', tmp_path/'cls'/'model.pt', '--out', tmp_path/'cams', '--scales', 1.0)
    assert r.returncode == 0, r.stderr[-3000:]
    r = wood('cam', voc, '--weights', tmp_path/'cls'/'model.pt', '--out', tmp_path/'adv', '--scales', 1.0, '--method', 'advcam', '--adv-steps', 2)
    assert r.returncode == 0, r.stderr[-3000:]
    from wood_nb.cam import load_cam_record
    recs = sorted((tmp_path/'cams').glob('*.npz'))
    assert len(recs) == len(list((tmp_path/'adv').glob('*.npz'))) > 0
    plain, adv = load_cam_record(recs[0]), load_cam_record(tmp_path/'adv'/recs[0].name)
    assert (plain['keys'] == adv['keys']).all() and plain['cam'].shape == adv['cam'].shape
    assert abs(adv['cam'].sum() - plain['cam'].sum()) > 1e-3 * abs(plain['cam'].sum())   # three accumulated maps, not one
    r = wood('refine', voc, '--cams', tmp_path/'cams', '--out', tmp_path/'refine', '--epochs', 1, '--batch-size', 4,
             '--crop', 48, '--long-side', 40, 56, '--no-progress', '--radius', 3, '--logt', 4)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path/'refine'/'masks.json').read_text())
    n = len((voc/'ImageSets'/'Segmentation'/'train.txt').read_text().split())
    assert len(list((tmp_path/'refine'/'masks').glob('*.png'))) == n and 0 <= res['miou'] <= 100
    assert f"mask mIoU {res['miou']:.2f}" in r.stdout and (tmp_path/'refine'/'model.pt').exists()
    r = wood('refine', voc, '--cams', tmp_path/'nocams', '--out', tmp_path/'r2')
    assert r.returncode == 2 and 'nocams' in r.stderr


# --- one vocabulary (parser level, no work) ---------------------------------------------------------------------------
# each shared concept: its parsed name, its one spelling, and the sub-commands whose help shows it
VOCABULARY = {'weights': ('--weights', {'cam', 'mine', 'prototypes', 'train-wood', 'eval-seg'}),
              'pool': ('--pool', {'prototypes', 'train-wood', 'run'}),
              'root': ('--root', {'run'}),                                   # the stage commands take ROOT as their first argument
              'ood_list': ('--ood-list', {'prototypes', 'train-wood'}),       # the curated (mined) list
              'pool_list': ('--pool-list', {'validate', 'mine'}),             # the name of the pool's candidate list file
              'num_workers': ('--num-workers', {'train-cls', 'train-wood', 'refine', 'train-seg', 'run', 'demo'}),
              'jobs': ('--jobs', {'synth', 'convert-coco', 'demo'}),
              'method': ('--method', {'cam'})}
OLD_SPELLINGS = {'--voc-root': '--root', '--ood-root': '--pool', '--baseline': '--weights', '--list-file': '--pool-list',
                 '--workers': '--jobs', '--seeds': '--method'}


def subcommands():
    import argparse
    from wood_nb.cli import build_parser
    p = build_parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_one_spelling_per_concept():
    "Every sub-command's help spells the shared concepts one way: no old spelling shows, and each concept's option has its one name."
    import argparse, re
    old = re.compile(r'(?<![\w-])(' + '|'.join(map(re.escape, OLD_SPELLINGS)) + r')\b')
    spelling = {name: dest for dest, (name, _) in VOCABULARY.items()}
    shown = {dest: set() for dest in VOCABULARY}
    for cmd, sp in subcommands().items():
        assert not old.search(sp.format_help()), (cmd, old.findall(sp.format_help()))
        for a in sp._actions:
            if not a.option_strings or a.help is argparse.SUPPRESS: continue
            if a.dest in VOCABULARY:
                assert a.option_strings == [VOCABULARY[a.dest][0]], (cmd, a.dest, a.option_strings)
                shown[a.dest].add(cmd)
            for o in a.option_strings:       # a concept's spelling means that concept and nothing else
                assert o not in spelling or a.dest == spelling[o], (cmd, o, a.dest)
    assert shown == {dest: cmds for dest, (_, cmds) in VOCABULARY.items()}


OLD_CASES = [  # (the rest of the command line, old spelling, value, parsed name, parsed value: never the default)
    (['run', '--out', 'o'], '--voc-root', 'R', 'root', Path('R')),
    (['run', '--out', 'o'], '--ood-root', 'P', 'pool', Path('P')),
    (['train-wood', 'r', '--pool', 'p', '--ood-list', 'l', '--prototypes', 'x', '--out', 'o'], '--baseline', 'm.pt', 'weights', Path('m.pt')),
    (['validate', 'r'], '--list-file', 'cands.txt', 'pool_list', 'cands.txt'),
    (['mine', 'p', '--weights', 'm', '--out', 'o'], '--list-file', 'cands.txt', 'pool_list', 'cands.txt'),
    (['synth', 'o'], '--workers', '3', 'jobs', 3),
    (['convert-coco', 'c', '--out', 'o'], '--workers', '4', 'jobs', 4),
    (['demo', '--out', 'o'], '--workers', '5', 'jobs', 5),
    (['cam', 'r', '--weights', 'w', '--out', 'o'], '--seeds', 'advcam', 'method', 'advcam'),
]


@pytest.mark.parametrize('rest, old, value, dest, want', OLD_CASES, ids=[f'{c[0][0]}{c[1]}' for c in OLD_CASES])
def test_old_spelling_parses_with_a_warning(rest, old, value, dest, want, capsys):
    "An old spelling gives the same value as the new one, and one warning line on stderr; the new one none."
    from wood_nb.cli import build_parser
    new = OLD_SPELLINGS[old]
    p = build_parser()
    a_new = p.parse_args([*rest, new, value])
    assert capsys.readouterr().err == ''
    a_old = p.parse_args([*rest, old, value])
    assert capsys.readouterr().err == f'warning: {old} is deprecated; use {new} (it will be removed in the next release)\n'
    assert getattr(a_old, dest) == getattr(a_new, dest) == want
    assert vars(a_old) == vars(a_new)


def test_old_spelling_fills_a_required_option_and_keeps_its_checks(capsys):
    "`--baseline` fills train-wood's required --weights (which stays required afterwards); an old spelling's value is checked like the new one's."
    from wood_nb.cli import build_parser
    p = build_parser()
    rest = ['train-wood', 'r', '--pool', 'p', '--ood-list', 'l', '--prototypes', 'x', '--out', 'o']
    assert p.parse_args([*rest, '--baseline', 'm.pt']).weights == Path('m.pt')
    capsys.readouterr()
    with pytest.raises(SystemExit): p.parse_args(rest)
    assert 'the following arguments are required: --weights' in capsys.readouterr().err
    for argv, err in ((['convert-coco', 'c', '--out', 'o', '--workers', '0'], 'give an integer >= 1'),
                      (['cam', 'r', '--weights', 'w', '--out', 'o', '--seeds', 'gradcam'], "invalid choice: 'gradcam'")):
        with pytest.raises(SystemExit): p.parse_args(argv)
        assert err in capsys.readouterr().err



def test_missing_option_with_an_old_spelling_fails_naming_the_new_one(capsys):
    "Neither --weights nor --baseline: exit 2, argparse's words naming --weights; no parse changes an option's `required` flag."
    import argparse
    from wood_nb.cli import build_parser
    rest = ['train-wood', 'r', '--pool', 'p', '--ood-list', 'l', '--prototypes', 'x', '--out', 'o']
    with pytest.raises(SystemExit) as e: main(rest)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith('wood train-wood: error: the following arguments are required: --weights\n'), err
    assert 'usage: wood train-wood [-h] --weights WEIGHTS' in err                # the usage line shows it as required
    p = build_parser()
    tw = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices['train-wood']
    before = {x.dest: x.required for x in tw._actions}
    p.parse_args([*rest, '--baseline', 'm.pt']); capsys.readouterr()
    with pytest.raises(SystemExit): p.parse_args(rest)
    assert {x.dest: x.required for x in tw._actions} == before


def test_help_shows_every_default():
    "Every option of every sub-command with a default shows it in --help; the presets' model settings shown are the real ones."
    import argparse
    from wood_nb.model import PACKAGE_WEIGHTS, PRESETS
    from wood_nb.pipeline import DEFAULT_PLANES
    from wood_nb.refine import BOUNDARY_PRESETS
    from wood_nb.segment import SEG_PRESETS
    helps = {}
    for cmd, sp in subcommands().items():
        helps[cmd] = ' '.join(sp.format_help().split())
        for x in sp._actions:
            if not x.option_strings or x.help is argparse.SUPPRESS or x.default in (None, argparse.SUPPRESS): continue
            if x.nargs == 0 and not isinstance(x, argparse.BooleanOptionalAction): continue   # a flag
            assert 'default' in x.help or 'official:' in x.help, (cmd, x.option_strings, x.help)
    assert "the preset's" not in ' '.join(helps.values())
    per = lambda f: 'default: ' + ', '.join(f'{f(name)} ({name})' for name in ('synthetic', 'voc', 'coco'))
    assert 'timm model name (' + per(lambda n: PRESETS[n]['backbone']) + ')' in helps['train-cls']
    assert '--output-stride {8,16,32} ' + per(lambda n: PRESETS[n]['output_stride']) in helps['train-cls']
    assert 'timm model name (' + per(lambda n: SEG_PRESETS[n]['backbone']) + ')' in helps['train-seg']
    for cmd, presets in (('train-cls', PRESETS), ('train-seg', SEG_PRESETS)):
        assert [n for n, c in presets.items() if c['pretrained']] == ['synthetic'] and presets['synthetic']['pretrained'] == PACKAGE_WEIGHTS
        assert f'(default: {PACKAGE_WEIGHTS} (synthetic); voc, coco: none, give a file)' in helps[cmd]
    assert '(' + per(lambda n: BOUNDARY_PRESETS[n]['radius']) + ')' in helps['refine']
    for k in ('radius', 'logt'): assert '(' + per(lambda n: BOUNDARY_PRESETS[n]['walk'][k]) + ')' in helps['refine']
    assert '(default: auto: ' + per(lambda n: DEFAULT_PLANES[n])[len('default: '):] + ')' in helps['refine']
    assert '--split SPLIT default: train' in helps['cam'] and '--k K default: 50' in helps['prototypes']

def test_version(capsys):
    "`wood --version` prints the package's version (the one settings.ini releases) and exits 0."
    import configparser, wood_nb
    ini = configparser.ConfigParser(); ini.read(Path(__file__).parents[1]/'settings.ini')
    with pytest.raises(SystemExit) as e: main(['--version'])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"wood_nb {wood_nb.__version__}\n" == f"wood_nb {ini['DEFAULT']['version']}\n"
