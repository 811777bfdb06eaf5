"""PyTorch state_dict <-> Flax variables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax import verify
from mmkd_jax.teachers import convert
from mmkd_jax.models import get_model


def _variables(arch: str, num_classes: int = 10):
  """The model and random variables of its shapes (no compiled init: a conversion reads shapes
  and values only)."""
  model = get_model(arch, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  rng = np.random.default_rng(0)
  positive = lambda path: "batch_stats" in jax.tree_util.keystr(path)  # variances (and means) of BatchNorm
  return model, jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if positive(path) else rng.standard_normal(s.shape)).astype(s.dtype),
      shapes)


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_round_trip_is_exact(arch):
  _, variables = _variables(arch)
  state_dict = convert.flax_to_torch(variables)
  back = convert.torch_to_flax(state_dict, variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)


def test_pytorch_layouts():
  _, variables = _variables("ShuffleV1")
  sd = convert.flax_to_torch(variables)
  # Grouped 1x1 conv (groups=3, 54 -> 216 channels): PyTorch (O, I/g, kh, kw).
  assert sd["layer1.0.conv3.weight"].shape == (216, 18, 1, 1)
  # Depthwise conv: (C, 1, 3, 3).
  assert sd["layer1.0.conv2.weight"].shape == (54, 1, 3, 3)
  assert sd["linear.weight"].shape == (10, 960)
  assert "bn1.running_var" in sd and "bn1.weight" in sd


@pytest.mark.claim("parity")
def test_reference_weights_convert_without_leftovers(testvectors):
  with np.load(testvectors / "models" / "wrn_16_2.npz") as f:
    sd = verify.recipe_state_dict({k: f[k] for k in f.files})
  model = get_model("wrn_16_2", 100)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  variables = convert.torch_to_flax(sd, template)
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))


@pytest.mark.claim(13)
def test_errors_name_missing_unexpected_and_mismatched_keys():
  _, variables = _variables("resnet8")
  sd = convert.flax_to_torch(variables)
  del sd["layer2.0.bn1.running_mean"]
  sd["head.weight"] = np.zeros((3, 3), np.float32)
  sd["fc.weight"] = np.zeros((100, 64), np.float32)
  with pytest.raises(convert.ConversionError) as info:
    convert.torch_to_flax(sd, variables)
  message = str(info.value)
  assert "missing keys (1): layer2.0.bn1.running_mean" in message
  assert "unexpected keys (1): head.weight" in message
  assert "fc.weight: checkpoint (100, 64)" in message and "model expects (64, 10)" in message


def test_num_batches_tracked_is_ignored():
  """PyTorch's BatchNorm counter has no Flax counterpart: dropped, everything else converted
  exactly; any other extra key is still refused."""
  _, variables = _variables("resnet8")
  sd = convert.flax_to_torch(variables)
  sd["bn1.num_batches_tracked"] = np.array(5)
  back = convert.torch_to_flax(sd, variables)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  sd["bn1.extra"] = np.array(5)
  with pytest.raises(convert.ConversionError, match="bn1.extra"):
    convert.torch_to_flax(sd, variables)


@pytest.mark.claim(13)
def test_load_pretrained_from_npz(tmp_path):
  model, variables = _variables("vgg8", 100)
  path = tmp_path / "vgg8.npz"
  np.savez(path, **convert.flax_to_torch(variables))
  loaded_model, loaded = convert.load_pretrained("vgg8", 100, str(path), (32, 32, 3))
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  np.testing.assert_array_equal(model.apply(variables, x)[1], loaded_model.apply(loaded, x)[1])
  with pytest.raises(convert.ConversionError, match="classifier .* has 100 classes, the dataset 10; set checkpoint_head=reinit"):
    convert.load_pretrained("vgg8", 10, str(path), (32, 32, 3))
  # a new head: everything else from the checkpoint, the classifier from the model's own init
  _, initial = _variables("vgg8", 10)
  _, reinit = convert.load_pretrained("vgg8", 10, str(path), (32, 32, 3), head="reinit", initial=initial)
  for (key, value), (_, source) in zip(jax.tree_util.tree_flatten_with_path(reinit)[0],
                                       jax.tree_util.tree_flatten_with_path(variables)[0]):
    expected = initial["params"]["classifier"][key[-1].key] if "classifier" in jax.tree_util.keystr(key) else source
    np.testing.assert_array_equal(value, expected)
  with pytest.raises(convert.ConversionError, match="missing keys"):  # a truncated file is still refused
    np.savez(tmp_path / "cut.npz", **{k: v for k, v in convert.flax_to_torch(variables).items() if not k.startswith("block0.")})
    convert.load_pretrained("vgg8", 10, str(tmp_path / "cut.npz"), (32, 32, 3), head="reinit", initial=initial)


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
    convert.load_state_dict(str(tmp_path / "nope.pth"))


@pytest.mark.claim("parity", 12)
def test_real_pth_written_by_torch(tmp_path):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except Exception as e:  # a CUDA-only wheel without its libraries raises ValueError, not ImportError
    pytest.skip(f"torch is not importable ({type(e).__name__}); optional extra: pip install -e '.[torch]'")
  _, variables = _variables("resnet8x4", 100)
  sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in convert.flax_to_torch(variables).items()}
  sd["bn1.num_batches_tracked"] = torch.tensor(3)
  path = tmp_path / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
  path.parent.mkdir()
  # The RepDistiller/MMKD training scripts save {'epoch', 'model', 'best_acc', 'optimizer'}.
  torch.save({"epoch": 240, "model": sd, "best_acc": 73.1, "optimizer": {}}, path)
  model, loaded = convert.load_pretrained("resnet8x4", 100, str(path), (32, 32, 3), trust_pickle=True)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.claim(12)
def test_a_pth_with_pickled_objects_is_refused_unless_trusted(tmp_path):
  """torch.load(weights_only=True) refuses anything but tensors and plain containers (a training
  script's argparse options here): the error names the switch; with it the weights load."""
  torch = pytest.importorskip("torch")
  import argparse  # pylint: disable=import-outside-toplevel
  _, variables = _variables("resnet8", 10)
  path = tmp_path / "ckpt.pth"
  torch.save({"model": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in convert.flax_to_torch(variables).items()},
              "opt": argparse.Namespace(lr=0.05)}, path)
  with pytest.raises(convert.ConversionError, match=r"\(a pickled argparse\.Namespace\) and refuses to load safely.*--config\.trust_pickle=True"):
    convert.load_pretrained("resnet8", 10, str(path), (32, 32, 3))
  _, loaded = convert.load_pretrained("resnet8", 10, str(path), (32, 32, 3), trust_pickle=True)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)


def test_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  path = tmp_path / "model.pth"
  path.write_bytes(b"not really")
  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
    convert.load_state_dict(str(path))


def _torchvision():
  """torch and torchvision, or a skip."""
  torch = pytest.importorskip("torch")
  return torch, convert.import_torchvision()


def _parity(torch, module, arch, num_classes, feature_module, image_size=64):
  """Random weights and BatchNorm statistics in the torch module, loaded into ``arch`` through
  its state_dict: logits and the last feature map agree to float32 rounding (measured <= 3e-6
  relative to the output's scale)."""
  torch.manual_seed(0)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  module.eval()
  captured = {}
  module.get_submodule(feature_module).register_forward_hook(lambda m, i, o: captured.update(feat=o))
  x = torch.randn(2, 3, image_size, image_size)
  with torch.no_grad():
    logits = module(x).numpy()
  model = get_model(arch, num_classes)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
  variables = convert.torch_to_flax({k: v.numpy() for k, v in module.state_dict().items()}, template)
  feats, ours = model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), train=False)
  scale = np.max(np.abs(logits))
  assert np.max(np.abs(np.asarray(ours) - logits)) <= 1e-5 * scale, arch
  expected = captured["feat"].numpy().transpose(0, 2, 3, 1)
  assert np.max(np.abs(np.asarray(feats[-2]) - expected)) <= 1e-5 * np.max(np.abs(expected)), arch


@pytest.mark.claim("parity")
@pytest.mark.parametrize("name, arch, feature_module", [
    ("resnet18", "resnet18", "layer4"), ("resnet34", "resnet34", "layer4"), ("resnet50", "resnet50", "layer4"),
    ("resnet101", "resnet101", "layer4"), ("wide_resnet50_2", "wide_resnet50_2", "layer4"),
    ("resnext50_32x4d", "resnext50_32x4d", "layer4"), ("mobilenet_v2", "mobilenet_v2", "features.17"),
    ("shufflenet_v2_x1_0", "shufflenet_v2_x1_0", "stage4")])  # feat[-2]: the reference's last tap
def test_torchvision_state_dicts_load_with_its_outputs(name, arch, feature_module):
  torch, torchvision = _torchvision()
  _parity(torch, getattr(torchvision.models, name)(num_classes=37), arch, 37, feature_module)


@pytest.mark.claim("parity")
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_timm_state_dicts_load_with_its_outputs(name):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  _parity(torch, timm.create_model(name, pretrained=False, num_classes=37), name, 37, "layer4")
