"Run under torchrun by test_ddp.py: DDP training with the shared loop, and sharded CAM inference."
import argparse, json, os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wood_nb.cam import compute_cams
from wood_nb.train import TrainConfig, dist_info, fit, init_distributed, make_loader, multilabel_step


class Data(torch.utils.data.Dataset):
    "Deterministic items (no augmentation noise), so DDP and one process see identical global batches."
    def __init__(self, n=24, size=8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g); self.y = (torch.rand(n, 3, generator=g) > 0.5).float()
        self.ids = [f'im{i:02d}' for i in range(n)]
    def __len__(self): return len(self.ids)
    def __getitem__(self, i): return {'id': self.ids[i], 'image': self.x[i], 'label': self.y[i]}


class TinyCAM(nn.Module):
    "A conv net with a bias-free 1x1 head: logits are the GAP of the pre-ReLU CAMs."
    num_classes = 3
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()); self.head = nn.Conv2d(8, 3, 1, bias=False)
    def forward(self, x): return self.head(self.body(x)).mean((2, 3))
    def cams(self, x): return F.relu(self.head(self.body(x)))


if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--out', type=Path, required=True); a = p.parse_args()
    device = init_distributed('cpu'); rank, world, _ = dist_info()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, momentum=0.9, progress=False)
    model = TinyCAM()
    hist = fit(model, make_loader(Data(), cfg), multilabel_step, cfg, out=a.out/'train', device=device)
    torch.save(model.state_dict(), a.out/f'weights_rank{rank}.pt')
    n = compute_cams(model, Data(n=7), a.out/'cams', batch_size=2, progress=False)
    (a.out/f'rank{rank}.json').write_text(json.dumps({'world': world, 'written': n, 'loss': hist[-1]['loss']}))
