"""Wall time of `wood --help` and of every `wood COMMAND --help`, each in a fresh process (not a test).

The parser is built from `wood_nb.config` without importing torch (tests/test_cli_startup.py checks that);
this measures what a person waits for. Each command runs `--runs` times; the table prints the median and
the slowest run, and the last line the worst median against the target (exit status 1 above it).

Usage: python benchmarks/bench_help.py [--runs 5] [--target 1.0]
"""
import argparse, os, shutil, statistics, subprocess, sys, time
from pathlib import Path


def commands()->list[str]:
    "The sub-commands of `wood`, read from its parser."
    from wood_nb.cli import build_parser
    p = build_parser()
    return list(next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=5); p.add_argument('--target', type=float, default=1.0)
    a = p.parse_args()
    exe = shutil.which('wood', path=str(Path(sys.executable).parent)) or shutil.which('wood')
    base = [exe] if exe else [sys.executable, '-m', 'wood_nb.cli']
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} before the run; command: {' '.join(base)}")
    rows = []
    for cmd in [None, *commands()]:
        args = [*base, *([cmd] if cmd else []), '--help']
        ts = []
        for _ in range(a.runs):
            t = time.perf_counter()
            r = subprocess.run(args, capture_output=True, text=True)
            ts.append(time.perf_counter() - t)
            if r.returncode != 0: sys.exit(f"{' '.join(args)} exited with {r.returncode}: {r.stderr[-500:]}")
        rows.append((f"wood {cmd + ' ' if cmd else ''}--help", statistics.median(ts), max(ts)))
    w = max(len(r[0]) for r in rows)
    print(f"{'command':{w}s}  median s  slowest s")
    for name, med, mx in rows: print(f"{name:{w}s}  {med:8.3f}  {mx:9.3f}")
    name, med, _ = max(rows, key=lambda r: r[1])
    print(f"worst median: {med:.3f} s ({name}) against the {a.target:.1f} s target: {'ok' if med < a.target else 'OVER'}")
    sys.exit(0 if med < a.target else 1)


if __name__ == '__main__': main()
