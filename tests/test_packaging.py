"The exported package installs as a wheel and runs without nbdev."
import subprocess, sys, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_imports_without_nbdev(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    whl, = tmp_path.glob('wood_nb-*.whl')
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
        z.extractall(tmp_path/'site')
    assert 'wood_nb/synth.py' in names and 'wood_nb/data.py' in names
    runtime = [l for l in meta.splitlines() if l.startswith('Requires-Dist:') and 'extra ==' not in l]
    assert runtime and not any('nbdev' in l or 'fastcore' in l for l in runtime), runtime
    assert 'console_scripts' in zipfile.ZipFile(whl).read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    code = ("import sys; sys.modules['nbdev'] = None; sys.modules['fastcore'] = None; sys.modules['execnb'] = None\n"
            f"sys.path.insert(0, {str(tmp_path/'site')!r})\n"
            "import wood_nb, wood_nb.data, wood_nb.synth, wood_nb.cli\n"
            "print(wood_nb.__file__, wood_nb.__version__)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(tmp_path/'site') in r.stdout          # the wheel's copy was imported, not the working tree


def test_library_has_no_nbdev_import():
    for f in (ROOT/'wood_nb').glob('*.py'):
        src = f.read_text()
        assert 'import nbdev' not in src and 'from nbdev' not in src and 'fastcore' not in src, f


def test_repo_is_self_contained():
    "Method notes, licence and citation live in the repo; nothing points at notes outside it."
    tracked = subprocess.run(['git', 'ls-files'], capture_output=True, text=True, cwd=ROOT).stdout.split()
    outside = [f for f in tracked if f.endswith(('.py', '.ipynb', '.md', '.ini', '.in', '.toml', '.sh'))
               and any(s in (ROOT/f).read_text(encoding='utf-8', errors='replace') for s in ('METHOD' + '.md', 'DESIGN' + '.md'))]
    assert not outside, outside
    lic = (ROOT/'LICENSE').read_text()
    assert 'Apache License' in lic and 'Version 2.0' in lic and 'license = apache2' in (ROOT/'settings.ini').read_text()
    readme = (ROOT/'README.md').read_text()
    assert 'nbs/method.md' in readme and '@inproceedings' in readme and 'naver-ai/w-ood' in readme
    assert (ROOT/'nbs'/'method.md').is_file()


def test_no_private_name_crosses_modules():
    "A module imports only public names from another module of the kit (private helpers stay where they are defined)."
    import ast
    bad = []
    for f in sorted((ROOT/'wood_nb').glob('*.py')):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('wood_nb')):
                bad += [f'{f.name}: {a.name}' for a in node.names if a.name.startswith('_') and a.name != '__version__']
    assert not bad, bad


# Every name `from wood_nb.pipeline import *` gave before the run's settings and its report moved out of it
# (to wood_nb.runconfig and wood_nb.report); user code still imports them from wood_nb.pipeline.
PIPELINE_NAMES = ('DEFAULT_PLANES', 'SEG_EVAL_SCALES', 'STEP_OUTPUTS', 'STEP_COSTS', 'refine_planes', 'refine_step', 'segment_step',
                  'chain_panels', 'plot_iou_change', 'MiningConfig', 'PrototypeConfig', 'RefineConfig',
                  'SegConfig', 'WeightsConfig', 'RunConfig', 'check_config', 'config_from_dict', 'config_dict', 'run_config',
                  'step_settings', 'fingerprints', 'pretrained_kw', 'check_run_inputs', 'collect_metrics', 'write_report',
                  'peak_rss_mib', 'clean_partial', 'step_record', 'plan_run', 'run_pipeline', 'image_counts',
                  'estimate_seconds', 'print_plan', 'PLANE_MODES', 'RUN_PRESETS', 'STEPS')


def test_pipeline_reexports_the_moved_names():
    "`wood_nb.pipeline` still offers every name it had before the split, as the same objects as their new homes."
    from wood_nb.pipeline import RunConfig, run_config, write_report   # the common case, spelled out
    from wood_nb import pipeline, report, runconfig
    assert RunConfig is runconfig.RunConfig and run_config is runconfig.run_config and write_report is report.write_report
    lost = [n for n in PIPELINE_NAMES if n not in pipeline.__all__ or not hasattr(pipeline, n)]
    assert not lost, f'names wood_nb.pipeline no longer exports: {lost}'
    for home in (runconfig, report):                                     # every public name of the new modules comes along
        missing = [n for n in home.__all__ if n not in pipeline.__all__ or getattr(pipeline, n, None) is not getattr(home, n)]
        assert not missing, f'{home.__name__} names not re-exported by wood_nb.pipeline: {missing}'
    ns = {}; exec('from wood_nb.pipeline import *', ns)
    assert set(PIPELINE_NAMES) <= set(ns), sorted(set(PIPELINE_NAMES) - set(ns))


MAX_LINES = 60
# Functions known to be too long, with the work that will shorten them. An entry must go once its function is short.
PENDING = {}


def _lengths_in(text:str, module:str)->dict:
    "`{'module.qualname': (lines, exempt)}` for every function in `text`; exempt: a `# long: <reason>` line near its top."
    import ast, re
    lines, out = text.splitlines(), {}
    def walk(node, prefix):
        for n in ast.iter_child_nodes(node):
            name = f'{prefix}.{n.name}' if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else prefix
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = n.body[0]
                doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
                top = lines[n.lineno - 1:max(first.lineno + 2, first.end_lineno if doc else 0)]   # `def` to 3 lines into the body, and the docstring
                out[name] = (n.end_lineno - n.lineno + 1, any(re.match(r'\s*# long: *\S', l) for l in top))
            walk(n, name)
    walk(ast.parse(text), module)
    return out


def _function_lengths()->dict:
    "`_lengths_in` over the package's modules (not the generated `_modidx.py`)."
    return {k: v for f in sorted((ROOT/'wood_nb').glob('*.py')) if f.name != '_modidx.py' for k, v in _lengths_in(f.read_text(), f.stem).items()}


def test_functions_are_short():
    "No function is longer than 60 lines, unless a `# long: <reason>` line at its top says why (or it is PENDING)."
    body = '\n'.join(f'    x{i} = {i}' for i in range(70)); inner = body.replace('\n', '\n    ')
    sample = _lengths_in(f'def a():\n    # long: a table\n{body}\ndef b():\n    "Doc."\n{body}\nclass C:\n    def c(self):\n        # long:\n    {inner}\n', 'm')
    assert sample == {'m.a': (72, True), 'm.b': (72, False), 'm.C.c': (72, False)}, sample   # a reason is required
    lengths = _function_lengths()
    long = {k: n for k, (n, exempt) in lengths.items() if n > MAX_LINES and not exempt and k not in PENDING}
    assert not long, f'functions over {MAX_LINES} lines (split them, or add a `# long: <reason>` line at the top): {long}'
    gone = {k: why for k, why in PENDING.items() if k not in lengths or lengths[k][0] <= MAX_LINES or lengths[k][1]}
    assert not gone, f'PENDING entries that are short (or exempt, or gone) now: remove them from PENDING: {gone}'
