"""Create any model through timm.create_model, adapting it to the data's channels, classes and input size.

No model is special-cased here: what a model needs comes from its timm pretrained config. Models whose config
says `fixed_input_size` (timm's convention: ViTs, sparsetrain's LeNets) get the data's spatial size as `img_size`
(H, W); a 1-D signal of length L is given as 1 × L.
Pretrained weights are only ever read from disk: `model.pretrained_file`, or timm's local cache (the hub is
never contacted); `model.checkpoint` starts from any trained model's weights (`sparsetrain.models.checkpoint`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

import timm
import torch
from torch import nn

import sparsetrain.models  # noqa: F401  (registers sparsetrain's timm models)
from sparsetrain.config.schema import ModelConfig
from sparsetrain.model_imports import import_models
from sparsetrain.model_names import check_model_name
from sparsetrain.models.checkpoint import quiet_timm_loading
from sparsetrain.progress import log


def model_kwargs(cfg: ModelConfig, in_chans: int, num_classes: int, input_shape: tuple[int, ...]) -> dict:
    """Keyword arguments for timm.create_model: data-derived sizes first, then the user's kwargs.

    Args:
        cfg: The model section.
        in_chans: Input channels of the data.
        num_classes: Classes (or segmentation logit channels).
        input_shape: One sample's shape, channels first (C, H, W) or (C, L).
    """
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.name)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size and len(input_shape) in (2, 3):
        sides = (1, *input_shape[1:]) if len(input_shape) == 2 else tuple(input_shape[1:])  # timm's img_size is 2-D
        kwargs["img_size"] = sides[0] if sides[0] == sides[1] else list(sides)
    kwargs.update(cfg.kwargs)
    return kwargs


def _hub_offline() -> None:
    """Make a Hugging Face Hub cache miss an error instead of a download (or minutes of retries offline)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # for processes started from here
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        return
    hub_constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub.is_offline_mode()


def _pretrained_args(cfg: ModelConfig, num_classes: int) -> dict:
    """timm arguments that load pretrained weights from a local file or the local cache, never the network.

    timm's `load_pretrained` drops the file's classifier (and the model keeps a fresh one) whenever the model's
    `num_classes` differs from its pretrained config's (1000 for ImageNet weights), whatever the file holds. A file
    whose classifier has the model's `num_classes` rows (a model the user trained on these classes) gets a config
    overlay saying so (`num_classes`, `label_offset` 0), so that timm keeps it and loads every tensor strictly.
    """
    if not cfg.pretrained:
        return {}
    if cfg.pretrained_file is None:
        _hub_offline()
        return {}
    path = pretrained_file(cfg)
    head = _classifier_names(cfg.name)
    shapes = _file_shapes(path)
    fits = head and all(len(shape := shapes.get(f"{name}.weight", ())) >= 1 and shape[0] == num_classes
                        for name in head)
    keep = {"num_classes": num_classes, "label_offset": 0} if fits else {}
    return {"pretrained_cfg_overlay": {"file": str(path), **keep}}


def _classifier_names(name: str) -> tuple[str, ...]:
    """The classifier modules of `name`'s timm pretrained config (`head`, `fc`, `head.fc`, ...); () when none."""
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    names = pretrained_cfg.classifier if pretrained_cfg is not None else None
    return (names,) if isinstance(names, str) else tuple(names or ())


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of a weights file's tensors, by name as timm reads them (wrapper prefixes removed), read as
    `model.checkpoint`'s early check reads them (`read_state_dict(meta=True)`: a safetensors header, a torch
    checkpoint on the meta device); {} when it cannot be read (timm's own load then says why)."""
    from sparsetrain.models.checkpoint import read_state_dict

    try:
        state = read_state_dict(path, meta=True)
    except ValueError:
        return {}
    return {k: tuple(v.shape) for k, v in state.items()}


def _pretrained_line(model: nn.Module, cfg: ModelConfig, num_classes: int) -> tuple[str, bool]:
    """The load line of `model.pretrained`: where the weights came from, and for a local file what became of its
    classifier: loaded (it had the model's classes), or re-initialized by timm with the file's shapes and the
    model's, and `model.checkpoint` for a model the user trained. The flag says whether the line is a warning: a
    classifier re-initialized although the file's is not the pretrained config's (e.g. 1000 ImageNet classes), as
    when the file is a model the user trained on other classes."""
    line = f"model.pretrained: {cfg.name} weights from {cfg.pretrained_file or 'the local Hugging Face cache'}"
    head = _classifier_names(cfg.name)
    if cfg.pretrained_file is None or not head:
        return line, False
    ours = model.state_dict()
    keys = [f"{name}.weight" for name in head if f"{name}.weight" in ours]
    if not keys:
        return line, False
    shown = ", ".join(f"{k} {tuple(ours[k].shape)}" for k in keys)
    pretrained_classes = getattr(model, "pretrained_cfg", {}).get("num_classes")
    if pretrained_classes == num_classes:  # timm loaded the file's classifier
        return f"{line} (classifier {shown} from the file too)", False
    theirs = _file_shapes(pretrained_file(cfg))
    foreign = any(k in theirs and theirs[k][:1] != (pretrained_classes,) for k in keys)
    file_shapes = ", ".join(f"{k} {theirs[k]}" if k in theirs else f"no {k}" for k in keys)
    return (f"{line}; classifier re-initialized: the file has {file_shapes}, the model {shown} (the data's "
            f"{num_classes} classes; timm loads a pretrained classifier only when the class "
            f"counts agree); to start from a model you trained, give it as model.checkpoint=PATH instead (every "
            f"tensor checked; model.reset_head=true to re-initialize its classifier)"), foreign


def pretrained_file(cfg: ModelConfig) -> Path:
    """`model.pretrained_file`, user (~) expanded; `cfg.pretrained_file` must be set.

    Raises:
        ValueError: `model.pretrained_file: file not found: PATH`.
    """
    path = Path(str(cfg.pretrained_file)).expanduser()
    if not path.is_file():
        raise ValueError(f"model.pretrained_file: file not found: {path}")
    return path


_TIMM_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # timm.create_model gives every factory these
_OWN_ARGS = {"num_classes": "the data's classes", "in_chans": "the data's channels",
             "img_size": "the data's side, for a model whose default config says fixed_input_size"}
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def create_model(name: str, user_keys: Collection[str] = (), /, **kwargs: object) -> nn.Module:
    """`timm.create_model(name, **kwargs)`, an argument the model's constructor does not take named in one line.

    Args:
        name: The timm model name (`model.name`).
        user_keys: The keys of `kwargs` that come from `model.kwargs` (the others are sparsetrain's and timm's).
        kwargs: Everything passed to `timm.create_model`.

    Raises:
        ValueError: `model.kwargs: NAME does not take ...` when the argument refused is one of `model.kwargs`;
            `model.name: NAME does not take ...` saying who passes it (timm or sparsetrain) when it is not.
    """
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        raise ValueError(_refused_arguments(name, err, user_keys)) from None


def _refused_arguments(name: str, err: TypeError, user_keys: Collection[str]) -> str:
    """The line for a model that refused its arguments: blames `model.kwargs` only for an argument it holds (or, when
    the argument is not named, when it is set); else says who passes the argument and how a factory takes it."""
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    match = _UNEXPECTED.search(first)
    arg = match.group(1) if match else None
    if arg in user_keys or (arg is None and user_keys):
        return (f"model.kwargs: {name} does not take the arguments it was given ({first}); `sparsetrain config "
                "--schema model` describes model.kwargs")
    if arg in _TIMM_ARGS:
        who = (f"timm.create_model passes {', '.join(_TIMM_ARGS)} to every factory: give it **kwargs and build the "
               "model with timm's build_model_with_cfg, which takes them")
    elif arg in _OWN_ARGS:
        who = f"sparsetrain passes {arg} ({_OWN_ARGS[arg]}): the model's class must take it"
    else:
        who = "timm and sparsetrain pass arguments besides model.kwargs"
    what = f"the argument {arg!r} it is given" if arg else "the arguments it is given"
    return f'model.name: {name} does not take {what} ({first}); {who}; see README "Your own model"'


def build_model(cfg: ModelConfig, in_chans: int, num_classes: int, input_shape: tuple[int, ...], *,
                announce: bool = True) -> nn.Module:
    """Create the model and check that it accepts the data's input shape.

    `announce=False` leaves out the lines that say where the weights came from (pretrained file, `model.checkpoint`
    and its notes), for a caller that builds the same initial model again (`Pipeline.new_model`).

    Raises:
        InputError: `model.imports: cannot import ...`.
        ValueError: one line naming `model.name` (unknown model, does not fit the data, does not take an argument
            timm or sparsetrain passes), `model.kwargs` (an argument the model does not take), `model.pretrained`
            (no local weights) or `model.checkpoint` / `model.reset_head` (see `sparsetrain.models.checkpoint`).
    """
    import_models(cfg.imports)  # a no-op after load_config; a config unpickled in a Slurm job or built in Python
    check_model_name(cfg.name)
    kwargs = model_kwargs(cfg, in_chans, num_classes, input_shape)
    try:
        with quiet_timm_loading():
            model = create_model(cfg.name, cfg.kwargs, pretrained=cfg.pretrained,
                                 **_pretrained_args(cfg, kwargs["num_classes"]), **kwargs)
    except (OSError, RuntimeError) as err:  # hub cache miss, unreadable file, state-dict mismatch
        if not cfg.pretrained:
            raise
        raise ValueError(_pretrained_error(cfg, err)) from None
    if cfg.pretrained and announce:
        line, warn = _pretrained_line(model, cfg, kwargs["num_classes"])
        (log.warning if warn else log.info)(line)
    if cfg.checkpoint:
        from sparsetrain.models.checkpoint import apply_checkpoint

        model = apply_checkpoint(model, cfg, announce=announce)
    check_model_fits(model, cfg.name, input_shape)
    return model


def _pretrained_error(cfg: ModelConfig, err: BaseException) -> str:
    """One line for weights that could not be read: a cache miss says the hub is off on purpose."""
    if cfg.pretrained_file is None:
        return (f"model.pretrained: no weights for {cfg.name} in the local Hugging Face cache; sparsetrain never "
                f"downloads (the hub is off): give "
                f"model.pretrained_file=PATH (a .pth/.safetensors state dict of timm's {cfg.name})")
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return f"model.pretrained_file: could not load {cfg.pretrained_file} into {cfg.name} ({first})"


def check_model_fits(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> None:
    """Run one tiny forward pass so a shape mismatch fails here with a clear message, not mid-training.

    Raises:
        ValueError: `model.name: NAME does not accept inputs of shape ...` (the forward's RuntimeError, ValueError
            or AssertionError: timm's input-size checks are `torch._assert`).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError, AssertionError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise ValueError(f"model.name: {name} does not accept inputs of shape {tuple(input_shape)} ({first})") from None
    finally:
        model.train(was_training)
