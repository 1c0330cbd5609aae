"""Run the chapters and keep their outputs, so that a reader sees the CAMs, tables and numbers on a code host.

    python tools/execute_notebooks.py [NOTEBOOK ...]      # default: every notebook under nbs/, in name order

Each notebook runs top to bottom in its own folder (as `nbdev_test` runs it) in one kernel-free shell (execnb's
`CaptureShell`); cells marked `#| slow`, `#| cuda` or `#| notest` (settings.ini `tst_flags`) and `#| eval: false`
cells are not run and keep no output. The outputs are written back, then `nbdev_clean --fname` strips ids and metadata from each notebook it ran
(settings.ini keeps outputs: `clear_all = False`), so `.ci/run`'s sync check still passes. A notebook that
raises is reported, and left as it was. Run it with `OMP_NUM_THREADS=1` on an idle machine; the outputs hold
timings and temporary paths, which differ from run to run.
"""
import argparse, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r'^#\|\s*(?:(?:' + '|'.join(('slow', 'cuda', 'notest')) + r')\b|eval:\s*false)', re.M | re.I)


def skipped(cell)->bool:
    "True for cells `nbdev_test` does not run either: markdown, flagged cells, and cells that call nbdev_export."
    return cell.cell_type != 'code' or bool(SKIP.search(cell.source)) or 'nbdev_export' + '(' in cell.source


def execute(fn:Path)->tuple[bool, float]:
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    nb, t0 = read_nb(fn), time.perf_counter()
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    shell, cwd = CaptureShell(fn), os.getcwd()
    try:
        os.chdir(fn.parent)
        shell.run_all(nb, exc_stop=True, preproc=skipped)
    except Exception:
        sys.stderr.write(shell.prettytb(fname=fn) + '\n'); return False, time.perf_counter() - t0
    finally: os.chdir(cwd)
    tmp = fn.with_name('.' + fn.name + '.tmp')
    write_nb(nb, tmp); tmp.replace(fn)
    return True, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='*', type=Path, help='default: nbs/*.ipynb and nbs/tutorials/*.ipynb')
    a = p.parse_args(argv)
    fns = [f.resolve() for f in a.notebooks] or sorted((ROOT/'nbs').glob('*.ipynb')) + sorted((ROOT/'nbs'/'tutorials').glob('*.ipynb'))
    missing = [str(f) for f in fns if not f.is_file()]
    if missing: sys.exit(f'error: no such notebook: {missing[0]}')
    failed = []
    for fn in fns:
        ok, s = execute(fn)
        print(f"{'ok  ' if ok else 'FAIL'} {fn.relative_to(ROOT)} ({s:.0f} s)", flush=True)
        if not ok: failed.append(fn)
    for fn in fns:                                   # clean only the notebooks it wrote, so it never rewrites another's
        subprocess.run([str(Path(sys.executable).parent/'nbdev_clean'), '--fname', str(fn)], cwd=ROOT, check=True)
    if failed: sys.exit(f'{len(failed)} notebook(s) failed: ' + ', '.join(str(f.relative_to(ROOT)) for f in failed))


if __name__ == '__main__':
    main()
