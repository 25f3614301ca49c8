"""trainer.model (GazeNet from the IR, checkpoints) and trainer.ridge_head (losses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.paths import ROOT, SHARED

torch = pytest.importorskip("torch", reason="torch (trainer extra) is needed for the trainer")

from gazeloop.calibration.mapping import RidgeMapping  # noqa: E402
from gazeloop.fastpath.ir_onnx import build_onnx  # noqa: E402
from gazeloop.fastpath.ir_reader import constant_value, read_ir  # noqa: E402
from gazeloop.trainer.model import (  # noqa: E402
    MODEL_VERSION,
    CheckpointError,
    GazeNet,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from gazeloop.trainer.ridge_head import (  # noqa: E402
    angular_error,
    gaze_angle_loss,
    ridge_fit_predict,
    ridge_head,
    sample_calibration_mask,
)

torch.set_num_threads(1)

IR_DIR = SHARED / "models" / "gaze-estimation-adas-0002"
XML = IR_DIR / "gaze-estimation-adas-0002.xml"
BIN = IR_DIR / "gaze-estimation-adas-0002.bin"


def _need_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"shared material folder not found at {SHARED} (holds the pretrained IR)")


@pytest.fixture(scope="module")
def net() -> GazeNet:
    _need_shared()
    return GazeNet.from_ir(XML, BIN).eval()


@pytest.fixture(scope="module")
def rebuild(tmp_path_factory: pytest.TempPathFactory):
    _need_shared()
    import onnxruntime as ort

    path = build_onnx(XML, BIN, tmp_path_factory.mktemp("rebuild") / "gaze.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Smooth blobs plus noise look more like eyes than uniform noise, and exercise the
    # ReLUs in both regimes.
    yy, xx = np.mgrid[0:60, 0:60]
    crops = []
    for _ in range(2 * n):
        cx, cy = rng.uniform(15, 45, 2)
        blob = 200 - 150 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 60)
        crops.append(np.clip(blob[None] + rng.normal(0, 10, (3, 60, 60)), 0, 255))
    c = np.asarray(crops, np.float32)
    head = rng.uniform(-30, 30, (n, 3)).astype(np.float32)
    return c[:n], c[n:], head


def _run(net: GazeNet, left, right, head) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        g, e = net(torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(head))
    return g.numpy(), e.numpy()


# -- GazeNet vs the ONNX rebuild ----------------------------------------------------------


def test_gazenet_matches_onnx_rebuild(net: GazeNet, rebuild) -> None:
    left, right, head = _inputs(5)
    g, e = _run(net, left, right, head)
    ref_g, ref_e = rebuild.run(
        ["gaze_vector", "embedding"],
        {"left_eye_image": left, "right_eye_image": right, "head_pose_angles": head},
    )
    assert g.shape == (5, 3) and e.shape == (5, 80)
    assert np.abs(g - ref_g).max() <= 1e-4
    assert np.abs(e - ref_e).max() <= 1e-4
    # Not a vacuous match: different eyes give different gaze.
    assert np.ptp(ref_g[:, 0]) > 1e-2


def test_head_pose_and_eye_order_reach_the_output(net: GazeNet, rebuild) -> None:
    # Swapping the eyes or changing the head pose must change both implementations alike,
    # which fails if the inputs were wired by position instead of name.
    left, right, head = _inputs(2, seed=1)
    feeds = [(right, left, head), (left, right, head + 20)]
    for a, b, h in feeds:
        g, _ = _run(net, a, b, h)
        ref = rebuild.run(
            ["gaze_vector"], {"left_eye_image": a, "right_eye_image": b, "head_pose_angles": h}
        )[0]
        assert np.abs(g - ref).max() <= 1e-4
    g0, _ = _run(net, left, right, head)
    g1, _ = _run(net, right, left, head)
    assert np.abs(g0 - g1).max() > 1e-3


def test_embedding_dim_and_head(net: GazeNet) -> None:
    assert net.embedding_dim == 80
    assert isinstance(net.head, torch.nn.Conv2d)
    assert (net.head.in_channels, net.head.out_channels, net.head.kernel_size) == (80, 3, (1, 1))
    # The head applied to the embedding is the gaze output: the embedding really is its input.
    left, right, head = _inputs(3)
    g, e = _run(net, left, right, head)
    w = net.head.weight.detach().numpy()[:, :, 0, 0]
    b = net.head.bias.detach().numpy()
    np.testing.assert_allclose(e @ w.T + b, g, atol=1e-5)


def test_every_ir_weight_is_in_the_module_exactly() -> None:
    _need_shared()
    graph = read_ir(XML, BIN)
    net = GazeNet.from_ir(XML, BIN)
    ir_floats = [
        v
        for layer in graph.by_type("Const")
        if (v := constant_value(graph, (layer.id, layer.outputs[0].id))).dtype == np.float16
    ]
    state = net.state_dict()
    assert sum(v.size for v in ir_floats) == sum(t.numel() for t in state.values())
    # f16 -> f32 is exact, so each conv weight equals its IR constant bit for bit.
    ir_by_shape = {}
    for v in ir_floats:
        ir_by_shape.setdefault(v.shape, []).append(v.astype(np.float32))
    first = net.layers.conv0.weight.detach().numpy()
    assert any(np.array_equal(first, v) for v in ir_by_shape[first.shape])


def test_input_normalisation_is_frozen_and_the_rest_trains(net: GazeNet) -> None:
    buffers = dict(net.named_buffers())
    assert len(buffers) == 4  # per-channel scale and shift of each eye image
    assert all(t.shape == (1, 3, 1, 1) for t in buffers.values())
    model = GazeNet.from_ir(XML, BIN)
    left, right, head = (torch.from_numpy(a) for a in _inputs(2))
    g, e = model(left, right, head)
    (g.sum() + e.sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads.values())
    assert grads["layers.conv0.weight"].abs().sum() > 0


def test_dynamic_batch(net: GazeNet) -> None:
    left, right, head = _inputs(4)
    g, e = _run(net, left, right, head)
    g1, e1 = _run(net, left[2:3], right[2:3], head[2:3])
    np.testing.assert_allclose(g1[0], g[2], atol=1e-5)
    np.testing.assert_allclose(e1[0], e[2], atol=1e-5)


# -- checkpoints --------------------------------------------------------------------------


def _perturbed(seed: int = 0) -> GazeNet:
    model = GazeNet.from_ir(XML, BIN).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    _need_shared()
    model = _perturbed()
    path = save_checkpoint(model, tmp_path / "ckpt.safetensors", extra={"step": 7})
    side = json.loads(sidecar_path(path).read_text())
    assert side["model_version"] == MODEL_VERSION and side["extra"] == {"step": 7}
    # safetensors: an 8-byte header length then JSON, no pickle opcodes.
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["__metadata__"]["model_version"] == MODEL_VERSION

    loaded = load_checkpoint(path).eval()
    left, right, head = _inputs(3)
    want, got = _run(model, left, right, head), _run(loaded, left, right, head)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # and it is the perturbed network, not the IR's
    pretrained = _run(GazeNet.from_ir(XML, BIN).eval(), left, right, head)
    assert np.abs(pretrained[0] - got[0]).max() > 1e-3


def test_checkpoint_of_another_model_version_is_refused(tmp_path: Path) -> None:
    _need_shared()
    path = save_checkpoint(GazeNet.from_ir(XML, BIN), tmp_path / "ckpt.safetensors")
    side = sidecar_path(path)
    doc = json.loads(side.read_text())
    doc["model_version"] = "gazeloop.trainer.gazenet/0"
    side.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"model version.*gazenet/0"):
        load_checkpoint(path)


def test_checkpoint_with_foreign_weights_is_refused(tmp_path: Path) -> None:
    _need_shared()
    a = save_checkpoint(GazeNet.from_ir(XML, BIN), tmp_path / "a.safetensors")
    b = save_checkpoint(_perturbed(), tmp_path / "b.safetensors")
    a.write_bytes(b.read_bytes())  # weights swapped under a's sidecar
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(a)
    sidecar_path(b).unlink()
    with pytest.raises(CheckpointError, match="sidecar not found"):
        load_checkpoint(b)


def test_trainer_never_pickles() -> None:
    src = ROOT / "trainer"
    for f in src.rglob("*.py"):
        text = f.read_text()
        for banned in ("torch.save", "torch.load", "import pickle", "weights_only=False"):
            assert banned not in text, f"{f.name} uses {banned}"


# -- the ridge head -----------------------------------------------------------------------


def test_ridge_by_hand() -> None:
    # y = x on x = 0, 1, 2: mean 1, variance 2/3, covariance 2/3. Unstandardised ridge with
    # lambda = 2/3 halves the slope: beta = (2/3) / (2/3 + 2/3) = 0.5, so x = 3 maps to
    # 1 + (3 - 1) * 0.5 = 2.
    E = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    Y = torch.cat([E, torch.full_like(E, 0.25)], 1)
    pid = torch.zeros(4, dtype=torch.long)
    cal = torch.tensor([True, True, True, False])
    pred, fitted = ridge_fit_predict(E, Y, pid, cal, lam=2 / 3, standardize=False)
    assert fitted.all()
    assert pred[3].tolist() == pytest.approx([2.0, 0.25], abs=1e-12)


def _numpy_ridge(X, Y, w, lam, Xq, standardize):
    """Textbook weighted ridge with an unpenalised intercept (augmented normal equations)."""
    sw = w.sum()
    mu = w @ X / sw
    s = np.sqrt(w @ (X - mu) ** 2 / sw) if standardize else np.ones(X.shape[1])
    A = np.hstack([np.ones((len(X), 1)), (X - mu) / s])
    P = np.eye(A.shape[1]) * lam
    P[0, 0] = 0.0
    coef = np.linalg.solve(A.T @ (w[:, None] * A) / sw + P, A.T @ (w[:, None] * Y) / sw)
    Aq = np.hstack([np.ones((len(Xq), 1)), (Xq - mu) / s])
    return Aq @ coef


@pytest.mark.parametrize("standardize", [False, True])
def test_ridge_head_equals_numpy_and_runtime_mapping(standardize: bool) -> None:
    rng = np.random.default_rng(3)
    n_per, d, lam = 15, 4, 0.3
    persons = [4, 11, 2]
    E = rng.normal(size=(n_per * 3, d)) * [1, 5, 0.1, 2]
    Y = rng.uniform(size=(n_per * 3, 2))
    w = rng.uniform(0.5, 2.0, n_per * 3)
    pid = np.repeat(persons, n_per)
    cal = np.tile(np.arange(n_per) < 9, 3)
    pred, _ = ridge_fit_predict(
        torch.tensor(E),
        torch.tensor(Y),
        torch.tensor(pid),
        torch.tensor(cal),
        weights=torch.tensor(w),
        lam=lam,
        standardize=standardize,
    )
    for p in persons:
        m, q = (pid == p) & cal, (pid == p) & ~cal
        want = _numpy_ridge(E[m], Y[m], w[m], lam, E[q], standardize)
        np.testing.assert_allclose(pred.numpy()[q], want, atol=1e-10)
        if standardize:  # the mapping served at run time, with alpha = lambda
            rt = RidgeMapping(alpha=lam).fit(E[m], Y[m], w[m]).predict(E[q])
            np.testing.assert_allclose(pred.numpy()[q], rt, atol=1e-10)


def test_ridge_head_gradients_flow() -> None:
    gen = torch.Generator().manual_seed(0)
    E = torch.randn(40, 80, generator=gen, requires_grad=True)
    w = torch.rand(40, generator=gen).add(0.5).requires_grad_(True)
    Y = torch.rand(40, 2, generator=gen)
    pid = torch.arange(40) // 20
    cal = sample_calibration_mask(pid, 8, 12, gen)
    out = ridge_head(E, Y, pid, cal, aspect=16 / 9, weights=w, lam=0.1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss > 0
    assert torch.isfinite(E.grad).all() and torch.isfinite(w.grad).all()
    # both the calibration rows (through the solve) and the query rows get gradient
    assert E.grad[cal].abs().sum() > 0 and E.grad[~cal].abs().sum() > 0
    assert w.grad[cal].abs().sum() > 0
    assert (w.grad[~cal] == 0).all()  # weights of non-calibration samples play no part


def test_ridge_head_loss_vanishes_for_an_embedding_linear_in_the_target() -> None:
    gen = torch.Generator().manual_seed(1)
    n_per, d = 30, 16
    pid = torch.arange(3 * n_per) // n_per
    Y = torch.rand(3 * n_per, 2, generator=gen, dtype=torch.float64)
    # A different linear map per person, as between real people: only a per-person fit works.
    A = torch.randn(3, 2, d, generator=gen, dtype=torch.float64)
    b = torch.randn(3, d, generator=gen, dtype=torch.float64)
    E = torch.einsum("bk,bkd->bd", Y, A[pid]) + b[pid]
    cal = sample_calibration_mask(pid, 8, 12, gen)
    out = ridge_head(E, Y, pid, cal, aspect=16 / 9, lam=1e-8)
    assert out.query.sum() >= 3 * (n_per - 12)
    assert out.loss < 1e-4
    # The same targets with an unrelated embedding are far off: the check can fail.
    noise = torch.randn(E.shape, generator=gen, dtype=torch.float64)
    assert ridge_head(noise, Y, pid, cal, aspect=16 / 9, lam=1e-8).loss > 0.1


def test_ridge_head_aspect_weights_x() -> None:
    E = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    Y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.3, 0.0]], dtype=torch.float64)
    pid = torch.zeros(3, dtype=torch.long)
    cal = torch.tensor([True, True, False])
    # Calibration says "always (0, 0)", so the query is predicted at (0, 0): error 0.3 in x.
    for aspect in (1.0, 2.0):
        out = ridge_head(E, Y, pid, cal, aspect=aspect, lam=1.0)
        assert float(out.loss) == pytest.approx(0.3 * aspect, rel=1e-9)


def test_person_without_calibration_is_left_out() -> None:
    E = torch.randn(10, 3, dtype=torch.float64)
    Y = torch.rand(10, 2, dtype=torch.float64)
    pid = torch.tensor([0] * 5 + [1] * 5)
    cal = torch.tensor([True] * 3 + [False] * 7)
    out = ridge_head(E, Y, pid, cal, aspect=1.0)
    assert out.query.tolist() == [False] * 3 + [True] * 2 + [False] * 5
    empty = ridge_head(E, Y, pid, torch.zeros(10, dtype=torch.bool), aspect=1.0)
    assert float(empty.loss) == 0.0 and not empty.query.any()


def test_sample_calibration_mask_counts() -> None:
    pid = torch.tensor([0] * 50 + [1] * 12 + [2] * 8 + [3] * 100)
    counts = {0: [], 1: [], 3: []}
    for seed in range(40):
        mask = sample_calibration_mask(pid, 8, 40, torch.Generator().manual_seed(seed))
        assert not mask[pid == 2].any()  # 8 samples: none left to predict after 8
        for p in counts:
            counts[p].append(int(mask[pid == p].sum()))
    assert min(counts[0]) >= 8 and max(counts[0]) <= 40
    assert set(counts[1]) <= set(range(8, 12))  # capped at n - 1
    assert max(counts[3]) > 30 and min(counts[3]) < 16  # the range is actually used
    a = sample_calibration_mask(pid, 8, 40, torch.Generator().manual_seed(5))
    b = sample_calibration_mask(pid, 8, 40, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sample_calibration_mask_takes_whole_targets() -> None:
    pid = torch.zeros(60, dtype=torch.long)
    groups = torch.arange(60) // 4  # 15 targets of 4 frames
    mask = sample_calibration_mask(pid, 3, 5, torch.Generator().manual_seed(0), groups=groups)
    per_target = torch.zeros(15, dtype=torch.long).index_add_(0, groups, mask.long())
    assert set(per_target.tolist()) <= {0, 4}  # a target is all in or all out
    assert 3 <= int((per_target == 4).sum()) <= 5


def test_angular_error_and_loss() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    t10 = math.radians(10)
    b = torch.tensor([[math.sin(t10), 0.0, math.cos(t10)], [0.0, 0.0, -1.0]], dtype=torch.float64)
    err = angular_error(a, b)
    assert err.tolist() == pytest.approx([t10, math.pi], abs=1e-9)  # length does not matter
    loss = gaze_angle_loss(a, b, weights=torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(t10, abs=1e-9)
    same = torch.tensor([[0.1, -0.2, 0.9]], dtype=torch.float64, requires_grad=True)
    gaze_angle_loss(same, same.detach().clone()).backward()
    assert torch.isfinite(same.grad).all()
