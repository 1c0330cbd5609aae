"benchmarks/sweep_prototypes.py --report: the tables and the figure from finished jobs, and a refusal naming a missing one."
import json, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'benchmarks'))
import sweep_prototypes as S
from wood_nb.core import WoodInputError


def fake_sweep(out:Path, d_minus_b:list, old_layout:bool=False):
    "Finished jobs: one run folder (d: its `wood`, the other arms: its `arms` step), or the older layout of one run folder per arm."
    for seed, gap in enumerate(d_minus_b):
        root = out/'default'/f'seed{seed}'
        for arm, miou in (('a', 20.0), ('b', 35.0), ('d', 35.0 + gap), ('d2', 34.0)):
            f = root/arm/'eval'/'wood.json' if old_layout else root/'run'/'eval'/f"{'wood' if arm == 'd' else arm}.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({'seed_miou': miou, 'cue_activation': 0.1, 'seed_threshold': 0.8}))
        f = root/('d' if old_layout else 'run')/'eval'/'baseline.json'
        f.write_text(json.dumps({'seed_miou': 18.0, 'cue_activation': 0.4, 'seed_threshold': 0.8}))


def test_report_rebuilds_the_tables_and_figure(tmp_path):
    fake_sweep(tmp_path, [3.5, 4.0, 3.0])
    S.main(['--out', str(tmp_path), '--regimes', 'default', '--report'])
    md = (tmp_path/'sweep.md').read_text()
    assert '| default | - | +3.5 / +4.0 / +3.0 | +3.50 | yes | +15.00 | -1.00 |' in md
    assert '--report' not in md and (tmp_path/'sweep.png').stat().st_size > 1000
    rec = json.loads((tmp_path/'sweep.json').read_text())
    assert rec['results']['default']['1']['d']['seed_miou'] == 39.0


def test_one_seed_below_the_bar_is_a_no(tmp_path):
    fake_sweep(tmp_path, [3.5, 2.9, 5.0])
    S.main(['--out', str(tmp_path), '--regimes', 'default', '--report'])
    assert '| +3.80 | no |' in (tmp_path/'sweep.md').read_text()


def test_report_refuses_an_unfinished_job(tmp_path):
    fake_sweep(tmp_path, [1.0, 1.0, 1.0])
    (tmp_path/'default'/'seed2'/'run'/'eval'/'d2.json').unlink()
    with pytest.raises(WoodInputError, match="seed2/run/eval/d2.json.*has not finished"):
        S.main(['--out', str(tmp_path), '--regimes', 'default', '--report'])
    assert not (tmp_path/'sweep.md').exists()


def test_report_reads_the_older_layout(tmp_path):
    fake_sweep(tmp_path, [3.5, 4.0, 3.0], old_layout=True)
    S.main(['--out', str(tmp_path), '--regimes', 'default', '--report'])
    assert '| default | - | +3.5 / +4.0 / +3.0 | +3.50 | yes | +15.00 | -1.00 |' in (tmp_path/'sweep.md').read_text()


def test_arms_of_the_run():
    "a, b and d2 are arms of the run's `arms` step; d, which changes nothing, is the run's own W-OoD."
    from wood_nb.runconfig import run_config
    specs = S.arm_specs(S.ARMS)
    assert [a['name'] for a in specs] == ['a', 'b', 'd2'] and specs[2]['overrides'] == {'normalize': True, 'lam': 0.2}
    assert run_config('synthetic', {'arms': json.dumps(specs)}).arms[0]['overrides'] == {'use_metric_term': False, 'use_ood_term': False}
