"README.md's Python snippets run as written, on a run folder of `wood demo` (a tiny benchmark and one epoch per step, so seconds, not minutes)."
import io, os, re, subprocess, sys
from pathlib import Path

import pytest

from wood_nb.cli import run_demo
from wood_nb.config import DEMO_PROFILES
from wood_nb.data import read_split
from wood_nb.synth import SynthConfig

README = Path(__file__).resolve().parents[1]/'README.md'
BLOCKS = re.findall(r'^```python\n(.*?)^```', README.read_text(encoding='utf-8'), flags=re.S | re.M)

# the snippets read `runs/demo`, the folder `wood demo --out runs/demo` writes; the test makes one with the kit's own
# `run_demo` (what `wood demo` calls) on a 48-px benchmark of 16 training images, every step at one epoch
TINY = {'scales': [1.0], 'prototypes.k': 4, 'mining.threshold': 0.0,
        **{f'{sec}.{k}': v for sec in ('cls', 'wood_train', 'boundary', 'seg_train')
           for k, v in dict(epochs=1, batch_size=4, crop=48, long_side=[40, 56], progress=False).items()},
        **{k: v for k, v in DEMO_PROFILES['quick'][1].items() if k.startswith('seg.')}, 'seg_train.long_side': [48, 48]}


@pytest.fixture(scope='module')
def cwd(tmp_path_factory):
    d = tmp_path_factory.mktemp('readme')
    run_demo(d/'runs'/'demo', seed=0, cfg=SynthConfig(image_size=48, n_train=16, n_val=4, n_ood=40), overrides=TINY,
             workers=1, device='cpu', log=io.StringIO())
    return d


def run_snippet(code:str, cwd:Path):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_readme_has_its_snippets():
    assert len(BLOCKS) == 2, [b[:60] for b in BLOCKS]          # a new snippet needs its own check below
    assert 'compute_cams' in BLOCKS[0] and 'CuratorView' in BLOCKS[1]


def test_python_api_snippet(cwd):
    "The five lines write one CAM record per training image and print the seed mIoU, best threshold and cue activation."
    r = run_snippet(BLOCKS[0], cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = read_split(cwd/'runs'/'demo'/'data'/'voc', 'train')
    assert sorted(p.stem for p in (cwd/'cams').glob('*.npz')) == sorted(ids)
    for key in ('seed_miou', 'seed_threshold', 'cue_activation'): assert key in r.stdout, r.stdout


def test_jupyterlab_snippet(cwd):
    "The three widget lines build the explorer, the cue inspector and the curator from the run folder."
    r = run_snippet(BLOCKS[1] + '\nprint("built")', cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith('built')
