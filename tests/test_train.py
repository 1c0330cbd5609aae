"The shared loop on a real CAM classifier and VOC-layout data: exact resume, with augmentation and loader workers."
import pytest
import torch

from wood_nb.core import load_weights
from wood_nb.data import VOCDataset, train_transforms
from wood_nb.model import CAMClassifier
from wood_nb.synth import SynthConfig, generate
from wood_nb.train import TrainConfig, fit, make_loader, multilabel_step


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('t')/'b', seed=3, cfg=SynthConfig(image_size=40, n_train=12, n_val=2, n_ood=2))/'voc'


def _run(voc, out, workers, stop_at=None):
    torch.manual_seed(0)
    model = CAMClassifier('resnet10t', 6, output_stride=16)
    ds = VOCDataset(voc, 'train', transform=train_transforms(40, (32, 48)), with_mask=False)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01, momentum=0.9, num_workers=workers, progress=False)
    def stop(epoch, logs):
        if epoch == stop_at: raise KeyboardInterrupt
    hist = fit(model, make_loader(ds, cfg), multilabel_step, cfg, out=out, on_epoch_end=stop, device='cpu')
    return model.state_dict(), hist


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_gives_the_same_weights(voc, tmp_path, workers):
    full, hist = _run(voc, tmp_path/'a', workers)
    with pytest.raises(KeyboardInterrupt): _run(voc, tmp_path/'b', workers, stop_at=1)
    assert load_weights(tmp_path/'b'/'checkpoint.pt')['epoch'] == 1
    resumed, hist2 = _run(voc, tmp_path/'b', workers)
    for k in full: assert torch.equal(full[k], resumed[k]), k
    assert hist == hist2


def test_different_seed_different_weights(voc, tmp_path):
    a, _ = _run(voc, tmp_path/'a', 0)
    torch.manual_seed(0)
    model = CAMClassifier('resnet10t', 6, output_stride=16)
    ds = VOCDataset(voc, 'train', transform=train_transforms(40, (32, 48)), with_mask=False)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01, momentum=0.9, seed=1, progress=False)
    fit(model, make_loader(ds, cfg), multilabel_step, cfg, device='cpu')
    assert any(not torch.equal(a[k], v) for k, v in model.state_dict().items())


def test_checkpoint_for_other_settings_is_refused(voc, tmp_path):
    _run(voc, tmp_path/'a', 0)
    torch.manual_seed(0)
    model = CAMClassifier('resnet10t', 6, output_stride=16)
    ds = VOCDataset(voc, 'train', transform=train_transforms(40, (32, 48)), with_mask=False)
    cfg = TrainConfig(epochs=5, batch_size=4, progress=False)
    with pytest.raises(ValueError, match='was written for 9 steps'):
        fit(model, make_loader(ds, cfg), multilabel_step, cfg, out=tmp_path/'a', device='cpu')
