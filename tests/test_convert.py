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
  model = get_model(arch, num_classes)
  return model, model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))


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


def test_reference_weights_convert_without_leftovers(testvectors):
  with np.load(testvectors / "models" / "wrn_16_2.npz") as f:
    sd = verify.recipe_state_dict({k: f[k] for k in f.files})
  model = get_model("wrn_16_2", 100)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  variables = convert.torch_to_flax(sd, template)
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))


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
  _, variables = _variables("resnet8")
  sd = convert.flax_to_torch(variables)
  sd["bn1.num_batches_tracked"] = np.array(5)
  convert.torch_to_flax(sd, variables)


def test_load_pretrained_from_npz(tmp_path):
  model, variables = _variables("vgg8", 100)
  path = tmp_path / "vgg8.npz"
  np.savez(path, **convert.flax_to_torch(variables))
  loaded_model, loaded = convert.load_pretrained("vgg8", 100, str(path), (32, 32, 3))
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  np.testing.assert_array_equal(model.apply(variables, x)[1], loaded_model.apply(loaded, x)[1])
  with pytest.raises(convert.ConversionError, match="cannot load .* as vgg8 with 10 classes"):
    convert.load_pretrained("vgg8", 10, str(path), (32, 32, 3))


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
    convert.load_state_dict(str(tmp_path / "nope.pth"))


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
