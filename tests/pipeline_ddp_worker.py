"""`wood` (wood_nb.cli.main) with two test seams, for test_pipeline_ddp.py; run directly or under torchrun.

- Training augmentation without random flips (`train_transforms(..., hflip=False)`). With a fixed
  `long_side` equal to the image size and a crop of that size the augmentation is then deterministic,
  so one process and W processes see the same global batches and must train the same weights. (With
  random flips they cannot: each process draws its own flips from its own RNG stream.)
- With `WOOD_TEST_WRITES=<folder>`: every file written through `wood_nb.core.atomic_path` (all of the
  kit's file writes) is logged, one path a line, to `<folder>/rank<RANK>.txt`, so the test can check
  which process wrote what.
"""
import contextlib, functools, os, sys
from pathlib import Path

import wood_nb.core, wood_nb.data, wood_nb.refine, wood_nb.report, wood_nb.segment, wood_nb.train, wood_nb.wood

no_flip = functools.partial(wood_nb.data.train_transforms, hflip=False)
for m in (wood_nb.data, wood_nb.train, wood_nb.wood, wood_nb.refine, wood_nb.segment):
    assert hasattr(m, 'train_transforms'), m
    m.train_transforms = no_flip

if os.environ.get('WOOD_TEST_WRITES'):
    log = Path(os.environ['WOOD_TEST_WRITES'])/f"rank{os.environ.get('RANK', '0')}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    _atomic = wood_nb.core.atomic_path

    @contextlib.contextmanager
    def logged_atomic_path(path):
        with _atomic(path) as t: yield t
        with open(log, 'a') as f: f.write(f'{Path(path).resolve()}\n')

    import wood_nb.cli, wood_nb.pipeline                                   # every module a run writes through, imported
    bound = [m for n, m in list(sys.modules.items()) if n.startswith('wood_nb.') and getattr(m, 'atomic_path', None) is _atomic]
    assert {wood_nb.core, wood_nb.train, wood_nb.report} <= set(bound), bound
    for m in bound: m.atomic_path = logged_atomic_path

from wood_nb.cli import main  # noqa: E402

if __name__ == '__main__': sys.exit(main())
