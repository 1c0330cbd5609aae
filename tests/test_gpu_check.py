"benchmarks/gpu_check.sh runs end to end on the CPU at tiny counts (the same code a GPU machine runs at full size)."
import json, os, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from wood_nb.config import STEPS   # every step of a run, in order


def test_gpu_check_tiny_on_cpu(tmp_path):
    r = subprocess.run(['bash', str(ROOT/'benchmarks'/'gpu_check.sh'), '--out', str(tmp_path/'out'), '--device', 'cpu', '--tiny',
                        '--num-workers', '0', '--record', str(tmp_path/'rec.json')],
                       capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '2'}, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path/'rec.json').read_text())
    for part in ('demo', 'voc'):
        assert list(rec[part]['steps']) == list(STEPS) and all(s['seconds'] >= 0 for s in rec[part]['steps'].values())
        assert all(s['peak_gpu_mib'] is None for s in rec[part]['steps'].values())        # on the CPU: no GPU memory
    assert rec['demo']['steps']['baseline']['cpu_estimate_s'] is not None                   # the synthetic preset has measured costs
    assert 'full demo profile on cpu' in r.stdout and 'VOC rehearsal (6 train_aug images) on cpu' in r.stdout
    assert {'seed_miou', 'mask_miou', 'seg_miou'} <= set(rec['demo']['metrics']['wood'])
