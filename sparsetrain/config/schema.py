"""Typed run configuration: every field has a type, a range and a description, validated at load time.

The sections of the strategies (`regularizer`, `prune`) live in `strategies.py`; the terms used in descriptions
(phases, prune vs remove, filter, gradient path vs backend, ...) are defined once, in README.md's Vocabulary.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from sparsetrain.config.launch import LaunchConfig
from sparsetrain.config.strategies import (
    PRUNE_RULES,
    REGULARIZER_SETTINGS,
    GlobalThresholdConfig,
    GradualConfig,
    L0ExpConfig,
    PruneConfig,
    RegularizerConfig,
    Section,
    pick_strategy,
)
from sparsetrain.model_imports import absolute_entry, check_entry
from sparsetrain.paths import absolute_path

__all__ = ["GradualConfig", "PruneConfig", "RegularizerConfig", "RunConfig", "Section"]

MAX_SEED = 2**32 - 1  # numpy's legacy seed range (mnist1d seeds np.random with it); the run derives torch generator
# seeds (seed * 10 + phase) * 100_003 + epoch from it, which stay below the 2**64 torch.manual_seed takes
MAX_TIMEOUT_MIN = 525_600.0  # a year; timedelta(minutes=1e30) overflows, torch's process group past ~1e11 minutes


class ModelConfig(Section):
    name: str = Field("lenet300_100", description="timm model name (sparsetrain registers lenet300_100, lenet5, unet, "
                      "unet_small, unet_tiny, lraspp_mobilenetv3_large_100, lraspp_mobilenetv3_small_100); any timm "
                      "classifier works, and a model of your own registered by a module in model.imports.")
    imports: list[str] = Field(default_factory=list, description="Python modules imported before model.name is "
                               "resolved, e.g. [my_net.py] whose factory is decorated with timm's @register_model "
                               "(README 'Your own model'): dotted module names or .py paths (relative: to the current "
                               "directory, like every path setting; stored absolute). Exports record them for "
                               "load_compressed.")
    pretrained: bool = Field(False, description="Load timm pretrained weights from disk: model.pretrained_file, "
                             "else timm's local cache (never downloaded).")
    pretrained_file: str | None = Field(None, description="Local weights file for pretrained=true (timm's "
                                        "pretrained_cfg_overlay=dict(file=...)): .safetensors, .pth, .bin.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for timm.create_model.")
    checkpoint: str | None = Field(None, description="Initial weights of a trained model: .safetensors, a torch "
                                   "state dict or training checkpoint (.pth/.pt/.bin: weights under state_dict, "
                                   "model or model_ema, 'module.' prefixes removed), or a sparsetrain export "
                                   "folder / run directory. With it, phases.dense.epochs=0 evaluates it only.")
    checkpoint_ema: bool = Field(False, description="Take the EMA weights (state_dict_ema / model_ema) of a "
                                 "training checkpoint that has both (timm validate.py's --use-ema); a file without "
                                 "EMA weights is refused.")
    reset_head: bool = Field(False, description="Re-initialize the classifier (timm reset_classifier) instead of "
                             "loading it from model.checkpoint, e.g. when the data has other classes.")

    @field_validator("imports")
    @classmethod
    def _check_imports(cls, entries: list[str]) -> list[str]:
        """Module names or .py paths; relative paths made absolute against the current directory
        (`sparsetrain.paths`)."""
        return [absolute_entry(check_entry(entry)) for entry in entries]

    @field_validator("checkpoint", "pretrained_file")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        """Relative to the current directory, stored absolute (`sparsetrain.paths`)."""
        return absolute_path(path) if path is not None else None


class TrainSubsetConfig(Section):
    """Part `part` of a seeded random partition of the training set into `parts` disjoint, near-equal parts."""

    parts: int = Field(2, ge=2, description="Number of disjoint parts the training set is split into; "
                       "each must hold at least train.batch_size samples and as many as the classes (refused when "
                       "the data is read, naming the largest count that works).")
    part: int = Field(0, ge=0, description="Which part to train on (0-based, < parts).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the partition (independent of the run seed, so "
                      "runs with different seeds can share a part; 0 to 2**32 - 1 like it).")

    @model_validator(mode="after")
    def _check_part(self) -> TrainSubsetConfig:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} is out of range for parts={self.parts} (expected 0..{self.parts - 1})")
        return self


SEG_SOURCES = ("seg_synthetic", "seg_folder", "voc")  # the data.source values of task=segmentation
PATH_SOURCES = ("npz", "idx", "imagefolder", "seg_folder", "voc")  # the data.source values that read data.path
SPLIT_BY_FRACTION = ("digits", "synthetic", "seg_synthetic", "seg_folder")  # the sources that read data.test_fraction
OWN_TEST_SPLIT = {"mnist1d": "its own test set", "npz": "the file's x_test / y_test", "idx": "the t10k files",
                  "imagefolder": "the val/ or test/ folder", "voc": "ImageSets/Segmentation/val.txt"}
DEFAULT_TEST_FRACTION = 0.2
VOC_VOID = 255  # the mask value of Pascal VOC's void / boundary pixels
VOC_IMAGE_SIZE = 224  # data.image_size of data.source=voc when not given: as imagefolder's, timm's ImageNet size


class DataConfig(Section):
    source: Literal["digits", "mnist1d", "synthetic", "npz", "idx", "imagefolder", "seg_synthetic",
                    "seg_folder", "voc"] = Field(
        "digits", description="Built-in data set or on-disk layout; idx = a folder with the four MNIST-family IDX "
        "files (train/t10k images/labels, optionally .gz), e.g. /usr/share/datasets/fashion-mnist; voc = Pascal "
        "VOC 2012 segmentation (VOCdevkit/VOC2012: JPEGImages, SegmentationClass palette PNGs, "
        "ImageSets/Segmentation train.txt as the train split and val.txt as the test split; 21 classes) read by "
        "torchvision's VOCSegmentation.")
    path: str | None = Field(None, description="Data location for npz (file) / idx / imagefolder / seg_folder / voc "
                             "(folder; voc: the folder holding VOCdevkit, VOCdevkit itself or its VOC2012) "
                             "sources. npz: arrays x_train, y_train, x_test, y_test; images N×C×H×W or N×H×W "
                             "(channels-last N×H×W×C is refused: save x.transpose(0, 3, 1, 2)), uint8 "
                             "(divided by 255) or float.")
    idx_prefix: str | None = Field(None, description="idx: read the files named <prefix>-train-images-idx3-ubyte "
                                   "etc., e.g. emnist-letters when the EMNIST download's splits share one folder "
                                   "('' = the unprefixed files); None = the folder's only file of each kind.")
    transpose: bool | Literal["auto"] = Field(
        "auto", description="idx: swap H and W of each image on read. EMNIST stores its images transposed "
        "(torchvision leaves that to the user), so a model trained on them as stored expects transposed inputs; "
        "auto = true for files named emnist-*, false otherwise.")
    train_subset: TrainSubsetConfig | None = Field(
        None, description="Train on one part of a seeded partition of the training set (classification sources; "
        "the test set is unchanged), e.g. data.train_subset.part=1 for the second of two disjoint halves; "
        "used to check that a recipe holds on data it was not tuned on. None = the whole training set.")
    image_size: int | None = Field(None, ge=4, le=4096, description="Resize images to this square size "
                                   "(imagefolder: default 224, the size of timm's ImageNet models, a warning when "
                                   "images are 4x smaller or more; voc: default 224, null resolved to it; "
                                   "seg_folder: null keeps the native size; synthetic sources: the generated "
                                   "size); npz / idx / digits keep their native size. Segmentation masks are "
                                   "resized nearest-exact. A segmentation export's ONNX / .pt2 take every size the "
                                   "architecture allows (manifest.json input_sizes), others only the size trained on.")
    ignore_index: int | None = Field(
        None, ge=0, le=65535, description="Segmentation: the mask value of pixels left out of the training loss "
        "(CE / BCE and Dice, as torch.nn.CrossEntropyLoss's ignore_index), of every metric and of the class count, "
        "e.g. 255, the void / boundary label of Pascal VOC and Cityscapes trainIds (a 0/1/255 mask is then binary "
        "with void pixels); recorded in the export so eval scores the same way. None = every pixel is a class; "
        "data.source=voc: 255 unless given.")
    in_chans: int | None = Field(None, ge=1, le=16, description="Number of input channels the model gets "
                                 "(None = the data's): colour is averaged to gray for 1, gray is repeated for more; "
                                 "imagefolder reads RGB (3) or gray (1, torchvision's Grayscale).")
    test_fraction: float = Field(DEFAULT_TEST_FRACTION, gt=0, le=1, description="Held-out fraction for sources "
                                 "without a split (digits, synthetic, seg_synthetic, seg_folder's images/ + masks/), "
                                 "drawn with the seed. 1.0 = every sample is a test sample: for `sparsetrain eval` of "
                                 "a whole seg_folder / seg_synthetic set; `run` refuses it (no training sample). "
                                 "Refused for the sources with their own test split (mnist1d, npz, idx, imagefolder, "
                                 "voc; a seg_folder with train/ and test/ folders unless 0.2).")
    num_samples: int = Field(2000, ge=16, description="Number of generated samples (synthetic sources).")
    normalize: bool = Field(True, description="Standardize inputs per channel: with the train split's own mean/std "
                            "(array and segmentation sources) or ImageNet's (imagefolder); the values are recorded "
                            "in the export (architecture.json meta.preprocessing, ONNX metadata); `sparsetrain eval` "
                            "of an export uses the recorded values and setting, whatever its data.")
    num_workers: int | Literal["auto"] = Field(
        0, description="DataLoader worker processes per rank; auto = the CPUs this process may use divided by the "
        "ranks on the node (LOCAL_WORLD_SIZE), at most 8, so DataLoader never exceeds its suggested maximum.")

    @model_validator(mode="before")
    @classmethod
    def _voc_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Pascal VOC marks void / boundary pixels 255: its ignore_index unless the config gives one (null too).
        Its images differ in size and are held as one N × 3 × S × S tensor, so image_size null (unset, or null in a
        recipe or a stored config) is resolved to `VOC_IMAGE_SIZE`: the stored config and the export then say the
        size the run resized to.

        Raises:
            ValueError: `data.image_size=null` given on the command line (it would ask for the native sizes).
        """
        if not isinstance(data, dict) or data.get("source") != "voc":
            return data
        if "ignore_index" not in data:
            data = {**data, "ignore_index": VOC_VOID}
        if data.get("image_size") is None:
            if "image_size" in data and "data.image_size" in _given(info):
                raise ValueError("data.image_size: null (native sizes) is not possible for data.source=voc: its images "
                                 "differ in size and are held in memory at one size; set data.image_size="
                                 f"{VOC_IMAGE_SIZE} (this source's default) or another size")
            data = {**data, "image_size": VOC_IMAGE_SIZE}
        return data

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        """Relative to the current directory, stored absolute (`sparsetrain.paths`)."""
        return absolute_path(path) if path is not None else None

    @field_validator("num_workers")
    @classmethod
    def _workers_in_range(cls, value: int | str) -> int | str:
        if value != "auto" and not 0 <= value <= 64:
            raise ValueError("expected 0 to 64 or auto")
        return value

    def workers(self) -> int:
        """`num_workers` as a number (auto resolved on this node)."""
        if self.num_workers != "auto":
            return self.num_workers
        import os

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(0, min(8, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="torch optimizer given to DeepSpeed.")
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Optimizer weight decay (l2 of the method is separate). "
                                "adamw and sgd multiply every weight by 1 - lr * weight_decay each step, so "
                                "lr * weight_decay must stay below 1 for every lr a phase steps with (refused at "
                                "load otherwise); usual values 0 to 0.1.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    schedule: Literal["constant", "cosine"] = Field("constant", description="Learning-rate schedule within a phase.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps at the start of each phase.")


class PhaseConfig(Section):
    enabled: bool = Field(True, description="Run this phase.")
    epochs: float = Field(1.0, ge=0, description="Length in epochs over the training set (fractions allowed); "
                          "0 = the phase only evaluates the weights it starts from and hands them on unchanged "
                          "(dense: the initial weights, e.g. model.checkpoint; finetune: the pruned weights).")
    lr: float | None = Field(None, gt=0, le=10, description="Overrides optim.lr for this phase (same bounds).")


class PhasesConfig(Section):
    dense: PhaseConfig = Field(default_factory=PhaseConfig, description=(
        "Dense baseline for the report; the same budget when its epochs equal sparsify + finetune's (the report "
        "says which)."))
    sparsify: PhaseConfig = Field(default_factory=PhaseConfig, description="Training with the sparsity regularizer.")
    finetune: PhaseConfig = Field(default_factory=PhaseConfig, description="Fine-tuning with fixed masks.")


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO optimization stage: 1 partitions optimizer "
                                            "state, 2 also gradients, 3 also parameters.")
    offload_optimizer: Literal["none", "cpu"] = Field("none", description="ZeRO-Offload: keep fp32 masters, "
                                                      "gradients and optimizer state in host memory (ZeRO >= 1).")
    param_persistence_threshold: int = Field(100_000, ge=0, description="ZeRO 3: parameters with fewer elements "
                                             "stay whole on every rank instead of being gathered for each use "
                                             "(DeepSpeed's stage3_param_persistence_threshold; 0 partitions all).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Training precision (bf16 keeps fp32 masters).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    gradient_clipping: float = Field(0.0, ge=0, description="Global grad-norm clip (0 = off).")
    dist_backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto = nccl on GPU, gloo on CPU.")
    timeout_min: float = Field(10.0, gt=0, le=MAX_TIMEOUT_MIN, description="Process-group timeout: a rank whose "
                               "peer died fails after this long instead of hanging (at most 525600, a year: torch "
                               "overflows past ~1e11 minutes).")


class TrainConfig(Section):
    batch_size: int = Field(128, ge=1, description="Global batch size (all ranks and micro-steps).")
    eval_batch_size: int = Field(512, ge=1, description="Per-rank evaluation batch size.")
    log_every: int = Field(20, ge=1, description="Log a progress line every N optimizer steps.")
    checkpoint_every: int = Field(200, ge=1, description="Checkpoint every N optimizer steps (and at phase end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept per run.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per rank. None: Slurm's "
                                   "cpus-per-task inside a Slurm job, else torch's default (OMP_NUM_THREADS when "
                                   "set, else every core).")
    grad_checkpointing: bool = Field(False, description="Recompute activations of repeated blocks in backward "
                                     "(timm models with set_grad_checkpointing): less memory, ~30 % more compute.")
    flush_denormal: bool = Field(True, description="Flush subnormal floats to zero in CPU arithmetic "
                                 "(torch.set_flush_denormal). Weights that get no gradient (e.g. fed by always-zero "
                                 "border pixels) decay under l2/Adam into the subnormal range, where CPU arithmetic "
                                 "is ~30x slower: a run slowed from ~255 to ~8 steps/s within 10,000 steps without "
                                 "it. Values below ~1.2e-38 (fp32) become 0; results are otherwise unchanged.")


class DeployConfig(Section):
    formats: list[Literal["onnx", "torch_export"]] = Field(
        default_factory=lambda: ["onnx", "torch_export"], description="Deployment formats written to "
        "out_dir/export/ besides safetensors and bitmask, each verified against torch when written.")
    opset: int = Field(18, ge=17, le=23, description="ONNX opset of model.onnx.")

    @field_validator("formats", mode="before")
    @classmethod
    def _always_written(cls, value: Any) -> Any:
        """safetensors and bitmask are not choices: every export writes them."""
        if isinstance(value, list) and {"safetensors", "bitmask"} & set(map(str, value)):
            raise ValueError("safetensors and bitmask are always written (model.safetensors, "
                             "model.bitmask.safetensors); list only the extra formats, onnx and/or torch_export, or [] "
                             "for none")
        return value
    tolerance: float = Field(1e-4, gt=0, description="Largest max abs difference from the torch model (fp32, on "
                             "a batch of the data) that passes export verification.")
    compact: bool = Field(True, description="Method 1: also write export/compact/, the model with its dead units "
                          "(no non-zero input weight, or nothing reads them) removed exactly, constants folded into "
                          "biases: a smaller dense model (load_compressed(RUN_DIR, 'compact')), timed in the "
                          "latency table beside the masked one. Written only when some unit is dead; Method 2 models "
                          "are already physically pruned (skipped).")
    latency: bool = Field(True, description="Measure the dense-vs-compressed latency table at the end of run "
                          "(what `sparsetrain bench latency` prints; the compact model too when export/compact/ is "
                          "written) into report.json and latency.json.")
    latency_batch: int = Field(16, ge=2, description="The larger batch size of the latency table (the other is 1).")
    latency_repeats: int = Field(20, ge=3, description="Timed forward passes per model, runtime and batch; the "
                                 "models alternate, so load on the machine hits them alike.")
    latency_threads: int = Field(1, ge=1, description="Intra-op threads of torch and onnxruntime while timing.")
    latency_memory: bool = Field(True, description="Measure each model's peak memory in the latency table: a fresh "
                                 "child process per model and runtime, a few seconds each (most of the table's "
                                 "time on a small model). false leaves the rows' peak_memory_bytes empty, as "
                                 "`sparsetrain bench latency --no-memory` does.")


class ReportConfig(Section):
    accuracy_curve: bool = Field(True, description="Method 1 with regularizer l0_exp: after the last phase, "
                                 "evaluate the l0-trained model (and the l2-trained one: the l2_oneshot baseline's, "
                                 "else the dense phase's) right after global magnitude pruning at ~11 sparsities "
                                 "(report.json prune_curve, accuracy_vs_sparsity.png): one test-split evaluation "
                                 "per point and model, after the last phase, before the export. false: skipped.")
    plots: bool = Field(True, description="Draw the PNG plots: layer_sparsity.png, weight_hist.png, "
                        "accuracy_vs_sparsity.png, kept_filters.png (Method 2) and latency.png (deploy.latency). "
                        "false: none is drawn, which saves ~1 s of CPU per run (importing matplotlib, drawing; e.g. "
                        "for the points of a large sweep); report.json holds every number they show.")


class TrackingConfig(Section):
    mode: Literal["offline", "online", "disabled"] = Field("offline", description="Weights & Biases mode.")
    project: str = Field("sparsetrain", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity.")
    name: str | None = Field(None, description="W&B run name (default: out_dir's name).")
    tags: list[str] = Field(default_factory=list, description="W&B tags.")


BaselineName = Literal["l2_oneshot", "gmp"]  # defined in sparsetrain/baselines.py


class RunConfig(Section):
    """A whole compression run: data, model, the three phases and how they are executed and tracked."""

    out_dir: str = Field("runs/default", description="Run directory: checkpoints, report, plots, export (the built-in "
                         "defaults' own; configs/quickstart.yaml writes runs/quickstart).", validate_default=True)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed for weights, data order and generated data "
                      "(0 to 2**32 - 1: numpy's seed range, which mnist1d uses; torch's generators take the phase "
                      "and epoch seeds derived from it).")
    resume: bool = Field(True, description="Continue from the last checkpoint in out_dir when there is one.")
    task: Literal["classification", "segmentation"] = Field("classification", description="Loss and metrics "
                                                            "(the `metric`: classification accuracy; segmentation "
                                                            "mIoU from 3 classes, else the foreground Dice).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    phases: PhasesConfig = Field(default_factory=PhasesConfig)
    regularizer: SerializeAsAny[RegularizerConfig] = Field(
        default_factory=L0ExpConfig, description="Sparsity strategy, chosen by regularizer.name; each strategy "
        "takes only its own settings (sparsetrain.config.strategies).")
    prune: SerializeAsAny[PruneConfig] = Field(
        default_factory=GlobalThresholdConfig, description="Prune rule, chosen by prune.rule; each rule takes "
        "only its own settings.")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    report: ReportConfig = Field(default_factory=ReportConfig, description="What the end-of-run report computes.")
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    baselines: list[BaselineName] = Field(
        default_factory=list, description="Baselines run after the main run at its pruned sparsity and the same "
        "sparsify + finetune epochs, each in out_dir/baselines/<name>/, reported beside it: l2_oneshot = l2 "
        "training + one-shot global magnitude pruning + masked fine-tuning; gmp = l2 training with gradual "
        "magnitude pruning (prune.gradual) + masked fine-tuning. Unstructured pruning only.")

    @field_validator("out_dir")
    @classmethod
    def _absolute(cls, path: str) -> str:
        """Relative to the current directory, stored absolute (`sparsetrain.paths`)."""
        return absolute_path(path)

    @field_validator("regularizer", mode="before")
    @classmethod
    def _pick_regularizer(cls, data: Any, info: ValidationInfo) -> Any:
        return pick_strategy("regularizer", REGULARIZER_SETTINGS, RegularizerConfig, data, _given(info))

    @field_validator("prune", mode="before")
    @classmethod
    def _pick_rule(cls, data: Any, info: ValidationInfo) -> Any:
        return pick_strategy("prune", PRUNE_RULES, PruneConfig, data, _given(info))

    @model_validator(mode="after")
    def _check_cross_fields(self, info: ValidationInfo) -> RunConfig:
        if self.model.checkpoint and self.model.pretrained:
            raise ValueError("model.checkpoint: give either model.checkpoint or model.pretrained, not both")
        if (self.model.reset_head or self.model.checkpoint_ema) and not self.model.checkpoint:
            field = "reset_head" if self.model.reset_head else "checkpoint_ema"
            raise ValueError(f"model.{field}: only applies with model.checkpoint=PATH")
        if self.model.pretrained_file and not self.model.pretrained:
            raise ValueError("model.pretrained_file: set model.pretrained=true to load it")
        plan_only = bool((info.context or {}).get("plan_only"))  # `run --dry-run` reads no data
        if self.data.source in PATH_SOURCES and not self.data.path and not plan_only:
            raise ValueError(f"data.path: required for data.source={self.data.source!r}")
        if self.deepspeed.offload_optimizer != "none" and self.deepspeed.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer: offloading needs deepspeed.zero_stage >= 1")
        if self.deepspeed.zero_stage == 3 and self.regularizer.gradient_path == "autograd":
            raise ValueError("regularizer.gradient_path: autograd adds the penalty of whole weights to the loss, which "
                             "ZeRO stage 3 never holds outside a layer's forward; use regularizer.gradient_path=hook")
        if getattr(self.prune, "channel_score", None) == "grad_count" and self.regularizer.name != "grad_count":
            raise ValueError("prune.channel_score: grad_count ranks channels by the gradient counts of a "
                             f"grad_count sparsify phase, not regularizer.name={self.regularizer.name!r}")
        if self.baselines and self.prune.rule == "filters":
            raise ValueError("baselines: magnitude-pruning baselines need unstructured pruning, not prune.rule=filters")
        for key, unset in (("idx_prefix", None), ("transpose", "auto")):
            if self.data.source != "idx" and getattr(self.data, key) != unset:
                raise ValueError(f"data.{key}: read by data.source=idx only, not {self.data.source!r}")
        self._check_test_fraction(_given(info))
        is_seg_data = self.data.source in SEG_SOURCES
        if self.data.ignore_index is not None and not is_seg_data:
            raise ValueError(f"data.ignore_index: read by segmentation sources only, not {self.data.source!r}")
        if is_seg_data and self.data.train_subset is not None:
            raise ValueError(f"data.train_subset: not supported for data.source={self.data.source!r} "
                             "(classification sources only)")
        if is_seg_data != (self.task == "segmentation"):
            raise ValueError(f"task: {self.task!r} does not match data.source={self.data.source!r}")
        self._check_decay_step()
        return self

    def _check_test_fraction(self, given: frozenset[str]) -> None:
        """data.test_fraction is read only by the sources that split one set (`SPLIT_BY_FRACTION`); one with its own
        test split would ignore it, e.g. `eval RUN data.test_fraction=1.0` on voc scored val.txt alone. Set = given
        on the command line (`given`) or another value than the default (a stored config.yaml holds the default for
        every source, so run directories reload).

        Raises:
            ValueError: one line naming data.test_fraction, the source and where its test split comes from.
        """
        source = self.data.source
        if source in SPLIT_BY_FRACTION:
            return
        if "data.test_fraction" in given or self.data.test_fraction != DEFAULT_TEST_FRACTION:
            raise ValueError(f"data.test_fraction: read by data.source {', '.join(SPLIT_BY_FRACTION)} only, not "
                             f"{source!r}, whose test split is {OWN_TEST_SPLIT[source]}; leave it out")

    def _check_decay_step(self) -> None:
        """adamw's decoupled decay and sgd's (coupled, the same term) scale every weight by 1 - lr * weight_decay per
        step: at lr * weight_decay >= 1 that factor is <= 0, zeroing or flipping the weights at each step, whatever
        the gradients (torch Adam's coupled decay passes through its normalization and has no such bound).

        Raises:
            ValueError: one line naming optim.weight_decay, the largest lr it meets and the bound.
        """
        decay, optim = self.optim.weight_decay, self.optim.name
        if optim not in ("adamw", "sgd") or not decay:
            return
        lrs = {"optim.lr": self.optim.lr} | {f"phases.{name}.lr": phase.lr for name, phase in
                                             (("dense", self.phases.dense), ("sparsify", self.phases.sparsify),
                                              ("finetune", self.phases.finetune)) if phase.lr is not None}
        key, lr = max(lrs.items(), key=lambda item: item[1])
        if lr * decay >= 1:
            raise ValueError(f"optim.weight_decay: {decay:g} with {key} {lr:g} gives lr * weight_decay = "
                             f"{lr * decay:g}: {optim} multiplies every weight by 1 - {lr * decay:g} <= 0 at each "
                             f"step, zeroing the model; expected below 1 / {lr:g} = {1 / lr:g} (usual values 0 to "
                             "0.1)")


def _given(info: ValidationInfo) -> frozenset[str]:
    """The dotted keys given as command-line overrides (`load_config`'s validation context), for error hints."""
    return frozenset((info.context or {}).get("overrides", ()))
