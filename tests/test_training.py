import numpy as np
import pytest
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


def test_several_input_channels_train_and_give_per_patch_features():
    from magpipe.model import dense_features, patch_features

    x, m = _patches()
    x2, m2 = np.stack([x, -x], axis=1), np.stack([m, m], axis=1)
    result = train_autoencoder(x2, m2, CFG)
    model = result.model.cpu().eval()
    assert model.in_channels == 2 and model(torch.from_numpy(x2[:5])).shape == (5, 2, 9, 9)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    # a tile's dense features equal the per-patch ones with several channels too
    tile = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 2, 14, 15)).astype("float32"))
    dense = dense_features(model, tile, [0, 3])
    pats = tile.unfold(2, 9, 1).unfold(3, 9, 1)[0].permute(1, 2, 0, 3, 4).reshape(-1, 2, 9, 9)
    torch.testing.assert_close(dense.reshape(dense.shape[0], -1).T, patch_features(model, pats, [0, 3]),
                               atol=1e-5, rtol=1e-4)


def _views(x, m, shift=1):
    """Second views for the contrastive objective: the same waves a cell further along."""
    return np.roll(x, shift, axis=-1), np.roll(m, shift, axis=-1)


@pytest.mark.parametrize("objective", ["masked", "contrastive"])
def test_other_objectives_learn_and_resume_to_the_uninterrupted_result(tmp_path, objective):
    x, m = _patches()
    cfg = CFG.model_copy(update={"objective": objective})
    pairs = _views(x, m) if objective == "contrastive" else None
    full = train_autoencoder(x, m, cfg, pairs=pairs)
    losses = [r["val_loss"] for r in full.history]
    assert losses[-1] < losses[0]
    ckpt = tmp_path / "train.ckpt"
    train_autoencoder(x, m, cfg.model_copy(update={"epochs": 2}), checkpoint=ckpt, pairs=pairs)
    resumed = train_autoencoder(x, m, cfg, checkpoint=ckpt, pairs=pairs)
    for va, vb in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(va, vb)
    plain = train_autoencoder(x, m, CFG.model_copy(update={"objective": "reconstruct"}))
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                     full.model.state_dict().values()))


def test_contrastive_needs_second_views_and_only_it_takes_them():
    x, m = _patches(n=40)
    with pytest.raises(ValueError, match="second views"):
        train_autoencoder(x, m, CFG.model_copy(update={"objective": "contrastive"}))
    with pytest.raises(ValueError, match="second views"):
        train_autoencoder(x, m, CFG, pairs=_views(x, m))


def test_masked_objective_scores_hidden_valid_cells_only():
    from magpipe.objectives import block_mask, masked_mse

    hidden = block_mask(64, 15, torch.Generator().manual_seed(0))
    assert hidden.shape == (64, 1, 15, 15) and 0.3 < hidden.float().mean() < 0.7
    x = torch.zeros(1, 1, 4, 4)
    recon = torch.ones(1, 1, 4, 4)
    sel = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    sel[..., 0, :2] = True
    recon[..., 3, 3] = 100.0  # an error where nothing is selected does not count
    assert float(masked_mse(recon, x, sel)) == 1.0


def test_masked_layers_hides_whole_layers_never_all_and_is_masked_on_one_grid():
    from magpipe.objectives import layer_mask, objective_loss
    from magpipe.model import PatchAutoencoder

    hide = layer_mask(2000, 3, torch.Generator().manual_seed(0))
    assert hide.shape == (2000, 3, 1, 1) and not hide.all(dim=1).any()
    assert 0.15 < hide.float().mean() < 0.3 and hide.any(dim=1).float().mean() > 0.3
    model = PatchAutoencoder(9, (4, 8, 8, 8), 16, in_channels=1)
    x = torch.randn(8, 1, 9, 9)
    m = torch.ones_like(x, dtype=torch.bool)
    one, two = (objective_loss(o, model, x, m, torch.Generator().manual_seed(1)) for o in ("masked", "masked_layers"))
    assert torch.equal(one, two)  # one grid: nothing to hide but blocks, drawn alike


def test_masked_layers_learns_a_stack_and_resumes(tmp_path):
    x, m = _patches()
    x2, m2 = np.stack([x, -x], axis=1), np.stack([m, m], axis=1)
    cfg = CFG.model_copy(update={"objective": "masked_layers"})
    full = train_autoencoder(x2, m2, cfg)
    assert full.history[-1]["val_loss"] < full.history[0]["val_loss"]
    ckpt = tmp_path / "train.ckpt"
    train_autoencoder(x2, m2, cfg.model_copy(update={"epochs": 2}), checkpoint=ckpt)
    resumed = train_autoencoder(x2, m2, cfg, checkpoint=ckpt)
    for va, vb in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(va, vb)


def test_training_leaves_the_callers_random_state_alone():
    """The weights come from the config's seed, and the caller's random numbers stay its own: a long-lived
    process that trains between two draws gets the draws it would have got without training."""
    from magpipe.features import untrained_encoder

    x, m = _patches(n=120)
    cfg = CFG.model_copy(update={"epochs": 1})
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    result = train_autoencoder(x, m, cfg)
    assert torch.equal(torch.rand(5), expected)
    # and the weights training started from are the seed's alone, whatever the caller's state was
    torch.manual_seed(999)
    again = train_autoencoder(x, m, cfg)
    assert all(torch.equal(a, b) for a, b in zip(result.model.parameters(), again.model.parameters()))
    start = untrained_encoder(result.model, cfg.seed)
    torch.manual_seed(cfg.seed)
    from magpipe.model import PatchAutoencoder

    plain = PatchAutoencoder(9, cfg.channels, cfg.hidden)  # what torch.manual_seed(seed) used to give
    assert all(torch.equal(a, b) for a, b in zip(start.parameters(), plain.parameters()))


TRAIN_BOTH = """
import json, sys
import torch
from magpipe.config import RunConfig
from magpipe.pipeline import run_ingest, run_labels, run_patches, run_train
for name, conf in json.loads(sys.argv[1]).items():
    cfg = RunConfig.model_validate(conf)
    out = sys.argv[2] + "/" + name
    for stage in (run_ingest, run_labels, run_patches, run_train):
        stage(out, cfg)
"""


@pytest.mark.slow
def test_two_runs_in_one_process_each_equal_their_own_run_in_a_fresh_process(survey_files, tmp_path):
    """A long-lived worker trains for two runs with different seeds and devices, one after the other and then
    in two threads at once: each gets the weights its own run gets in a fresh process (no random state,
    device or setting of one run reaches the other)."""
    import json
    import os
    import subprocess
    import sys
    import threading

    from magpipe.pipeline import run_ingest, run_labels, run_patches, run_train
    from magpipe.testing import tiny_config

    inputs = {"survey": survey_files["survey"], "labels": survey_files["labels"]}
    cfgs = {"a": tiny_config(model={"seed": 1}, runtime={"device": "cpu"}).with_inputs(**inputs),
            "b": tiny_config(model={"seed": 2}, patches={"seed": 5}, runtime={"device": "auto"}).with_inputs(**inputs)}
    r = subprocess.run([sys.executable, "-c", TRAIN_BOTH, json.dumps({k: c.model_dump(mode="json")
                                                                     for k, c in cfgs.items()}), str(tmp_path / "fresh")],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, **{k: str(torch.get_num_threads())  # this process's torch threads
                                             for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}})
    assert r.returncode == 0, r.stderr[-3000:]

    def train(root: str, name: str) -> None:
        out = tmp_path / root / name
        for stage in (run_ingest, run_labels, run_patches, run_train):
            stage(out, cfgs[name])

    for name in cfgs:
        train("in-turn", name)
    threads = [threading.Thread(target=train, args=("threads", name)) for name in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def weights(root: str, name: str) -> dict:
        return torch.load(tmp_path / root / name / "model" / "autoencoder.pt", weights_only=True)

    for name in cfgs:
        fresh = weights("fresh", name)
        for root in ("in-turn", "threads"):
            got = weights(root, name)
            assert all(torch.equal(fresh[k], got[k]) for k in fresh), (name, root)
    assert not torch.equal(weights("fresh", "a")["encoder.0.weight"], weights("fresh", "b")["encoder.0.weight"])
