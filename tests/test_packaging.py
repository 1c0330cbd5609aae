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
