"""A second, independently designed family of spurious-cue benchmark images, and the quick demo profile's chain on it.

    python benchmarks/family2.py generate --out DIR [--seed 0] [--size 112] [--n-train 320] [--n-val 80] [--n-ood 320]
    python benchmarks/family2.py run --out DIR [--seed 0] [--record benchmarks/records/family2_seed0.json]
                                     [--settings-from RECORD] [--bench embedded --size 96]
    python benchmarks/family2.py sheet --root DIR/data --png benchmarks/records/family2_sheet.png
    python benchmarks/family2.py table benchmarks/records/family2_seed*.json

Written from scratch (nothing of `wood_nb/synth.py`'s drawing is used; only the on-disk contract that
`wood_nb.data.validate` / `validate_ood` and the 'meta' curation of `wood_nb.mining` read). Six classes of flat
shapes, each tied to a cue of another kind than the embedded benchmark's background bands:

    class     cue        kind of cue
    star      stripes    texture: a disc of diagonal black/white stripes behind and around the star
    ring      tint       colour: the whole background is tinted magenta
    cross     tag        placement next to the object: a small hazard-striped square touching the cross's box
    arrow     frame      fixed placement: a thick dashed orange/blue frame along the image border
    crescent  fence      partial overlap: a band of thin vertical bars drawn over the crescent and beyond it
    tee       checker    texture under the object: a checkerboard floor the T stands on (partly hidden by it)

The cue of a present class is drawn with probability `cue_rate` (0.85) in train and `val_cue_rate` (0.5) in val;
an absent class's cue appears with `stray_cue_rate` (0.05). 30 % of images hold two classes. Backgrounds are
smooth low-saturation noise with small clutter and, sometimes, a large non-class "decoy" shape (ellipse,
rectangle, triangle); object colours are random saturated hues (colour carries no class).

Masks (`SegmentationClass/<id>.png`): 0 background, 1..6 the classes, 255 a 1-pixel band around every object and
the fence bars lying over an object. Cue masks (`SegmentationCue/<id>.png`, the embedded benchmark's format): 0 no
cue, k where the cue tied to class k is visible, never on a class pixel. The OoD pool (`ood/ood_list.txt`,
`ood/ood_meta.csv` with path,contains_foreground,kind,cues,objects) holds 'hard' images (1-2 cues, no class; the
object-relative cues anchored on a decoy or an empty spot), 'easy' ones (no cue, more clutter) and a few
'contaminated' ones (one class object), in the shares `ood_mix` (0.6, 0.3, 0.1).

`run` generates DIR/data and runs `wood_nb.pipeline.run_pipeline` on it into DIR/run with the synthetic preset and
exactly the quick demo profile's run settings (`wood_nb.cli.DEMO_PROFILES['quick'][1]`, plus `cls.seed` = the seed,
as `wood demo` sets it), then prints and records the baseline and W-OoD results. `--settings-from RECORD` repeats an
earlier record's settings instead (the profile may change); `--bench embedded` runs the embedded benchmark
(`wood_nb.synth.generate` at the quick profile's knobs, `--size` to override) through the same code, beside it.
"""
from __future__ import annotations
import argparse, csv, io, json, math, os, platform, shutil, sys, time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('star', 'ring', 'cross', 'arrow', 'crescent', 'tee')
CUE_OF = {'star': 'stripes', 'ring': 'tint', 'cross': 'tag', 'arrow': 'frame', 'crescent': 'fence', 'tee': 'checker'}
CUE_KIND = {'stripes': 'texture around the object', 'tint': 'colour of the whole background', 'tag': 'placement next to the object',
            'frame': 'fixed placement at the image border', 'fence': 'partial overlap over the object', 'checker': 'texture under the object'}
IGNORE = 255
_STREAM = {'train': 101, 'val': 102, 'ood': 103}


@dataclass
class Family2Config:
    "The knobs of the second benchmark family."
    image_size: int = 112          # square images, pixels
    n_train: int = 320
    n_val: int = 80
    n_ood: int = 320
    cue_rate: float = 0.85         # P(a present class's cue is drawn), train
    val_cue_rate: float = 0.5      # the same in val
    stray_cue_rate: float = 0.05   # P(the cue of one absent class is drawn), in-distribution images
    two_objects: float = 0.3       # P(an image holds two classes)
    decoy_rate: float = 0.3        # P(a large non-class shape), in-distribution images
    ood_mix: tuple = (0.6, 0.3, 0.1)   # hard (cue, no class), easy (neither), contaminated (a class, no cue)
    jpeg_quality: int = 90

    def __post_init__(self):
        self.ood_mix = tuple(self.ood_mix)
        if self.image_size < 32: raise ValueError(f'image_size {self.image_size} < 32')
        if min(self.n_train, self.n_val, self.n_ood) < 1: raise ValueError('every count must be >= 1')
        if not np.isclose(sum(self.ood_mix), 1) or min(self.ood_mix) < 0: raise ValueError(f'ood_mix {self.ood_mix} is not a probability vector')


# ----------------------------------------------------------------------------------------------- geometry helpers
def _grid(S):
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    return xx + 0.5, yy + 0.5

def _poly_mask(S, pts)->np.ndarray:
    "Boolean mask of a polygon given as (N, 2) pixel coordinates."
    im = Image.new('L', (S, S), 0)
    ImageDraw.Draw(im).polygon([(float(x), float(y)) for x, y in pts], fill=1)
    return np.asarray(im, bool)

def _place(pts, cx, cy, r, ang):
    "Unit-frame points (about the origin, radius ~1) scaled by r, rotated by ang, moved to (cx, cy)."
    c, s = math.cos(ang), math.sin(ang)
    p = np.asarray(pts, np.float32)*r
    return np.stack([cx + c*p[:, 0] - s*p[:, 1], cy + s*p[:, 0] + c*p[:, 1]], 1)

def _local(S, cx, cy, ang):
    "Pixel coordinates in the object's rotated frame (u along its axis, v across)."
    x, y = _grid(S)
    dx, dy = x - cx, y - cy
    c, s = math.cos(ang), math.sin(ang)
    return c*dx + s*dy, -s*dx + c*dy


# ----------------------------------------------------------------------------------------------- the six classes
def _star(r, S, cx, cy, R, ang):
    n, inner = 5, r.uniform(0.38, 0.5)
    t = np.arange(2*n)*math.pi/n - math.pi/2
    rad = np.where(np.arange(2*n) % 2 == 0, 1.0, inner)
    return _poly_mask(S, _place(np.stack([rad*np.cos(t), rad*np.sin(t)], 1), cx, cy, R, ang))

def _ring(r, S, cx, cy, R, ang):
    u, v = _local(S, cx, cy, ang)
    e = r.uniform(0.8, 1.0)                                  # a little elliptic
    d = np.hypot(u/R, v/(R*e))
    return (d <= 1.0) & (d >= r.uniform(0.5, 0.62))

def _cross(r, S, cx, cy, R, ang):
    w = r.uniform(0.26, 0.36)
    u, v = _local(S, cx, cy, ang)
    a, b = np.abs(u)/R, np.abs(v)/R
    return ((a <= 1) & (b <= w)) | ((b <= 1) & (a <= w))

def _arrow(r, S, cx, cy, R, ang):
    w, head = r.uniform(0.18, 0.26), r.uniform(0.4, 0.55)
    pts = [(-1, -w), (1 - head, -w), (1 - head, -0.62), (1, 0), (1 - head, 0.62), (1 - head, w), (-1, w)]
    return _poly_mask(S, _place(pts, cx, cy, R, ang))

def _crescent(r, S, cx, cy, R, ang):
    u, v = _local(S, cx, cy, ang)
    off, cut = r.uniform(0.35, 0.5), r.uniform(0.78, 0.9)
    return (np.hypot(u, v) <= R) & (np.hypot(u - off*R, v) > cut*R)

def _tee(r, S, cx, cy, R, ang):
    bar, stem = r.uniform(0.26, 0.34), r.uniform(0.18, 0.26)
    pts = [(-0.95, -1), (0.95, -1), (0.95, -1 + 2*bar), (stem, -1 + 2*bar), (stem, 1), (-stem, 1), (-stem, -1 + 2*bar), (-0.95, -1 + 2*bar)]
    return _poly_mask(S, _place(pts, cx, cy, R, ang))

SHAPES = {'star': _star, 'ring': _ring, 'cross': _cross, 'arrow': _arrow, 'crescent': _crescent, 'tee': _tee}


# ----------------------------------------------------------------------------------------------- background, clutter, decoys
def _hue(r, sat=(0.55, 1.0), val=(0.55, 0.95)):
    "A random saturated RGB colour (0-255)."
    h, s, v = r.uniform(0, 6), r.uniform(*sat), r.uniform(*val)
    f = lambda n: v - v*s*max(0.0, min((n + h) % 6, 4 - (n + h) % 6, 1.0))
    return 255*np.array([f(5), f(3), f(1)], np.float32)

def _background(r, S):
    "Smooth low-saturation colour noise: a 4x4 random field, upsampled."
    grey = r.uniform(95, 175)
    low = (grey + r.normal(0, 14, (4, 4, 3)) + r.normal(0, 10, 3)).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(low).resize((S, S), Image.BICUBIC), np.float32)

def _clutter(r, img, n):
    "Small shapes: dots, triangles, short strokes."
    S = img.shape[0]
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8)); d = ImageDraw.Draw(im)
    for _ in range(n):
        x, y, s = r.uniform(0, S), r.uniform(0, S), r.uniform(0.03, 0.08)*S
        col = tuple(int(c) for c in (r.uniform(50, 210, 3) if r.random() < 0.6 else _hue(r)))
        k = r.integers(3)
        if k == 0: d.ellipse([x - s/2, y - s/2, x + s/2, y + s/2], fill=col)
        elif k == 1: d.polygon([(x, y - s/2), (x + s/2, y + s/2), (x - s/2, y + s/2)], fill=col)
        else: d.line([(x, y), (x + r.normal(0, 1.5*s), y + r.normal(0, 1.5*s))], fill=col, width=max(1, int(s/3)))
    return np.asarray(im, np.float32).copy()

def _decoy(r, S):
    "A large plain non-class shape (ellipse, rectangle or triangle): (mask, anchor)."
    R = r.uniform(0.12, 0.2)*S; cx, cy = r.uniform(R, S - R), r.uniform(R, S - R)
    k = r.integers(3)
    if k == 0:
        x, y = _grid(S); m = ((x - cx)/R)**2 + ((y - cy)/(R*r.uniform(0.5, 0.9)))**2 <= 1
    elif k == 1:
        m = _poly_mask(S, _place([(-1, -0.6), (1, -0.6), (1, 0.6), (-1, 0.6)], cx, cy, R, r.uniform(0, math.pi)))
    else:
        m = _poly_mask(S, _place([(0, -1), (0.9, 0.7), (-0.9, 0.7)], cx, cy, R, r.uniform(-0.4, 0.4)))
    return m, (cx, cy, R)

def _paint_object(r, img, m):
    "Fill `m` with a random hue, a linear shading across it and a little texture."
    S = img.shape[0]; x, y = _grid(S)
    t = r.uniform(0, 2*math.pi)
    g = (math.cos(t)*x + math.sin(t)*y)/S
    shade = 1 + r.uniform(0.15, 0.35)*(g - g[m].mean()) if m.any() else 1
    col = _hue(r)[None, None, :]*np.asarray(shade, np.float32)[..., None] + r.normal(0, 6, (S, S, 1)).astype(np.float32)
    img[m] = col[m]


# ----------------------------------------------------------------------------------------------- the six cues
def _stripes(r, S, anchor):
    "Diagonal black/white stripes in a disc around the anchor: (region, RGB texture)."
    cx, cy, R = anchor; x, y = _grid(S)
    region = np.hypot(x - cx, y - cy) <= R*r.uniform(1.45, 1.7)
    t = math.pi/4 + r.uniform(-0.35, 0.35); per = max(3.0, S*r.uniform(0.05, 0.07))
    on = ((math.cos(t)*x + math.sin(t)*y)/per + r.uniform(0, 1)) % 1 < 0.5
    tex = np.where(on[..., None], np.float32([25, 25, 30]), np.float32([235, 235, 220]))
    return region, tex

def _checker(r, S, anchor):
    "A checkerboard floor from just above the anchor's centre down past its bottom: (region, RGB texture)."
    cx, cy, R = anchor; x, y = _grid(S)
    half = R*r.uniform(1.3, 1.7)
    region = (np.abs(x - cx) <= half) & (y >= cy + R*r.uniform(0.0, 0.3)) & (y <= cy + R*r.uniform(1.35, 1.7))
    sq = max(2.0, S*r.uniform(0.04, 0.055))
    on = ((np.floor(x/sq) + np.floor(y/sq)) % 2) == 0
    a, b = np.float32([20, 90, 95]), np.float32([240, 225, 180])
    return region, np.where(on[..., None], a, b)

def _frame(r, S):
    "A dashed frame along the image border: (region, RGB texture)."
    x, y = _grid(S)
    w = S*r.uniform(0.065, 0.085)
    region = (x < w) | (y < w) | (x > S - w) | (y > S - w)
    dash = max(3.0, S*r.uniform(0.07, 0.09))
    on = (np.floor((x + y)/dash) % 2) == 0
    return region, np.where(on[..., None], np.float32([245, 140, 20]), np.float32([25, 45, 140]))

def _tag(r, S, box):
    "A small hazard-striped square touching the left or right side of `box` (x0, y0, x1, y1): (region, RGB texture)."
    x0, y0, x1, y1 = box; x, y = _grid(S)
    s = S*r.uniform(0.13, 0.17)
    ty = float(np.clip((y0 + y1)/2 + r.uniform(-0.25, 0.25)*(y1 - y0) - s/2, 0, S - s))
    right = x1 + s <= S if r.random() < 0.5 else x0 - s < 0
    tx = x1 + 1 if right else x0 - 1 - s
    region = (x >= tx) & (x < tx + s) & (y >= ty) & (y < ty + s)
    on = ((x - y)/max(2.0, s/4)) % 1 < 0.5
    return region, np.where(on[..., None], np.float32([250, 215, 0]), np.float32([15, 15, 15]))

def _fence(r, S, anchor):
    "Thin vertical bars in a horizontal band through the anchor: the bar pixels."
    cx, cy, R = anchor; x, y = _grid(S)
    top = cy - R*r.uniform(0.35, 0.55); bot = top + R*r.uniform(0.8, 1.0)
    half = R*r.uniform(1.8, 2.4)
    per = max(3.0, S*r.uniform(0.045, 0.055)); bw = max(1.0, per*0.4)
    band = (y >= top) & (y <= bot) & (np.abs(x - cx) <= half)
    return band & (((x + r.uniform(0, per)) % per) < bw)


# ----------------------------------------------------------------------------------------------- one scene
def _border(mask, width=1):
    "Pixels within `width` of a boundary between different values where one side is an object (> 0)."
    m = mask.astype(np.int16); e = np.zeros(mask.shape, bool)
    for a, b, sa, sb in ((m[:, :-1], m[:, 1:], (slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                         (m[:-1], m[1:], (slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        d = (a != b) & ((a > 0) | (b > 0))
        e[sa] |= d; e[sb] |= d
    for _ in range(width - 1):
        g = e.copy(); g[1:] |= e[:-1]; g[:-1] |= e[1:]; g[:, 1:] |= e[:, :-1]; g[:, :-1] |= e[:, 1:]; e = g
    return e

def _anchor_of(r, S, decoy):
    "Where an object-relative cue goes when its class is absent: the decoy, else an empty spot."
    if decoy is not None: return decoy
    R = r.uniform(0.14, 0.24)*S
    return (r.uniform(R, S - R), r.uniform(R, S - R), R)

def render(r:np.random.Generator, S:int, objects:list, cues:list, decoy:bool, n_clutter:int)->dict:
    "One scene: `objects` and `cues` are class indices 1..6. Returns image, mask, cue mask, boxes [(k, x0, y0, x1, y1)]."
    img = _clutter(r, _background(r, S), n_clutter)
    dec = None
    if decoy:
        dm, dec = _decoy(r, S); _paint_object(r, img, dm)
    cue = np.zeros((S, S), np.uint8)
    # objects' positions first (cues are placed relative to them), drawn after the cues that lie behind them
    anchors = {}
    n = len(objects)
    for k in objects:
        for _ in range(20):
            R = r.uniform(0.16, 0.27)*S if n == 1 else r.uniform(0.13, 0.2)*S
            cx, cy = r.uniform(R, S - R), r.uniform(R, S - R)
            if all(math.hypot(cx - a[0], cy - a[1]) > 0.85*(R + a[2]) for a in anchors.values()): break
        anchors[k] = (cx, cy, R)
    anchor = lambda k: anchors.get(k) or _anchor_of(r, S, dec)
    name = lambda k: CUE_OF[CLASSES[k - 1]]
    by = {name(k): k for k in cues}
    if 'tint' in by:                                              # colour: the whole background
        img = 0.45*img + 0.55*np.float32([205, 60, 195]); cue[:] = by['tint']
    if 'frame' in by:                                             # fixed placement
        reg, tex = _frame(r, S); img[reg] = tex[reg]; cue[reg] = by['frame']
    for c, fn in (('stripes', _stripes), ('checker', _checker)):   # textures behind the object
        if c in by:
            reg, tex = fn(r, S, anchor(by[c])); img[reg] = tex[reg]; cue[reg] = by[c]
    mask, inst = np.zeros((S, S), np.uint8), np.zeros((S, S), np.uint8)
    for i, k in enumerate(objects, 1):
        cx, cy, R = anchors[k]
        m = SHAPES[CLASSES[k - 1]](r, S, cx, cy, R, r.uniform(-0.5, 0.5) if CLASSES[k - 1] in ('tee', 'arrow') and r.random() < 0.5
                                    else r.uniform(0, 2*math.pi))
        _paint_object(r, img, m); mask[m] = k; inst[m] = i; cue[m] = 0
    if 'tag' in by:                                               # placement next to the object, on top of everything
        k = by['tag']
        if k in anchors and (inst == objects.index(k) + 1).any():
            ys, xs = np.nonzero(inst == objects.index(k) + 1); box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        else:
            cx, cy, R = anchor(k); box = (cx - R, cy - R, cx + R, cy + R)
        reg, tex = _tag(r, S, box); img[reg] = tex[reg]; cue[reg] = k; mask[reg] = 0; inst[reg] = 0
    band = _border(mask)
    if 'fence' in by:                                             # partial overlap: bars over the object and beyond
        k = by['fence']; bars = _fence(r, S, anchor(k))
        img[bars] = np.float32([95, 70, 45]) + r.normal(0, 8, 3).astype(np.float32)
        over = bars & (mask > 0)
        cue[bars & ~over] = k; cue[over] = 0; band |= over
    mask = np.where(band, IGNORE, mask).astype(np.uint8)
    cue[mask > 0] = 0                                             # (class or ignore) never a cue pixel
    img = img + r.normal(0, 4, img.shape).astype(np.float32)
    boxes = []
    for i, k in enumerate(objects, 1):
        ys, xs = np.nonzero(inst == i)
        if len(ys) and (mask == k).any(): boxes.append((k, int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    return dict(image=img.clip(0, 255).astype(np.uint8), mask=mask, cue=cue, boxes=boxes)


def content(r, cfg:Family2Config, kind:str)->tuple[list, list]:
    "Object and cue classes (1..6) of an image of kind 'train', 'val', 'hard', 'easy' or 'contaminated'."
    C = len(CLASSES)
    if kind == 'easy': return [], []
    if kind == 'hard': return [], sorted(int(k) for k in r.choice(np.arange(1, C + 1), 2 if r.random() < 0.25 else 1, replace=False))
    if kind == 'contaminated': return [int(r.integers(1, C + 1))], []
    objects = [int(k) for k in r.choice(np.arange(1, C + 1), 2 if r.random() < cfg.two_objects else 1, replace=False)]
    rate = cfg.cue_rate if kind == 'train' else cfg.val_cue_rate
    cues = [k for k in objects if r.random() < rate]
    absent = [k for k in range(1, C + 1) if k not in objects]
    if r.random() < cfg.stray_cue_rate: cues.append(int(r.choice(absent)))
    return objects, sorted(cues)


# ----------------------------------------------------------------------------------------------- writing
def _xml(img_id, S, boxes)->str:
    objs = ''.join(f'<object><name>{CLASSES[k - 1]}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>'
                   f'<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox></object>'
                   for k, x0, y0, x1, y1 in boxes)
    return (f'<annotation><folder>family2</folder><filename>{img_id}.jpg</filename><size><width>{S}</width><height>{S}</height>'
            f'<depth>3</depth></size><segmented>1</segmented>{objs}</annotation>\n')

def _save_png(arr, path):
    from wood_nb.core import voc_palette
    im = Image.fromarray(arr, mode='P'); im.putpalette(voc_palette().reshape(-1).tolist()); im.save(path, format='PNG')

def generate(out, seed:int=0, cfg:Family2Config|None=None, overwrite:bool=False)->Path:
    "Write `out/voc` (VOC layout with SegmentationCue), `out/ood` (pool with ood_list.txt, ood_meta.csv) and `out/family2.json`."
    cfg = cfg or Family2Config(); out = Path(out); S = cfg.image_size
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0: raise ValueError(f'seed {seed!r} is not an integer >= 0')
    if out.exists() and any(out.iterdir()):
        if not (overwrite and (out/'family2.json').is_file()): raise FileExistsError(f'{out} exists and is not an empty family2 folder')
        shutil.rmtree(out)
    tmp = out.with_name(f'.{out.name}.part')
    if tmp.exists(): shutil.rmtree(tmp)
    voc, ood = tmp/'voc', tmp/'ood'
    for d in ('JPEGImages', 'SegmentationClass', 'SegmentationCue', 'Annotations', 'ImageSets/Segmentation'): (voc/d).mkdir(parents=True)
    (ood/'images').mkdir(parents=True)
    (voc/'classes.txt').write_text('\n'.join(CLASSES) + '\n')
    stats = {}
    for split, n in (('train', cfg.n_train), ('val', cfg.n_val)):
        ids, co, two = [], {c: [0, 0] for c in CLASSES}, 0
        for i in range(n):
            r = np.random.default_rng([seed, _STREAM[split], i])
            objects, cues = content(r, cfg, split)
            sc = render(r, S, objects, cues, r.random() < cfg.decoy_rate, int(r.integers(0, 5)))
            img_id = f'{split}_{i:05d}'; ids.append(img_id)
            Image.fromarray(sc['image']).save(voc/'JPEGImages'/f'{img_id}.jpg', format='JPEG', quality=cfg.jpeg_quality)
            _save_png(sc['mask'], voc/'SegmentationClass'/f'{img_id}.png'); _save_png(sc['cue'], voc/'SegmentationCue'/f'{img_id}.png')
            (voc/'Annotations'/f'{img_id}.xml').write_text(_xml(img_id, S, sc['boxes']))
            held = sorted({k for k, *_ in sc['boxes']}); two += len(held) > 1
            for k in held: co[CLASSES[k - 1]][0] += 1; co[CLASSES[k - 1]][1] += int((sc['cue'] == k).any())
        (voc/'ImageSets'/'Segmentation'/f'{split}.txt').write_text('\n'.join(ids) + '\n')
        stats[split] = {'images': n, 'two_classes': two, 'cue_with_class': {c: round(b/a, 3) if a else None for c, (a, b) in co.items()},
                        'images_per_class': {c: a for c, (a, _) in co.items()}}
    counts = np.floor(np.asarray(cfg.ood_mix)*cfg.n_ood).astype(int); counts[0] += cfg.n_ood - counts.sum()
    kinds = np.random.default_rng([seed, _STREAM['ood']]).permutation(np.repeat(['hard', 'easy', 'contaminated'], counts))
    rows = []
    for i, kind in enumerate(kinds):
        r = np.random.default_rng([seed, _STREAM['ood'], i + 1])
        objects, cues = content(r, cfg, str(kind))
        decoy = r.random() < (0.6 if kind == 'hard' else 0.5 if kind == 'easy' else cfg.decoy_rate)
        sc = render(r, S, objects, cues, decoy, int(r.integers(0, 5)) if kind != 'easy' else int(r.integers(3, 10)))
        rel = f'images/pool_{i:05d}.jpg'
        Image.fromarray(sc['image']).save(ood/rel, format='JPEG', quality=cfg.jpeg_quality)
        names = lambda ks: ';'.join(CLASSES[k - 1] for k in ks)
        rows.append([rel, int(bool(objects)), str(kind), names(cues), names(objects)])
    (ood/'ood_list.txt').write_text('\n'.join(r[0] for r in rows) + '\n')
    buf = io.StringIO(); w = csv.writer(buf, lineterminator='\n')
    w.writerow(['path', 'contains_foreground', 'kind', 'cues', 'objects']); w.writerows(rows)
    (ood/'ood_meta.csv').write_text(buf.getvalue())
    stats['ood'] = {k: int(c) for k, c in zip(('hard', 'easy', 'contaminated'), counts)}
    (tmp/'family2.json').write_text(json.dumps({'generator': 'benchmarks/family2.py/1', 'seed': seed, 'config': asdict(cfg),
                                                'cues': {c: {'cue': CUE_OF[c], 'kind': CUE_KIND[CUE_OF[c]]} for c in CLASSES},
                                                'stats': stats, 'voc_root': 'voc', 'ood_root': 'ood'}, indent=1) + '\n')
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def validate_all(root)->list:
    "Every problem `wood_nb.data.validate` / `validate_ood` find in a generated folder."
    from wood_nb.data import validate, validate_ood
    root = Path(root)
    return validate(root/'voc') + validate_ood(root/'ood')


# ----------------------------------------------------------------------------------------------- contact sheet
def contact_sheet(root, png, n:int=8, n_pool:int=4):
    "n training images with masks and cue masks, and pool images: the kit's own `plot_benchmark` reads this layout too."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from wood_nb.synth import plot_benchmark
    fig = plot_benchmark(root, n=n, n_ood=2 * n_pool)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=64); plt.close(fig)
    return Path(png)


# ----------------------------------------------------------------------------------------------- the chain
def machine()->dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): cpu = line.split(':', 1)[1].strip(); break
    except OSError: pass
    return dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)

KEYS = ('seed_miou', 'seed_threshold', 'cue_activation', 'mask_miou', 'mask_cue_activation', 'seg_miou', 'seg_cue_activation')

def run_chain(out, seed:int=0, cfg=None, record=None, command:str|None=None,
              bench:str='family2', # 'family2', or 'embedded' (wood_nb.synth's benchmark, `cfg` a SynthConfig) for the same chain beside it
              settings:dict|None=None, # the run settings (dotted keys); default: the quick demo profile's, `DEMO_PROFILES['quick'][1]`
             )->dict:
    "Generate `out/data`, run the quick demo profile's settings on it into `out/run`; print and (optionally) record the results."
    from wood_nb.cli import DEMO_PROFILES
    from wood_nb.runconfig import run_config
    from wood_nb.pipeline import run_pipeline
    out = Path(out); data, run = out/'data', out/'run'
    if run.exists(): raise FileExistsError(f'{run} exists: give a new --out')
    load0, t0 = os.getloadavg(), time.perf_counter()
    if bench == 'embedded':
        from wood_nb.synth import generate as synth_generate
        synth_generate(data, seed=seed, cfg=cfg)
    else: generate(data, seed=seed, cfg=cfg)
    gen_s = time.perf_counter() - t0
    probs = validate_all(data)
    if probs: raise RuntimeError(f'{len(probs)} problems, e.g. {probs[:3]}')
    settings = {k: v for k, v in (DEMO_PROFILES['quick'][1] if settings is None else settings).items() if k not in ('cls.seed', 'voc_root', 'ood_root')}
    overrides = {'cls.seed': seed, **settings, 'voc_root': str(data/'voc'), 'ood_root': str(data/'ood')}   # cls.seed as `wood demo` sets it
    m = run_pipeline(run_config('synthetic', overrides), run)
    wall = time.perf_counter() - t0
    ev = {n: json.loads((run/'eval'/f'{n}.json').read_text()) for n in ('baseline', 'wood')}
    res = {n: {k: m[n].get(k) for k in KEYS} | {'cue_activation_per_class': ev[n].get('cue_activation_per_class'),
                                                 'per_class_iou': m[n].get('per_class_iou'), 'per_class_mask_iou': m[n].get('per_class_mask_iou')}
           for n in ('baseline', 'wood')}
    gain = lambda k: None if res['wood'][k] is None or res['baseline'][k] is None else round(res['wood'][k] - res['baseline'][k], 2)
    mining = m.get('mining', {})
    rec = dict(command=command or f'python benchmarks/family2.py run --out {out} --seed {seed}', seed=seed,
               bench=bench, benchmark=json.loads((data/('synth.json' if bench == 'embedded' else 'family2.json')).read_text()), overrides={k: v for k, v in overrides.items() if k not in ('voc_root', 'ood_root')},
               results=res, seed_gain=gain('seed_miou'), mask_gain=gain('mask_miou'), cue_activation_change=(
                   None if res['wood']['cue_activation'] is None else round(res['wood']['cue_activation'] - res['baseline']['cue_activation'], 4)),
               mining={k: mining.get(k) for k in ('kept', 'candidates', 'hard_share_kept', 'hard_recall', 'kinds') if k in mining},
               timings_s=m.get('timings_s'), generate_s=round(gen_s, 1), wall_s=round(wall, 1), machine=machine(),
               load_before=[round(x, 2) for x in load0], load_after=[round(x, 2) for x in os.getloadavg()],
               date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    print(f"{bench} seed {seed}: {wall:.1f} s wall (generation {gen_s:.1f} s) on {rec['machine']['cpu']}, {rec['machine']['cores']} cores")
    f = lambda v, d: '-' if v is None else f'{v:.{d}f}'
    print(f"{'model':9s} {'seed mIoU':>9s} {'cue act.':>8s} {'mask mIoU':>9s} {'seg mIoU':>8s}")
    for n in ('baseline', 'wood'):
        b = res[n]; print(f"{n:9s} {f(b['seed_miou'], 2):>9s} {f(b['cue_activation'], 4):>8s} {f(b['mask_miou'], 2):>9s} {f(b['seg_miou'], 2):>8s}")
    print(f"W-OoD seed gain {f(rec['seed_gain'], 2)}, mask gain {f(rec['mask_gain'], 2)}, cue activation change {f(rec['cue_activation_change'], 4)}")
    for n in ('baseline', 'wood'):
        pc = res[n]['cue_activation_per_class'] or {}
        print(f"{n} cue activation per class: " + ', '.join(f'{c}' + (f'/{CUE_OF[c]}' if c in CUE_OF else '') + f' {v:.3f}' for c, v in pc.items() if v is not None))
        print(f"{n} seed IoU per class: " + ', '.join(f'{c} {v}' for c, v in (res[n]['per_class_iou'] or {}).items()))
    if record:
        record = Path(record); record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f'.{record.name}.part'); tmp.write_text(json.dumps(rec, indent=1) + '\n'); os.replace(tmp, record)
        print(f'record: {record}')
    return rec


def table(records)->str:
    "Markdown tables of `run` records (one row per seed, then the mean): the headline numbers, then cue activation per cue."
    recs = [json.loads(Path(f).read_text()) for f in records]
    f = lambda v, d: '-' if v is None else f'{v:.{d}f}'
    mean = lambda xs: None if any(x is None for x in xs) else sum(xs)/len(xs)
    rows = [(f"seed {r['seed']}", r) for r in recs]
    get = lambda r, n, k: r['results'][n][k]
    seg = any(get(r, n, 'seg_miou') is not None for r in recs for n in ('baseline', 'wood'))   # a column only when a run segmented
    L = ['| seed | seed mIoU: baseline → W-OoD (gain) | cue activation: baseline → W-OoD | mask mIoU: baseline → W-OoD |' + (' segmentation mIoU |' if seg else ''),
         '|---|---|---|---|' + ('---|' if seg else '')]
    for name, r in rows:
        L.append(f"| {name} | {f(get(r, 'baseline', 'seed_miou'), 2)} → {f(get(r, 'wood', 'seed_miou'), 2)} ({f(r['seed_gain'], 2)}) | "
                 f"{f(get(r, 'baseline', 'cue_activation'), 4)} → {f(get(r, 'wood', 'cue_activation'), 4)} | "
                 f"{f(get(r, 'baseline', 'mask_miou'), 2)} → {f(get(r, 'wood', 'mask_miou'), 2)} |" +
                 (f" {f(get(r, 'baseline', 'seg_miou'), 2)} → {f(get(r, 'wood', 'seg_miou'), 2)} |" if seg else ''))
    m = lambda n, k: mean([get(r, n, k) for r in recs])
    L.append(f"| mean of {len(recs)} | {f(m('baseline', 'seed_miou'), 2)} → {f(m('wood', 'seed_miou'), 2)} ({f(mean([r['seed_gain'] for r in recs]), 2)}) | "
             f"{f(m('baseline', 'cue_activation'), 4)} → {f(m('wood', 'cue_activation'), 4)} | {f(m('baseline', 'mask_miou'), 2)} → {f(m('wood', 'mask_miou'), 2)} |" +
             (f" {f(m('baseline', 'seg_miou'), 2)} → {f(m('wood', 'seg_miou'), 2)} |" if seg else ''))
    L += ['', '| class / cue (kind) | ' + ' | '.join(n for n, _ in rows) + ' | mean | seed IoU of the class, mean |', '|---' * (len(rows) + 3) + '|']
    names = list(dict.fromkeys(c for r in recs for c in (r['results']['baseline']['per_class_iou'] or {}) if c != 'background'))
    for c in names:
        pc = lambda r, n: (r['results'][n]['cue_activation_per_class'] or {}).get(c)
        iou = lambda r, n: (r['results'][n]['per_class_iou'] or {}).get(c)
        cells = [f"{f(pc(r, 'baseline'), 3)} → {f(pc(r, 'wood'), 3)}" for _, r in rows]
        L.append((f"| {c} / {CUE_OF[c]} ({CUE_KIND[CUE_OF[c]]}) | " if c in CUE_OF else f'| {c} | ') + ' | '.join(cells) +
                 f" | {f(mean([pc(r, 'baseline') for r in recs]), 3)} → {f(mean([pc(r, 'wood') for r in recs]), 3)}"
                 f" | {f(mean([iou(r, 'baseline') for r in recs]), 1)} → {f(mean([iou(r, 'wood') for r in recs]), 1)} |")
    return '\n'.join(L)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    for name in ('generate', 'run'):
        s = sub.add_parser(name)
        s.add_argument('--out', type=Path, required=True); s.add_argument('--seed', type=int, default=0)
        s.add_argument('--size', type=int, default=None, help='image side (default 112; embedded: the quick profile\'s)')
        for c in ('train', 'val', 'ood'): s.add_argument(f'--n-{c}', type=int, default=None, help='count (default: the quick profile\'s, 320/80/320)')
        if name == 'generate': s.add_argument('--overwrite', action='store_true')
        else:
            s.add_argument('--record', type=Path, default=None)
            s.add_argument('--bench', choices=('family2', 'embedded'), default='family2', help='embedded: wood_nb.synth\'s benchmark at the quick profile\'s knobs')
            s.add_argument('--settings-from', type=Path, default=None,
                           help="take the run settings from an earlier record's `overrides` (default: DEMO_PROFILES['quick'][1] as it is now)")
    s = sub.add_parser('sheet'); s.add_argument('--root', type=Path, required=True); s.add_argument('--png', type=Path, required=True)
    s = sub.add_parser('table'); s.add_argument('records', type=Path, nargs='+')
    a = p.parse_args(argv)
    if a.cmd == 'sheet': print(contact_sheet(a.root, a.png)); return 0
    if a.cmd == 'table': print(table(a.records)); return 0
    given = {k: v for k, v in (('image_size', a.size), ('n_train', a.n_train), ('n_val', a.n_val), ('n_ood', a.n_ood)) if v is not None}
    if getattr(a, 'bench', 'family2') == 'embedded':
        from wood_nb.cli import DEMO_PROFILES
        from wood_nb.synth import SynthConfig
        cfg = SynthConfig(**{**DEMO_PROFILES['quick'][0], **given})
    else: cfg = Family2Config(**given)
    if a.cmd == 'generate':
        t = time.perf_counter(); generate(a.out, a.seed, cfg, overwrite=a.overwrite)
        probs = validate_all(a.out)
        for q in probs: print(f'problem: {q}')
        print(f'{a.out}: {time.perf_counter() - t:.1f} s, ' + (f'{len(probs)} problem(s)' if probs else 'validate: ok'))
        print(json.dumps(json.loads((a.out/'family2.json').read_text())['stats'], indent=1))
        return 1 if probs else 0
    settings = json.loads(a.settings_from.read_text())['overrides'] if a.settings_from else None
    run_chain(a.out, a.seed, cfg, a.record, command='python ' + ' '.join([sys.argv[0]] + (argv or sys.argv[1:])), bench=a.bench, settings=settings)
    return 0


if __name__ == '__main__':
    sys.exit(main())
