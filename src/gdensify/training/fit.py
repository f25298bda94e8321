"""`fit`: train an experiment with Lightning, with exact resumption and atomic checkpoints.

Run folder (`train.out_dir`):
    config.yaml               the resolved experiment (paths relative to the run folder: resumable from anywhere)
    checkpoints/last.ckpt     Lightning state (weights, optimizer, schedule, loop counters) for `--resume`
    model.safetensors         the model weights + config (what `eval`, `reconstruct` and `demo` load)
    logs/metrics.csv          CSV log, only ever appended to (plus TensorBoard event files when `tensorboard` is
                              installed)
    replicas.json             multi-process runs only: every rank's weight checksum at the end

Every `train.checkpoint_every` optimizer steps (and at the end): `last.ckpt`, `model.safetensors` and, with
`data.val_root`, validation PSNR of the fine and coarse renders (logged as `val/psnr_fine`, `val/psnr_coarse`).
A step's batch depends only on (seed, step, rank) (`StepSampler`) and the model's randomness in a step comes from a
generator seeded by (seed, step, rank), so a resumed run continues exactly as an uninterrupted one (bit for bit on
CPU with the same thread count). `train.init_weights` starts a new run from another run's `model.safetensors`
(e.g. GD fine-tuned from a coarse-only model); the optimizer and the schedule start afresh.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from ..config import to_dict
from ..data.batch import ViewBatch, ViewExample
from ..evaluation.evaluate import COUNTS, COUNTS_HEADER, evaluate_example, format_counts
from ..io import atomic_path, save_checkpoint
from ..io.staging import remove_stale
from ..models.loading import MODEL_KIND, initialise_from
from .experiment import Experiment, run_config_text
from .logs import AppendingCSVLogger
from .sampling import StepSampler
from .system import ReconstructionSystem


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: an interrupted save never corrupts
    `last.ckpt`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class PeriodicCheckpoint(Callback):
    """Every `every` steps and at the end of training: `checkpoints/last.ckpt` and `model.safetensors`."""

    def __init__(self, out_dir: Path, experiment: Experiment, every: int) -> None:
        self.out_dir, self.experiment, self.every = out_dir, experiment, every
        self.saved_step = -1

    def _save(self, trainer: L.Trainer, module: ReconstructionSystem) -> None:
        if trainer.global_step == self.saved_step:
            return
        self.saved_step = trainer.global_step
        trainer.save_checkpoint(self.out_dir / "checkpoints" / "last.ckpt", weights_only=False)  # full state
        if trainer.is_global_zero:
            export_weights(module.model, self.experiment, self.out_dir / "model.safetensors", trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, module: ReconstructionSystem, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self._save(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: ReconstructionSystem) -> None:
        self._save(trainer, module)


class PeriodicValidation(Callback):
    """Every `every` steps: mean PSNR of the fine and coarse renders of `examples` (evaluation protocol)."""

    def __init__(self, examples: list[ViewExample], every: int) -> None:
        self.examples, self.every = examples, every

    def on_train_batch_end(self, trainer: L.Trainer, module: ReconstructionSystem, *args: Any) -> None:
        if not self.examples or trainer.global_step % self.every:
            return
        module.model.eval()
        rows = [evaluate_example(module.model, example).row for example in self.examples]
        module.model.train()
        metrics = {}
        for which in ("fine", "coarse"):
            values = [r[f"psnr_{which}"] for r in rows if r[f"psnr_{which}"] is not None]
            if values:
                metrics[f"val/psnr_{which}"] = sum(values) / len(values)
        counts = {}
        for key in COUNTS:
            values = [r[key] for r in rows if r[key] is not None]
            if len(values) == len(rows):
                counts[key] = sum(values) / len(values)
        if trainer.is_global_zero and metrics:
            for logger in trainer.loggers:  # direct: `module.log` would repeat the value at every later log step
                logger.log_metrics({**metrics, **{f"val/{k}": v for k, v in counts.items()}},
                                   step=trainer.global_step)
            module.print(f"step {trainer.global_step}: " + ", ".join(f"{k} {v:.2f} dB" for k, v in metrics.items())
                         + f"; {COUNTS_HEADER}: {format_counts(counts)}")


class ReplicaConsistency(Callback):
    """In multi-process runs, gathers a checksum of every rank's weights at the end, writes them to
    `replicas.json` (rank 0) and raises if the replicas differ."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: L.Trainer, module: ReconstructionSystem) -> None:
        if trainer.world_size < 2:
            return
        checksum = weight_checksum(module.model).to(module.device)
        gathered = trainer.strategy.all_gather(checksum).cpu()  # (world, 3)
        in_sync = bool(torch.equal(gathered, gathered[:1].expand_as(gathered)))
        if trainer.is_global_zero:
            with atomic_path(self.out_dir / "replicas.json") as tmp:
                tmp.write_text(json.dumps({"world_size": trainer.world_size, "in_sync": in_sync,
                                           "checksums": gathered.tolist()}, indent=1) + "\n")
        if not in_sync:
            raise RuntimeError(f"replicas diverged: weight checksums per rank {gathered.tolist()}")


def weight_checksum(model: torch.nn.Module) -> torch.Tensor:
    """(3,) float64: Σw, Σw², Σ i·w over all parameters in order (exactly equal for identical weights)."""
    flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    index = torch.arange(len(flat), dtype=torch.float64) / len(flat)
    return torch.stack([flat.sum(), flat.square().sum(), (index * flat).sum()])


def export_weights(model: torch.nn.Module, experiment: Experiment, path: Path, step: int) -> Path:
    """`model.safetensors`: weights, the model config, and the whole experiment (the training recipe)."""
    return save_checkpoint(path, model.state_dict(), MODEL_KIND, to_dict(experiment.model),
                           extra={"gdensify.experiment": json.dumps(to_dict(experiment)),
                                  "gdensify.step": str(step)})


def _precision(experiment: Experiment) -> str:
    p = experiment.train.precision
    if p != "auto":
        return {"32": "32-true"}.get(p, p)
    on_cuda = torch.cuda.is_available() and experiment.train.accelerator != "cpu"
    return "bf16-mixed" if on_cuda else "32-true"


class StepCounter(Callback):
    """Records the optimizer steps a `fit` call ran: `ran` (0 when a resumed run had none left) and `end` (the
    step it stopped at)."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.end = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.start is None:
            self.start = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, module: ReconstructionSystem) -> None:
        self.end = trainer.global_step

    @property
    def ran(self) -> int:
        return 0 if self.start is None else self.end - self.start


def _check_resumable(last: Path) -> None:
    """ValueError naming `last` when it is not a readable checkpoint or holds anything but plain data (the
    weights-only unpickler refuses code); read memory-mapped, so the tensors are not loaded twice."""
    try:
        torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "refused"
        raise ValueError(f"cannot resume: {last} is refused by the weights-only loader ({first[:200]})") from None
    except (RuntimeError, EOFError, ValueError, IndexError, KeyError, TypeError) as err:
        raise ValueError(f"cannot resume: {last} is not a readable checkpoint ({type(err).__name__}: "
                         f"{str(err).strip()[:200]})") from None


def _loggers(out_dir: Path) -> list:
    loggers = [AppendingCSVLogger(out_dir, name="logs", version="", flush_logs_every_n_steps=1)]  # a kill loses no row
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out_dir, name="logs", version="", default_hp_metric=False))
    except ModuleNotFoundError:  # tensorboard / tensorboardX not installed
        pass
    return loggers


def warn_random_backbone(keys: list[str]) -> None:
    """A loud warning: the published recipe fine-tunes pretrained weights that this run does not have."""
    names = ", ".join(f"{k}=FILE" for k in keys)
    warnings.warn(f"PRETRAINED WEIGHTS MISSING: this backbone starts from RANDOM weights, whereas the published "
                  f"recipe fine-tunes pretrained ones; expect a large quality gap. Pass local weight files with "
                  f"{names} (timm DINO ViT-B/16 keys for encoder_weights, UniMatch/GMFlow `backbone.*` + "
                  f"`transformer.*` keys for feature_backbone_weights), or train.init_weights=MODEL.safetensors",
                  UserWarning, stacklevel=3)


def fit(experiment: Experiment, resume: bool = False, progress: bool = True,
        callbacks: Sequence[Callback] = ()) -> Path:
    """Train; returns the path of `model.safetensors`. Refuses to start over an existing run unless `resume`.
    `callbacks` are added to the trainer's own."""
    cfg = experiment.train
    out = Path(cfg.out_dir)
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {last}")
    if resume:
        _check_resumable(last)
    if not resume and last.is_file() and os.environ.get("LOCAL_RANK", "0") == "0":
        raise FileExistsError(f"{out} already holds a run ({last}); pass --resume to continue it or choose another "
                              f"train.out_dir")
    missing = [] if resume or cfg.init_weights else experiment.missing_pretrained_weights()
    if missing:
        warn_random_backbone(missing)
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        for folder, name in ((out / "checkpoints", "last.ckpt"), (out, "model.safetensors")):
            remove_stale(folder, name, (".tmp",))  # temporaries of a killed save
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(run_config_text(experiment))

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dataset = experiment.training_dataset()
    sampler = StepSampler(len(dataset), cfg.batch_size, cfg.max_steps, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=ViewBatch.collate,
                        num_workers=cfg.num_workers)

    model = experiment.build_model()
    report = progress and os.environ.get("LOCAL_RANK", "0") == "0"
    if cfg.init_weights and not resume:  # a resumed run restores every weight from last.ckpt
        fresh = initialise_from(model, cfg.init_weights)
        if report:
            print(f"initialised from {cfg.init_weights}; {len(fresh)} tensors keep their initialisation")
    if report:
        counts = model.parameter_counts()
        width = max(map(len, counts))
        print("\n".join(f"  {name:<{width}}  {count:>12,}" for name, count in counts.items()))
    system = ReconstructionSystem(model, cfg)
    trainer = L.Trainer(
        max_steps=cfg.max_steps, max_epochs=-1, accelerator=cfg.accelerator, devices=cfg.devices,
        num_nodes=cfg.num_nodes, strategy=cfg.strategy, precision=_precision(experiment),
        gradient_clip_val=cfg.grad_clip or None, log_every_n_steps=cfg.log_every, logger=_loggers(out),
        callbacks=[PeriodicCheckpoint(out, experiment, cfg.checkpoint_every),
                   PeriodicValidation(experiment.validation_examples(), cfg.checkpoint_every),
                   ReplicaConsistency(out), *callbacks],
        enable_checkpointing=False, plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=out,
    )
    sampler.step_source = lambda: trainer.global_step  # iteration starts where the (restored) trainer is
    with warnings.catch_warnings():
        # `StepSampler` makes the loader resumable without Lightning's stateful-dataloader protocol; and the pytree
        # deprecation is Lightning's own use of a torch API, nothing a user can act on.
        warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        trainer.fit(system, loader, ckpt_path=str(last) if resume else None, weights_only=True)
    return out / "model.safetensors"
