"""The inspection widgets in a real browser: JupyterLab on 127.0.0.1, headless Chromium through Playwright.

The test builds a tiny run folder (a generated benchmark, CAM records of two toy models, a ranked
candidate list), writes a notebook that opens the CAM explorer and the OoD curator on it, starts
JupyterLab with a fresh configuration, runs the notebook in the browser, moves the threshold slider
and checks that the picture changed, marks a curator tile as "holds an object", saves, and checks the
curated list on disk. The screenshot is kept as `tests/artifacts/browser_inspect.png`. Everything it
starts is shut down at the end. Skipped (with the reason) where Chromium or Playwright is missing.
"""
import json, os, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = Path(__file__).parent/'artifacts'
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'{CHROMIUM} is absent (apt-get install chromium; .ci/run installs it)')


def _free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _tiny_run(run:Path):
    "A run folder with data, CAM records of two toy models (ground truth, ground truth + cue) and a ranked list."
    from wood_nb.core import load_mask
    from wood_nb.data import read_ood_list, read_split
    from wood_nb.cam import save_cam_record
    from wood_nb.mining import Candidate, write_ranked
    from wood_nb.inspect import Curator
    from wood_nb.synth import SynthConfig, generate
    data = generate(run/'data', seed=0, cfg=SynthConfig(image_size=64, n_train=12, n_val=2, n_ood=16))
    voc = data/'voc'
    for name, cue_w in (('baseline', 0.6), ('wood', 0.0)):
        for i in read_split(voc, 'train'):
            m, cue = load_mask(voc/'SegmentationClass'/f'{i}.png'), load_mask(voc/'SegmentationCue'/f'{i}.png')
            keys = np.array([k for k in np.unique(m) if 0 < k < 255])
            hr = np.stack([(m == k) + cue_w * (cue == k) for k in keys]).astype(np.float32)
            save_cam_record(run/'cam'/name/f'{i}.npz', keys, hr[:, ::4, ::4], hr)
    paths = read_ood_list(data/'ood')
    ranked = [Candidate(p, 1.0 - j / 100, j % 6) for j, p in enumerate(paths)]
    write_ranked(run/'mining'/'ranked.csv', ranked, (voc/'classes.txt').read_text().split())
    Curator(data/'ood', ranked).save(run/'mining'/'curated.txt')            # every candidate kept, to start from
    return [c.path for c in ranked]


NOTEBOOK_CELLS = [
    "import os\nfrom pathlib import Path\nfrom wood_nb.inspect import *\nrun = Path(os.environ['WOOD_BROWSER_RUN'])",
    "explorer = CamExplorerView(CamExplorer.from_run(run, threshold=0.3, height=120))\nexplorer.widget",
    "curator = CuratorView(Curator.from_run(run, page_size=4, thumb=64), run/'mining'/'curated.txt')\ncurator.widget",
]


def _notebook(path:Path):
    cells = [{'cell_type': 'code', 'id': f'c{i}', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': src}
             for i, src in enumerate(NOTEBOOK_CELLS)]
    nb = {'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))


@pytest.fixture
def lab(tmp_path):
    "JupyterLab on 127.0.0.1 with a fresh config, serving `tmp_path`; yields (url, run folder); shuts it down."
    run = tmp_path/'run'
    paths = _tiny_run(run)
    _notebook(tmp_path/'inspect.ipynb')
    news = tmp_path/'settings'/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True); news.write_text(json.dumps({'fetchNews': 'false'}))   # no news prompt over the page
    port, token = _free_port(), 'wood-browser-test'
    env = dict(os.environ, WOOD_BROWSER_RUN=str(run), JUPYTER_CONFIG_DIR=str(tmp_path/'cfg'), JUPYTER_RUNTIME_DIR=str(tmp_path/'rt'),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path/'ws'),
               IPYTHONDIR=str(tmp_path/'ipython'), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    log = open(tmp_path/'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={tmp_path}', '--LabApp.news_url=None',
                             '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate', '--ServerApp.open_browser=False', '--LabApp.extension_manager=readonly']
                            + (['--allow-root'] if os.geteuid() == 0 else []),
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2); break
            except Exception:
                if proc.poll() is not None: raise RuntimeError('JupyterLab exited: ' + (tmp_path/'lab.log').read_text()[-2000:])
                time.sleep(0.5)
        else: raise RuntimeError('JupyterLab did not answer in 60 s: ' + (tmp_path/'lab.log').read_text()[-2000:])
        yield f'{base}/lab/tree/inspect.ipynb?token={token}', run, paths
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM)                          # the server and the kernels it started
        except ProcessLookupError: pass
        try: proc.wait(20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(5)
        log.close()


def test_widgets_in_jupyterlab(lab):
    sync_api = pytest.importorskip('playwright.sync_api', reason='playwright is not installed (pip install playwright)')
    url, run, paths = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1100})
            page.goto(url)
            page.wait_for_selector('.jp-Notebook', timeout=90_000)
            page.locator('#jp-main-statusbar', has_text='Idle').wait_for(timeout=90_000)   # the kernel is up
            page.locator('.jp-Cell .jp-InputPrompt').first.click()
            for _ in range(len(NOTEBOOK_CELLS)): page.keyboard.press('Shift+Enter')       # run each cell, in order
            explorer_img = page.locator('.jp-OutputArea-output .widget-image').first
            explorer_img.wait_for(timeout=120_000)
            page.wait_for_selector('.widget-toggle-button', timeout=120_000)
            info = page.locator('.widget-html', has_text='seed mIoU').first
            info.wait_for(timeout=60_000)
            before_src, before_info = explorer_img.get_attribute('src'), info.inner_text()
            assert 'threshold 0.30' in before_info
            # move the threshold slider: its readout is editable; Enter commits the value
            slider = page.locator('.widget-slider', has=page.locator('.widget-label', has_text='threshold')).first
            readout = slider.locator('.widget-readout')
            readout.click(); page.keyboard.press('Control+A'); page.keyboard.type('0.8'); page.keyboard.press('Enter')
            page.wait_for_function("([el, s]) => el.getAttribute('src') !== s", arg=[explorer_img.element_handle(), before_src], timeout=30_000)
            info.filter(has_text='threshold 0.80').wait_for(timeout=30_000)
            assert explorer_img.get_attribute('src') != before_src
            # the curator: mark the first tile as holding an object, then save
            first_toggle = page.locator('.widget-toggle-button').first
            assert first_toggle.inner_text().strip() == 'keep'
            before_list = (run/'mining'/'curated.txt').read_text().split()
            first_toggle.click()
            page.wait_for_function("el => el.innerText.trim() === 'object'", arg=first_toggle.element_handle(), timeout=30_000)
            page.locator('.widget-button', has_text='save').first.click()
            page.locator('.widget-html', has_text='saved').first.wait_for(timeout=30_000)
            after_list = (run/'mining'/'curated.txt').read_text().split()
            assert before_list == paths and after_list == paths[1:]      # the first (best-scored) candidate was removed
            explorer_img.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS/'browser_inspect.png'), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS/'browser_failure.png'), full_page=True)   # what the browser showed
            raise
        finally:
            browser.close()
    assert (ARTIFACTS/'browser_inspect.png').stat().st_size > 10_000
