import numpy as np
import pytest

from anomalens.errors import AnomalensError
from anomalens.tools.reconstruction import FlowPatchPCA


def flows(n, rng, vertical=False):
    """Flow fields (48x72: 2x3 cells of 24 px) where whole cells glide sideways (or, unseen, up/down)."""
    out = []
    for _ in range(n):
        flow = np.zeros((48, 72, 2), np.float32)
        for _ in range(2):
            row, col = rng.integers(0, 2), rng.integers(0, 3)
            speed = rng.uniform(0.5, 2.0) * rng.choice([-1, 1])
            flow[row * 24 : (row + 1) * 24, col * 24 : (col + 1) * 24, 1 if vertical else 0] = speed
        out.append(flow)
    return out


def test_features_average_each_cell_into_patch_vectors():
    model = FlowPatchPCA(cell=24, patch=4)
    flow = np.zeros((50, 75, 2), np.float32)
    flow[:24, 24:48, 0] = 2.0  # cell (0, 1) moves right; the 2-px and 3-px margins are outside the grid
    features = model.features(flow)
    assert features.shape == (2, 3, 32)
    np.testing.assert_allclose(features[0, 1].reshape(4, 4, 2)[..., 0], 2.0)
    assert not features[0, 0].any() and not features[1].any()
    with pytest.raises(AnomalensError, match="smaller than one 24px cell"):
        model.features(np.zeros((10, 10, 2), np.float32))


def test_unseen_motion_patterns_reconstruct_badly_and_state_round_trips():
    rng = np.random.default_rng(0)
    model = FlowPatchPCA(cell=24, patch=4, components=4)
    model.fit([model.features(f) for f in flows(400, rng)])
    normal = np.array([model.score(f).max() for f in flows(100, rng)])
    odd = np.array([model.score(f).max() for f in flows(100, rng, vertical=True)])
    assert np.mean(normal > 1.0) < 0.05
    assert np.mean(odd > 1.0) > 0.9
    copy = FlowPatchPCA.from_state(model.state())
    probe = flows(1, rng, vertical=True)[0]
    np.testing.assert_allclose(copy.score(probe), model.score(probe), rtol=1e-5)


def test_fit_and_score_refuse_what_they_cannot_use():
    model = FlowPatchPCA()
    with pytest.raises(AnomalensError, match="not fitted"):
        model.score(np.zeros((48, 48, 2), np.float32))
    with pytest.raises(AnomalensError, match="no motion"):
        model.fit([])
    with pytest.raises(AnomalensError, match="moving patches"):
        model.fit([model.features(np.zeros((48, 48, 2), np.float32))])


def test_quiet_cells_borrow_the_busy_level_only_where_the_ground_looks_walked():
    from anomalens.tools.motion import MIN_ACTIVE, pooled_reference

    rng = np.random.default_rng(0)
    values = np.zeros((200, 1, 3), np.float32)
    values[:, 0, 0] = rng.uniform(0.5, 2.0, 200)  # a busy cell
    values[: MIN_ACTIVE - 1, 0, 1] = 0.4  # quiet: too few active frames to trust its own level
    values[:5, 0, 2] = 0.4  # quiet too
    walkable = np.array([[True, True, False]])
    reference = pooled_reference(values, walkable)
    busy_level = np.quantile(values[:, 0, 0], 0.999)
    assert reference[0, 0] == pytest.approx(busy_level, rel=1e-5)
    assert reference[0, 1] == pytest.approx(busy_level, rel=1e-5)  # looks walked: borrows
    assert reference[0, 2] == pytest.approx(np.quantile(values[:, 0, 2], 0.999))  # lawn: stays strict
    np.testing.assert_allclose(pooled_reference(values), np.quantile(values, 0.999, axis=0), rtol=1e-6)
