import numpy as np
import pytest
import torch

from magpipe.model import (
    PatchAutoencoder,
    dense_anomaly,
    dense_features,
    dilations_for,
    patch_anomaly,
    patch_features,
    resolve_layers,
)


@pytest.mark.parametrize("patch_px", [9, 15, 31, 51])
def test_receptive_field_is_exactly_one_patch(patch_px):
    model = PatchAutoencoder(patch_px, (2, 2, 2, 2), 8)
    code = model.encode(torch.zeros(1, 1, patch_px, patch_px))[-1]
    assert code.shape[-2:] == (1, 1)
    assert sum(dilations_for(patch_px, 4)) == patch_px // 2


def test_too_small_patch_for_depth_is_refused():
    with pytest.raises(ValueError, match="too small"):
        dilations_for(5, 4)


@pytest.mark.parametrize("patch_px,layers,C,readout", [(9, [0, 1, 2, 3], 1, "mean_centre"), (15, [1, 3], 1, "mean_centre"),
                                                        (11, [2], 1, "mean_centre"), (9, [0, 3], 3, "mean_centre"),
                                                        (15, [0, 1, 2, 3], 1, "mean_std_centre"),
                                                        (9, [1, 3], 3, "mean_std_centre")])
def test_dense_features_and_anomaly_equal_per_patch(patch_px, layers, C, readout):
    """The whole-tile path must give every pixel its own patch's features (the scaling trick)."""
    torch.manual_seed(0)
    model = PatchAutoencoder(patch_px, (4, 8, 8, 8), 16, in_channels=C).eval()
    h = patch_px // 2
    H, W = 17, 23
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(1, 1, H + 2 * h, W + 2 * h, generator=gen) > 0.15
    tile = torch.randn(1, C, H + 2 * h, W + 2 * h, generator=gen) * mask
    patches = tile[0].unfold(1, patch_px, 1).unfold(2, patch_px, 1).permute(1, 2, 0, 3, 4).reshape(
        -1, C, patch_px, patch_px)
    pmask = mask[0, 0].unfold(0, patch_px, 1).unfold(1, patch_px, 1).reshape(-1, 1, patch_px, patch_px)

    dense = dense_features(model, tile, layers, readout)
    ref = patch_features(model, patches, layers, readout)
    assert dense.shape == (model.feature_size(layers, readout), H, W)
    np.testing.assert_allclose(dense.reshape(dense.shape[0], -1).T.numpy(), ref.numpy(), atol=1e-5, rtol=1e-4)

    a_dense = dense_anomaly(model, tile, mask, 3, rows_per_step=5)
    a_ref = patch_anomaly(model, patches, pmask, 3)
    np.testing.assert_allclose(a_dense.reshape(-1).numpy(), a_ref.numpy(), atol=1e-5, rtol=1e-4)


def test_std_readout_gives_the_last_layer_once_and_refuses_unknown_names():
    model = PatchAutoencoder(9, (2, 3, 4, 5), 8).eval()
    assert model.feature_size([0, 3], "mean_centre") == 2 * 2 + 2 * 5
    assert model.feature_size([0, 3], "mean_std_centre") == 3 * 2 + 5  # the 1x1 map: its centre alone
    x = torch.randn(4, 1, 9, 9)
    f = patch_features(model, x, [3], "mean_std_centre")
    torch.testing.assert_close(f, model.encode(x)[3][:, :, 0, 0])
    with pytest.raises(ValueError, match="readout"):
        patch_features(model, x, [3], "median")


def test_layer_selection_is_validated():
    model = PatchAutoencoder(9, (2, 2, 2, 2), 8)
    assert resolve_layers(model, None) == [0, 1, 2, 3]
    assert resolve_layers(model, [3, 1, 1]) == [1, 3]
    with pytest.raises(ValueError, match="layers"):
        resolve_layers(model, [4])


def test_seeded_weights_are_torchs_own_and_no_other_thread_changes_them():
    """seeded_autoencoder draws from a generator of its own: the weights torch.manual_seed(seed) gives, and the
    same while other threads seed and draw from the process's generator (as concurrent runs on one worker do)."""
    import threading

    from magpipe.model import PatchAutoencoder, seeded_autoencoder

    torch.manual_seed(5)
    reference = PatchAutoencoder(9, (8, 16), 32, in_channels=3).state_dict()
    before = torch.get_rng_state()
    got = seeded_autoencoder(5, 9, (8, 16), 32, in_channels=3).state_dict()
    assert list(got) == list(reference) and all(torch.equal(got[k], reference[k]) for k in got)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state untouched

    stop = threading.Event()

    def hammer() -> None:  # another run's thread, seeding and drawing all the while
        while not stop.is_set():
            torch.manual_seed(1)
            torch.rand(64)

    other = threading.Thread(target=hammer)
    other.start()
    try:
        builds = [seeded_autoencoder(5, 9, (8, 16), 32, in_channels=3).state_dict() for _ in range(200)]
    finally:
        stop.set()
        other.join()
    assert all(torch.equal(b[k], reference[k]) for b in builds for k in reference)
