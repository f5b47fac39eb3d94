import numpy as np
import torch

from magpipe.config import ModelConfig
from magpipe.training import train_autoencoder


def _patches(n=300, p=9, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:p, 0:p] / p
    waves = np.sin(2 * np.pi * (rng.uniform(0.5, 2, (n, 1, 1)) * xx + rng.uniform(0, 1, (n, 1, 1))))
    x = (waves + 0.1 * rng.normal(size=(n, p, p))).astype("float32")
    mask = rng.uniform(size=x.shape) > 0.05
    return np.where(mask, x, 0).astype("float32"), mask


CFG = ModelConfig(channels=(4, 8, 8, 8), hidden=32, epochs=4, batch_size=32, patience=10, learning_rate=3e-3)


def test_training_learns_and_is_seeded():
    x, m = _patches()
    a = train_autoencoder(x, m, CFG)
    b = train_autoencoder(x, m, CFG)
    losses = [r["val_loss"] for r in a.history]
    assert losses[-1] < losses[0]
    assert a.best_val_loss < float(np.mean(x[m] ** 2))  # better than predicting zeros
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_resume_from_checkpoint_gives_the_uninterrupted_result(tmp_path):
    x, m = _patches()
    full = train_autoencoder(x, m, CFG)
    ckpt = tmp_path / "train.ckpt"
    train_autoencoder(x, m, CFG.model_copy(update={"epochs": 2}), checkpoint=ckpt)  # "crash" after 2 epochs
    assert ckpt.exists()
    resumed = train_autoencoder(x, m, CFG, checkpoint=ckpt)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for va, vb in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(va, vb)


def test_early_stopping_stops_when_validation_stalls():
    x, m = _patches()
    cfg = CFG.model_copy(update={"epochs": 30, "patience": 1, "learning_rate": 1e-9})
    result = train_autoencoder(x, m, cfg)
    assert len(result.history) < 30
