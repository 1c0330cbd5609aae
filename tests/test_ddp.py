"Two CPU processes under torchrun (gloo): DDP training matches one process, sharded CAMs cover every image once."
import json, os, signal, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import Data, TinyCAM  # noqa: E402
from wood_nb.cam import load_cam_record
from wood_nb.train import TrainConfig, fit, make_loader, multilabel_step


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    with socket.socket() as s:                      # a free port on the loopback interface only
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}
    # torchrun_loopback: the stock launcher's rendezvous store would listen on every interface
    cmd = [sys.executable, str(Path(__file__).parent/'torchrun_loopback.py'), '--nproc-per-node', '2', '--master-addr', '127.0.0.1',
           '--master-port', str(port), str(Path(__file__).parent/'ddp_worker.py'), '--out', str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try: log, _ = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate()         # no stray workers survive the test
        pytest.fail('torchrun did not finish in 300 s')
    assert p.returncode == 0, log[-4000:]
    return out


def test_ddp_training_matches_one_process(ddp_run, tmp_path):
    w0 = torch.load(ddp_run/'weights_rank0.pt', weights_only=True)
    w1 = torch.load(ddp_run/'weights_rank1.pt', weights_only=True)
    for k in w0: assert torch.equal(w0[k], w1[k]), k              # the replicas stay identical
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, momentum=0.9, progress=False)
    single = TinyCAM()
    fit(single, make_loader(Data(), cfg), multilabel_step, cfg, device='cpu')
    for k, v in single.state_dict().items(): torch.testing.assert_close(w0[k], v, rtol=1e-4, atol=1e-5)
    assert (ddp_run/'train'/'checkpoint.pt').exists()
    assert not list((ddp_run/'train').glob('*.part'))


def test_sharded_cams_cover_every_image_once(ddp_run):
    ranks = [json.loads((ddp_run/f'rank{r}.json').read_text()) for r in (0, 1)]
    assert [r['world'] for r in ranks] == [2, 2]
    assert sorted(r['written'] for r in ranks) == [3, 4]           # 7 images split 4 + 3: each written once
    files = sorted(p.stem for p in (ddp_run/'cams').glob('*.npz'))
    assert files == [f'im{i:02d}' for i in range(7)]
    data = Data(n=7)
    for i, f in enumerate(files):
        rec = load_cam_record(ddp_run/'cams'/f'{f}.npz')
        assert rec['keys'].tolist() == (torch.nonzero(data.y[i]).flatten() + 1).tolist()
