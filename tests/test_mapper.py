"""FFCLIP mapper: parity with a PyTorch `Dynamic_mapper` (upstream keys), gradients, strength, input forms,
PyTorch-default initialisation, the `ffclip` converter and its bad inputs."""
import copy
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert_weights.__main__ import main as convert_main
from convert_weights.ffclip import convert_mapper
from ffclip_jax.weights import pretrained
from ffclip_jax.errors import CheckpointError, ConversionError, InputError
from ffclip_jax.models.mapper import DynamicMapper
from torch_ref import mapper as torch_mapper
from torch_ref import stylegan2 as torch_stylegan2
from parity import U32, assert_float32_parity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, N_LATENT = 3, 18


def _numpy_sd(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _inputs(seed, dim, batch=B, n_latent=N_LATENT):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((batch, n_latent, dim)).astype(np.float32)
    e = (rng.standard_normal((batch, 1, dim)) * 0.5).astype(np.float32)  # unnormalised CLIP text features scale
    return w, e


@pytest.fixture(scope="module", params=[64, pytest.param(512, marks=pytest.mark.slow)], ids=["dim64", "dim512"])
def pair(request):
    """(torch Dynamic_mapper, jax DynamicMapper, variables converted from the torch state dict); width 64 in the
    default suite, upstream's 512 in the slow one."""
    torch.manual_seed(0)
    ref = torch_mapper.randomize_layer_norms_(torch_mapper.DynamicMapper(N_LATENT, request.param)).eval()
    config, variables = convert_mapper(_numpy_sd(ref), source="test")
    assert config == dict(n_latent=N_LATENT, style_dim=request.param, num_blocks=4)
    return ref, DynamicMapper(**config), variables


@pytest.fixture(scope="module")
def apply_fn(pair):
    _, mapper, _ = pair
    return jax.jit(lambda v, w, e, s: mapper.apply(v, w, e, strength=s))


def _f64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _torch_w_hat(ref, w, e):
    with torch.no_grad():
        return (torch.from_numpy(w) + ref(torch.from_numpy(w), torch.from_numpy(e))).numpy()


def _assert_close(a, b, max_tol, mean_tol, what):
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    print(f"{what}: max |diff| {d.max():.3g}, mean {d.mean():.3g}")
    assert d.max() <= max_tol and d.mean() <= mean_tol, f"{what}: max {d.max():.3g} mean {d.mean():.3g}"


# The mapper is badly conditioned at random weights (LayerNorms over rows whose variance is far below eps, chained
# four times): PyTorch's own float32 w_hat differs from its float64 w_hat by up to 0.01-0.3 (width 512), an
# amplification of float32's 6e-8 rounding by ~1e5..1e6. So float32 is checked to be as accurate as PyTorch's own
# float32 (parity.assert_float32_parity), and exact parity in float64, where the same amplification of float64's
# 1.1e-16 leaves ~1e-11..1e-10 (measured 1e-11 at width 64, 2e-10 at 512): the 1e-5 bounds below hold with a margin
# of 1e4 on any CPU.


def test_forward_float32_as_accurate_as_torch(pair, apply_fn):
    ref, mapper, variables = pair
    w, e = _inputs(1, mapper.style_dim)
    truth = _torch_w_hat(copy.deepcopy(ref).double(), w.astype(np.float64), e.astype(np.float64))
    assert_float32_parity(apply_fn(variables, w, e, 1.0), _torch_w_hat(ref, w, e), truth, "w_hat")


def test_forward_and_gradients_match_torch_float64(pair):
    """w_hat, d/dw and d/dparams of <w_hat, cot> against torch autograd, both in float64."""
    ref, mapper, variables = pair
    ref64 = copy.deepcopy(ref).double()
    w, e = (a.astype(np.float64) for a in _inputs(1, mapper.style_dim))
    cot = np.random.default_rng(3).standard_normal(w.shape)

    tw = torch.from_numpy(w).requires_grad_(True)
    t_w_hat = tw + ref64(tw, torch.from_numpy(e))
    (t_w_hat * torch.from_numpy(cot)).sum().backward()
    torch_param_grads = {k: p.grad.numpy() for k, p in ref64.named_parameters() if p.grad is not None}
    _, want_params = convert_mapper(torch_param_grads, source="torch grads", dtype=np.float64)  # fc: no grad

    def forward_and_grads(v, x):
        w_hat, vjp = jax.vjp(lambda v_, x_: mapper.apply(v_, x_, e), v, x)
        return (w_hat,) + vjp(jnp.asarray(cot))

    with jax.enable_x64(True):
        w_hat, got_params, got_w = jax.device_get(jax.jit(forward_and_grads)(_f64(variables), w))

    assert w_hat.dtype == np.float64 and np.abs(w_hat - w).mean() > 0.1  # the edit is not trivial
    _assert_close(w_hat, t_w_hat.detach().numpy(), 1e-5, 1e-6, "w_hat float64")
    scale_w = np.abs(tw.grad.numpy()).max()
    _assert_close(np.asarray(got_w) / scale_w, tw.grad.numpy() / scale_w, 1e-5, 1e-6, "grad w (relative to max)")
    flat_got = jax.tree_util.tree_leaves_with_path(got_params)
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want_params))
    assert len(flat_got) == len(flat_want) == 4 * 18
    worst = max(np.abs(np.asarray(g) - flat_want[p]).max() / np.abs(flat_want[p]).max() for p, g in flat_got)
    print(f"param grads: worst max |diff| relative to the tensor's max {worst:.3g}")
    assert worst <= 1e-5


def test_strength(pair, apply_fn):
    _, mapper, variables = pair
    w, e = _inputs(4, mapper.style_dim)
    assert np.array_equal(np.asarray(apply_fn(variables, w, e, 0.0)), w)
    strength = np.array([0.0, 0.5, 2.0], np.float32)
    got, delta = jax.jit(lambda v: (mapper.apply(v, w, e, strength=strength),  # one program: the same delta
                                    mapper.apply(v, w, e, method=DynamicMapper.delta)))(variables)
    np.testing.assert_array_equal(np.asarray(got[0]), w[0])
    want = w + strength[:, None, None] * np.asarray(delta)  # a product and a sum: 2 roundings of each side
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * U32 * np.abs(want).max())


def test_embedding_forms_agree(pair, apply_fn):
    ref, mapper, variables = pair
    w, e = _inputs(5, mapper.style_dim)
    three_d = np.asarray(apply_fn(variables, w, e, 1.0))
    # (B, D) is reshaped to (B, 1, D) on entry: the same program, the same bits
    np.testing.assert_array_equal(np.asarray(apply_fn(variables, w, e[:, 0], 1.0)), three_d)
    # a single prompt broadcasts over the batch: another program (XLA may compute the broadcast row once), so the
    # ill-conditioned mapper's float32 rounding differs; both as accurate as PyTorch's float32 on the repeated prompt
    repeated = np.repeat(e[:1], B, 0)
    truth = _torch_w_hat(copy.deepcopy(ref).double(), w.astype(np.float64), repeated.astype(np.float64))
    for got, what in ((apply_fn(variables, w, e[:1, 0], 1.0), "one prompt"),
                      (apply_fn(variables, w, repeated, 1.0), "repeated prompt")):
        assert_float32_parity(got, _torch_w_hat(ref, w, repeated), truth, what)


def test_bad_input_shapes():
    mapper = DynamicMapper(n_latent=N_LATENT)
    w = jnp.zeros((B, N_LATENT, 512))
    with pytest.raises(InputError, match=r"text embedding must have shape \(B, 512\).*got \(3, 768\)") as info:
        jax.eval_shape(mapper.init, jax.random.PRNGKey(0), w, jnp.zeros((B, 768)))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"w must have shape \(B, 18, 512\), got \(3, 14, 512\)"):
        jax.eval_shape(mapper.init, jax.random.PRNGKey(0), w[:, :14], jnp.zeros((B, 512)))
    with pytest.raises(InputError, match="text embedding batch 2 does not match w batch 3"):
        jax.eval_shape(mapper.init, jax.random.PRNGKey(0), w, jnp.zeros((2, 1, 512)))


def test_init_matches_pytorch_defaults():
    dim = 512
    mapper = DynamicMapper(n_latent=N_LATENT, style_dim=dim, num_blocks=1)
    w, e = _inputs(7, dim, batch=1)
    fresh = jax.jit(mapper.init)(jax.random.PRNGKey(0), w, e)
    torch_block = torch_mapper.DynamicMapper(N_LATENT, dim).att_mapper[:1]
    _, torch_fresh = convert_mapper({f"att_mapper.{k}": v.numpy() for k, v in torch_block.state_dict().items()},
                                    source="fresh torch")
    got = dict(jax.tree_util.tree_leaves_with_path(fresh))
    assert len(got) == 18
    for path, t in jax.tree_util.tree_leaves_with_path(torch_fresh):
        name, g = jax.tree_util.keystr(path), np.asarray(got[path])
        assert g.shape == t.shape, name
        if "layers_1" in name:  # affine LayerNorm: ones / zeros
            np.testing.assert_array_equal(g, t, err_msg=name)
            continue
        bound = 1 / np.sqrt(g.shape[0] if g.ndim == 2 else dim)  # nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
        assert np.abs(g).max() <= bound and np.abs(t).max() <= bound, name
        if g.size >= dim:  # std b/sqrt(3), extremes near b, like PyTorch's
            assert abs(g.std() / (bound / np.sqrt(3)) - 1) < 0.1 and abs(t.std() / g.std() - 1) < 0.1, name
            assert np.abs(g).max() > 0.99 * bound, name
    k = np.asarray(fresh["params"]["att_mapper_0"]["attention_layer"]["k_matrix"]["weight"])
    assert k.shape == (1, N_LATENT) and np.abs(k).max() <= 1.0 and k.std() > 0.4  # Linear(1 -> n_latent): U(-1, 1)


# ------------------------------------------------------------------------------------------------------------------
# converter


SMALL = dict(n_latent=4, dim=64, size=8)  # a 8px generator has 4 latents


@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(1)
    ref = torch_mapper.randomize_layer_norms_(torch_mapper.DynamicMapper(SMALL["n_latent"], SMALL["dim"])).eval()
    gen = torch_stylegan2.randomize_(torch_stylegan2.Generator(SMALL["size"], style_dim=SMALL["dim"], n_mlp=2)).eval()
    return ref, gen


@pytest.fixture(scope="module")
def release_file(small_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("ffclip") / "ffhq_ffclip.pt"
    torch.save(torch_mapper.release_checkpoint(*small_models), path)
    return path


def _check_mapper_dir(directory, ref):
    """The directory loads as a DynamicMapper holding exactly the in-memory conversion tested above."""
    mapper, variables = pretrained.load(str(directory))
    config, want = convert_mapper(_numpy_sd(ref))
    assert (mapper.n_latent, mapper.style_dim, mapper.num_blocks) == (config["n_latent"], config["style_dim"], 4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, want)


def test_convert_release_file_cli(small_models, release_file, tmp_path):
    ref, gen = small_models
    out = tmp_path / "ffclip"
    proc = subprocess.run([sys.executable, "-m", "convert_weights", "ffclip", "--input", str(release_file),
                           "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no latent_avg" in proc.stdout  # FFCLIP files do not store the generator's latent_avg
    _check_mapper_dir(out, ref)
    assert pretrained.read_meta(str(out))["model"] == "ffclip_mapper"
    generator, gvars = pretrained.load(str(out / "generator"))
    assert generator.size == SMALL["size"] and generator.n_latent == SMALL["n_latent"]
    np.testing.assert_array_equal(gvars["params"]["style_1"]["weight"], gen.style[1].weight.detach().numpy().T)
    np.testing.assert_array_equal(gvars["buffers"]["latent_avg"], np.zeros(SMALL["dim"], np.float32))


def test_convert_without_module_prefix_and_latent_avg_from(small_models, tmp_path):
    ref, gen = small_models
    path = tmp_path / "plain.pt"
    torch.save(torch_mapper.release_checkpoint(ref, gen, prefix=""), path)
    latent_avg = torch.randn(SMALL["dim"])
    sg2 = tmp_path / "stylegan2.pt"
    torch.save({"g_ema": gen.state_dict(), "latent_avg": latent_avg}, sg2)
    out = tmp_path / "out"
    convert_main(["ffclip", "--input", str(path), "--output", str(out), "--latent-avg-from", str(sg2)])
    _check_mapper_dir(out, ref)
    _, gvars = pretrained.load(str(out / "generator"))
    np.testing.assert_array_equal(gvars["buffers"]["latent_avg"], latent_avg.numpy())


def test_convert_refuses_other_kinds(small_models, tmp_path):
    ref, gen = small_models
    sg2 = tmp_path / "stylegan2.pt"
    torch.save({"g_ema": gen.state_dict(), "latent_avg": torch.zeros(SMALL["dim"])}, sg2)
    e4e = tmp_path / "e4e.pt"
    torch.save({"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3),
                               **{f"decoder.{k}": v for k, v in gen.state_dict().items()}}, "opts": {}}, e4e)
    for path, kind in ((sg2, "stylegan2"), (e4e, "e4e")):
        with pytest.raises(CheckpointError, match=f"this is a {kind} checkpoint.*convert_weights {kind}") as info:
            convert_main(["ffclip", "--input", str(path), "--output", str(tmp_path / kind)])
        assert "\n" not in str(info.value)
        assert not (tmp_path / kind).exists()


def test_convert_rejects_mismatched_generator(small_models, tmp_path):
    _, gen = small_models
    path = tmp_path / "mismatch.pt"
    torch.save(torch_mapper.release_checkpoint(torch_mapper.DynamicMapper(6, SMALL["dim"]), gen), path)
    with pytest.raises(ConversionError, match="mapper expects n_latent 6 but the 8px generator has 4"):
        convert_main(["ffclip", "--input", str(path), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
