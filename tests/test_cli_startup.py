"The `wood` parser is built without torch: `wood --help` and every `wood COMMAND --help` start fast (times: benchmarks/bench_help.py)."
import json, subprocess, sys

HEAVY = ('torch', 'torchvision', 'timm', 'matplotlib', 'PIL', 'numpy')

CHILD = r'''
import argparse, contextlib, io, json, sys
import wood_nb.cli as cli
p = cli.build_parser()
helps = {'': p.format_help()}
sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
for cmd in sub.choices:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try: cli.main([cmd, '--help'])
        except SystemExit as e: assert e.code == 0, (cmd, e.code)
    helps[cmd] = out.getvalue()
print(json.dumps({'helps': helps, 'loaded': sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)}))
'''


def test_help_leaves_torch_unimported():
    r = subprocess.run([sys.executable, '-c', f'HEAVY = {HEAVY!r}\n' + CHILD], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d['loaded'] == [], d['loaded']
    helps = d['helps']
    assert {'run', 'demo', 'train-cls', 'train-seg', 'refine', 'synth', 'validate'} <= set(helps)
    assert all(h.startswith('usage: wood') for h in helps.values()), [c for c, h in helps.items() if not h.startswith('usage: wood')]
    assert '0.001 (synthetic), 0.1 (voc)' in helps['train-cls']          # the presets' real defaults, read from wood_nb.config
    assert '0.01 (synthetic), 0.1 (voc)' in helps['refine'] and '0.002 (synthetic), 0.00025 (voc)' in helps['train-seg']
    assert 'baseline_seeds' in helps['run'] and 'quick' in helps['demo']


def test_config_is_torch_free_and_shared():
    "The moved names are the same objects in `wood_nb.config` and in the stage modules that used to define them."
    code = ("import sys, wood_nb.config, wood_nb.runconfig as rc\n"
            "c = rc.run_config('voc', {'cls.epochs': 2}); rc.fingerprints(c); rc.config_from_dict(rc.config_dict(c))\n"   # the run's settings too
            f"assert not [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}], sorted(sys.modules)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    from wood_nb import cam, cli, config, core, mining, pipeline, refine, segment, synth, train, wood
    assert core.WoodInputError is config.WoodInputError and train.TrainConfig is config.TrainConfig
    assert synth.SynthConfig is config.SynthConfig and wood.WoodConfig is config.WoodConfig
    assert refine.boundary_train_config is config.boundary_train_config and segment.seg_train_config is config.seg_train_config
    assert cam.DEFAULT_SCALES is config.DEFAULT_SCALES and mining.CURATION_MODES is config.CURATION_MODES
    assert (pipeline.RUN_PRESETS, pipeline.STEPS, pipeline.PLANE_MODES) == (config.RUN_PRESETS, config.STEPS, config.PLANE_MODES)
    assert cli.DEMO_PROFILES is config.DEMO_PROFILES
    assert {k: v['train'] for k, v in refine.BOUNDARY_PRESETS.items()} == config.BOUNDARY_TRAIN_PRESETS


def test_print_config_leaves_torch_unimported(tmp_path):
    "`wood run --print-config` resolves and prints the settings without importing torch (nor numpy, PIL, ...), and prints what `run_config` gives."
    from wood_nb.runconfig import config_dict, run_config
    for preset, more in (('synthetic', {}), ('voc', {}), ('synthetic', {'seg.init': 'classifier'})):   # the demo's seg.init too
        sets = [x for k, v in more.items() for x in ('--set', f'{k}={v}')]
        r = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'wood_nb.cli', 'run', '--out', str(tmp_path/'r'), '--preset', preset,
                            '--set', 'cls.epochs=2', *sets, '--num-workers', '1', '--print-config'], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        imported = [l.rsplit('|', 1)[-1].strip() for l in r.stderr.splitlines() if l.startswith('import time:')]
        assert 'wood_nb.runconfig' in imported                                   # -X importtime did list the imports
        assert not [m for m in imported if m.split('.')[0] in HEAVY], [m for m in imported if m.split('.')[0] in HEAVY]
        assert json.loads(r.stdout) == json.loads(json.dumps(config_dict(run_config(preset, {'cls.epochs': '2', **more, 'num_workers': 1}))))
        assert not (tmp_path/'r').exists()                                       # printing writes nothing
