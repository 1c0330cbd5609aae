"The CPU fast path of CAM extraction (channels-last weights and inputs) gives the plain path's CAM records within float noise."
import numpy as np
import torch

from wood_nb.cam import compute_cams, load_cam_record
from wood_nb.model import CAMClassifier


class Images(torch.utils.data.Dataset):
    "Random images of two sizes with labels (what compute_cams reads from a VOCDataset)."
    ids = [f'im{i}' for i in range(5)]
    def __len__(self): return len(self.ids)
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        hw = (75, 100) if i % 2 else (100, 75)
        return {'id': self.ids[i], 'image': torch.randn(3, *hw, generator=g), 'label': torch.tensor([1., 0., 1.])}


def test_channels_last_cams_equal_plain(tmp_path):
    torch.manual_seed(0)
    model = CAMClassifier('resnet10t', 3, output_stride=16).eval()
    for name, fast in (('plain', False), ('fast', True)):
        compute_cams(model, Images(), tmp_path/name, channels_last=fast, batch_size=3, progress=False, device='cpu')
    assert next(model.parameters()).is_contiguous()                      # the caller's model is given back as it was
    for i in Images.ids:
        a, b = load_cam_record(tmp_path/'plain'/f'{i}.npz'), load_cam_record(tmp_path/'fast'/f'{i}.npz')
        assert (a['keys'] == b['keys']).all()
        for k in ('cam', 'high_res'):
            x, y = a[k].astype(np.float32), b[k].astype(np.float32)
            assert np.allclose(x, y, rtol=1e-3, atol=1e-3 * float(np.abs(x).max())), (i, k, float(np.abs(x - y).max()))


def test_channels_last_predictions_equal_plain(tmp_path):
    "predict_split's channels-last path writes the plain path's label maps (probabilities within float noise)."
    import warnings
    from wood_nb.segment import DeepLabV2, predict, predict_split
    from wood_nb.synth import SynthConfig, generate
    from wood_nb.core import load_mask
    from wood_nb.data import read_split
    voc = generate(tmp_path/'b', seed=1, cfg=SynthConfig(image_size=48, n_train=4, n_val=4, n_ood=4))/'voc'
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        net = DeepLabV2('resnet10t', 6, output_stride=16).eval()
    x = torch.randn(2, 3, 48, 64)
    plain = predict(net, x, scales=(1.0, 1.5))
    fast = predict(net.to(memory_format=torch.channels_last), x, scales=(1.0, 1.5), channels_last=True)
    net.to(memory_format=torch.contiguous_format)
    assert torch.allclose(plain, fast, atol=1e-5)
    for name, cl in (('plain', False), ('fast', True)):
        predict_split(net, voc, 'val', tmp_path/name, scales=(1.0, 1.5), batch_size=2, progress=False, channels_last=cl)
    assert all(p.is_contiguous() for p in net.parameters())
    for i in read_split(voc, 'val'):
        a, b = load_mask(tmp_path/'plain'/f'{i}.png'), load_mask(tmp_path/'fast'/f'{i}.png')
        assert (a == b).mean() > 0.999, i
