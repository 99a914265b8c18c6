"""``SCMTrainer``: fit / evaluate projective models with the SCM losses, and resumable checkpoints.

Data are ``(x, y)`` tensor pairs (or a ``TensorDataset``, or any ``DataLoader`` of ``(x, y)`` batches), with raw
targets ``y`` that may hold ±inf (a pole) and NaN (no value); they are lifted with
:func:`~zeroproof.losses.lift_targets`. Tensor data are shuffled by the trainer's own generator, whose state is
part of the checkpoint, so an interrupted and resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from zeroproof.inference.config import InferenceConfig
from zeroproof.inference.decode import strict_inference
from zeroproof.losses.scm import LossWeights, scm_loss
from zeroproof.losses.targets import LiftedTargets, lift_targets
from zeroproof.ops.weak_sign import infinity_sign
from zeroproof.training.perturbation import ThresholdPerturbation

log = structlog.get_logger("zeroproof.training")

CHECKPOINT_FORMAT = "zeroproof-checkpoint/1"

Data = tuple[Tensor, Tensor] | TensorDataset | DataLoader[Any]


class EarlyStoppingConfig(BaseModel):
    """Stop when validation loss has not improved for ``patience`` epochs among epochs whose coverage on
    *non-singular* targets is at least ``min_coverage``.

    Coverage is measured on finite targets only, so a model that correctly answers ⊥ on genuinely singular
    targets is never penalised for it; an epoch that buys a low loss by rejecting finite targets never counts
    as the best one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patience: int = Field(default=5, ge=1)
    min_coverage: float = Field(default=0.95, ge=0, le=1)
    min_delta: float = Field(default=0.0, ge=0)


class TrainerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=256, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    loss: LossWeights = LossWeights()
    tau_infer: float = 1e-6
    tau_train: float | None = 1e-4
    #: ``(low, high)``: draw ``tau_train`` log-uniformly per step from this range; ``None``: fixed tau_train.
    perturb_tau_train: tuple[float, float] | None = None
    perturbation_window: int = Field(default=256, ge=1)
    grad_accumulation: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=None, gt=0)
    amp: bool = False
    early_stopping: EarlyStoppingConfig | None = None
    seed: int = 0
    shuffle: bool = True
    progress: bool = True
    #: ``"epoch"`` or ``"step"``: when to call ``scheduler.step()``.
    scheduler_interval: str = "epoch"

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        InferenceConfig(tau_infer=self.tau_infer, tau_train=self.tau_train)  # same validation as inference
        if self.scheduler_interval not in ("epoch", "step"):
            raise ValueError("scheduler_interval must be 'epoch' or 'step'")
        if self.perturb_tau_train is not None:
            low, high = self.perturb_tau_train
            if not (0 < low <= high):
                raise ValueError("perturb_tau_train must be (low, high) with 0 < low <= high")
            if low < self.tau_infer:
                raise ValueError("perturb_tau_train low must be >= tau_infer (the gap starts at tau_infer)")
        return self

    @property
    def inference(self) -> InferenceConfig:
        return InferenceConfig(tau_infer=self.tau_infer, tau_train=self.tau_train)


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


class SCMTrainer:
    """Trains a model whose ``forward(x)`` returns ``(N, D)``; see the module docstring.

    ``history`` maps metric names to per-epoch lists: ``loss``, ``fit_loss``, ``margin_loss``, ``sign_loss``,
    ``rejection_loss``, ``coverage`` (1 − ⊥ rate over all training outputs), ``coverage_nonsingular`` (finite
    targets only), ``gap_rate``, ``bottom_rate``, ``tau_train``, ``lr``, ``epoch_seconds``, and with a validation set
    the same under ``val_`` plus ``val_bottom_rate_singular`` and ``val_sign_accuracy``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainerConfig | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config if config is not None else TrainerConfig()
        if device is None:
            try:
                device = next(model.parameters()).device
            except StopIteration:
                device = "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = (
            optimizer
            if optimizer is not None
            else torch.optim.Adam(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        )
        self.scheduler = scheduler
        self.inference_config = self.config.inference
        self.epoch = 0
        self.global_step = 0
        self.history: dict[str, list[float]] = {}
        self.singular_targets_seen = 0
        self.stopped_early = False
        self._es_best = math.inf
        self._es_best_epoch = -1
        self._es_bad = 0
        self._data_gen = torch.Generator().manual_seed(self.config.seed)
        self.perturbation = (
            ThresholdPerturbation(
                *self.config.perturb_tau_train, window=self.config.perturbation_window, seed=self.config.seed + 1
            )
            if self.config.perturb_tau_train is not None
            else None
        )
        use_cuda_scaler = self.config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_scaler)

    # ------------------------------------------------------------------ data
    def _batches(self, data: Data, *, shuffle: bool) -> Iterator[tuple[Tensor, Tensor]]:
        if isinstance(data, DataLoader):
            for batch in data:
                yield batch[0], batch[1]
            return
        if isinstance(data, TensorDataset):
            x, y = data.tensors[0], data.tensors[1]
        else:
            x, y = data
        n = x.shape[0]
        if y.shape[0] != n:
            raise ValueError(f"x has {n} rows but y has {y.shape[0]}")
        order = torch.randperm(n, generator=self._data_gen) if shuffle else torch.arange(n)
        bs = self.config.batch_size
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            yield x[idx], y[idx]

    def _num_batches(self, data: Data) -> int | None:
        if isinstance(data, DataLoader):
            try:
                return len(data)
            except TypeError:
                return None
        n = data.tensors[0].shape[0] if isinstance(data, TensorDataset) else data[0].shape[0]
        return math.ceil(n / self.config.batch_size)

    def _autocast(self) -> AbstractContextManager[Any]:
        if not self.config.amp:
            return nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # --------------------------------------------------------------- training
    def fit(
        self, train: Data, val: Data | None = None, *, epochs: int, max_seconds: float | None = None
    ) -> dict[str, list[float]]:
        """Train until ``self.epoch == epochs`` (so a resumed trainer continues where it stopped).

        ``max_seconds``: also stop after the first epoch that ends past this wall-clock budget.
        """
        t_start = time.perf_counter()
        from tqdm.auto import tqdm

        start_epoch = self.epoch
        bar = tqdm(
            total=max(epochs - start_epoch, 0),
            desc="train",
            unit="epoch",
            disable=not self.config.progress,
            leave=False,
        )
        log.info("training.start", start_epoch=start_epoch, epochs=epochs, device=str(self.device))
        try:
            while self.epoch < epochs and not self.stopped_early:
                t0 = time.perf_counter()
                metrics = self._train_epoch(train)
                if val is not None:
                    metrics.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
                self.epoch += 1
                if self.scheduler is not None and self.config.scheduler_interval == "epoch":
                    self.scheduler.step()
                metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
                metrics["epoch_seconds"] = time.perf_counter() - t0
                for key, value in metrics.items():
                    self.history.setdefault(key, []).append(float(value))
                log.debug("training.epoch", epoch=self.epoch, **{k: round(v, 6) for k, v in metrics.items()})
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3g}", cov=f"{metrics['coverage']:.3f}")
                if val is not None and self.config.early_stopping is not None:
                    self._early_stopping_step(metrics)
                if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                    log.info("training.time_budget_reached", epoch=self.epoch, seconds=max_seconds)
                    break
        finally:
            bar.close()
        log.info("training.end", epoch=self.epoch, stopped_early=self.stopped_early)
        return self.history

    def _early_stopping_step(self, metrics: dict[str, float]) -> None:
        es = self.config.early_stopping
        assert es is not None
        cov = metrics.get("val_coverage_nonsingular", metrics.get("val_coverage", 1.0))
        loss = metrics["val_loss"]
        if cov >= es.min_coverage and loss < self._es_best - es.min_delta:
            self._es_best = loss
            self._es_best_epoch = self.epoch
            self._es_bad = 0
        else:
            self._es_bad += 1
        if self._es_bad >= es.patience:
            self.stopped_early = True
            log.info(
                "training.early_stop", epoch=self.epoch, best_epoch=self._es_best_epoch, best_val_loss=self._es_best
            )

    def _train_epoch(self, train: Data) -> dict[str, float]:
        self.model.train()
        cfg = self.config
        sums: dict[str, float] = {}
        n_seen = 0
        elements = bottoms = gaps = 0
        finite_elements = finite_bottoms = 0
        taus: list[float] = []
        accum = cfg.grad_accumulation
        total_batches = self._num_batches(train)
        self.optimizer.zero_grad(set_to_none=True)
        pending = 0
        for i, (xb, yb) in enumerate(self._batches(train, shuffle=cfg.shuffle)):
            xb = xb.to(self.device)
            targets = lift_targets(yb.to(self.device))
            tau_train = self.perturbation.sample() if self.perturbation is not None else None
            if tau_train is not None:
                taus.append(tau_train)
            with self._autocast():
                N, D = self.model(xb)
            parts = scm_loss(N, D, targets, self.inference_config, cfg.loss, tau_train=tau_train)
            self.scaler.scale(parts.total / accum).backward()  # type: ignore[no-untyped-call]
            pending += 1
            last = total_batches is not None and i + 1 == total_batches
            if pending == accum or last:
                self._optimizer_step()
                pending = 0
            b = xb.shape[0]
            n_seen += b
            for key, value in parts.as_floats().items():
                sums[key] = sums.get(key, 0.0) + value * b
            with torch.no_grad():
                res = strict_inference(N.detach().float(), D.detach().float(), self.inference_config)
                elements += res.bottom_mask.numel()
                bottoms += int(res.bottom_mask.sum())
                gaps += int(res.gap_mask.sum())
                fin = targets.finite_mask
                finite_elements += int(fin.sum())
                finite_bottoms += int((res.bottom_mask & fin).sum())
                self.singular_targets_seen += int(targets.singular_mask.sum())
        if pending:  # DataLoader of unknown length: flush the last partial accumulation
            self._optimizer_step()
        if n_seen == 0:
            raise ValueError("training data is empty")
        metrics = {k: v / n_seen for k, v in sums.items()}
        metrics["coverage"] = 1.0 - bottoms / elements
        metrics["bottom_rate"] = bottoms / elements
        metrics["gap_rate"] = gaps / elements
        metrics["coverage_nonsingular"] = 1.0 - finite_bottoms / finite_elements if finite_elements else math.nan
        base_tau = self.inference_config.effective_tau_train
        metrics["tau_train"] = sum(taus) / len(taus) if taus else base_tau
        return metrics

    def _optimizer_step(self) -> None:
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.scheduler is not None and self.config.scheduler_interval == "step":
            self.scheduler.step()

    # ------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, D)`` in float32 for ``x``, batched, model in eval mode."""
        self.model.eval()
        Ns, Ds = [], []
        for start in range(0, x.shape[0], max(self.config.batch_size, 4096)):
            xb = x[start : start + max(self.config.batch_size, 4096)].to(self.device)
            with self._autocast():
                N, D = self.model(xb)
            Ns.append(N.float().cpu())
            Ds.append(D.float().cpu())
        return torch.cat(Ns), torch.cat(Ds)

    @torch.no_grad()
    def evaluate(self, data: Data) -> dict[str, float]:
        """Loss components (fixed tau_train), coverage, ⊥/gap rates and orientation accuracy on ``data``."""
        xs, ys = [], []
        for xb, yb in self._batches(data, shuffle=False):
            xs.append(xb)
            ys.append(yb)
        x, y = torch.cat(xs), torch.cat(ys)
        N, D = self.predict(x)
        targets = lift_targets(y.cpu().float())
        return evaluate_projective(N, D, targets, self.inference_config, self.config.loss)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int | None = None) -> dict[str, Any]:
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch if epoch is None else int(epoch),
            "global_step": self.global_step,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler_state_dict": self.scaler.state_dict(),
            "config": self.config.model_dump(mode="json"),
            "inference_config": self.inference_config.model_dump(mode="json"),
            "history": {k: list(v) for k, v in self.history.items()},
            "singular_targets_seen": self.singular_targets_seen,
            "early_stopping": {
                "best": self._es_best,
                "best_epoch": self._es_best_epoch,
                "bad": self._es_bad,
                "stopped": self.stopped_early,
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": cuda_states,
                "python": _python_state(),
                "numpy": _numpy_state(),
                "data": self._data_gen.get_state(),
            },
            "perturbation": self.perturbation.state_dict() if self.perturbation is not None else None,
        }

    def save_checkpoint(self, path: str | os.PathLike[str], epoch: int | None = None) -> Path:
        """Write everything needed to resume exactly; ``epoch`` defaults to the epochs completed so far.

        Loads with ``torch.load(path, weights_only=True)`` (tensors, numbers, strings, lists and dicts only).
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        torch.save(self.state_dict(epoch), tmp)
        os.replace(tmp, target)
        log.info("training.checkpoint.saved", path=str(target), epoch=self.epoch if epoch is None else epoch)
        return target

    def load_checkpoint(self, path: str | os.PathLike[str], *, restore_rng: bool = True) -> int:
        """Restore model, optimizer, scheduler, scaler, epoch, history, RNG states; returns the epoch."""
        state = torch.load(str(path), map_location=self.device, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a zeroproof checkpoint (format {state.get('format')!r})")
        saved_config = TrainerConfig.model_validate(state["config"])
        if saved_config != self.config:
            log.warning("training.checkpoint.config_differs", path=str(path))
            self.config = saved_config
            self.inference_config = saved_config.inference
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        if self.scheduler is not None and state.get("scheduler_state_dict") is not None:
            self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = {k: [float(v) for v in vals] for k, vals in state["history"].items()}
        self.singular_targets_seen = int(state.get("singular_targets_seen", 0))
        es = state["early_stopping"]
        self._es_best, self._es_best_epoch = float(es["best"]), int(es["best_epoch"])
        self._es_bad, self.stopped_early = int(es["bad"]), bool(es["stopped"])
        if state.get("perturbation") is not None:
            if self.perturbation is None:
                low, high = state["perturbation"]["low"], state["perturbation"]["high"]
                self.perturbation = ThresholdPerturbation(low, high)
            self.perturbation.load_state_dict(state["perturbation"])
        if restore_rng:
            rng = state["rng"]
            torch.set_rng_state(rng["torch"].cpu())
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
            version, internal, gauss = rng["python"]
            random.setstate((version, tuple(internal), gauss))
            npst = rng["numpy"]
            keys = npst["keys"].cpu().numpy().astype(np.uint32)
            np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached"]))
            self._data_gen.set_state(rng["data"].cpu())
        log.info("training.checkpoint.loaded", path=str(path), epoch=self.epoch)
        return self.epoch

    # ------------------------------------------------------------- provenance
    def provenance(self, tail: int = 3) -> dict[str, Any]:
        """JSON-able training record for a bundle's ``extra`` (read by ``zeroproof validate``)."""
        sign_logged = "sign_loss" in self.history
        return {
            "sign_loss_active": bool(sign_logged and self.config.loss.sign > 0 and self.singular_targets_seen > 0),
            "lambda_sign": self.config.loss.sign,
            "singular_targets_seen": self.singular_targets_seen,
            "epochs": self.epoch,
            "loss_weights": self.config.loss.model_dump(mode="json"),
            "history_keys": sorted(self.history),
            "history_tail": {k: v[-tail:] for k, v in self.history.items()},
        }


def evaluate_projective(
    N: Tensor,
    D: Tensor,
    targets: LiftedTargets,
    config: InferenceConfig,
    weights: LossWeights | None = None,
) -> dict[str, float]:
    """Metrics of a model's ⟨N, D⟩ against lifted targets (used by ``SCMTrainer.evaluate`` and the CLI)."""
    parts = scm_loss(N, D, targets, config, weights)
    res = strict_inference(N, D, config)
    bottom, gap = res.bottom_mask, res.gap_mask
    fin = targets.finite_mask
    sing = targets.singular_mask
    out = parts.as_floats()
    out["coverage"] = 1.0 - float(bottom.float().mean())
    out["bottom_rate"] = float(bottom.float().mean())
    out["gap_rate"] = float(gap.float().mean())
    out["coverage_nonsingular"] = 1.0 - float(bottom[fin].float().mean()) if bool(fin.any()) else math.nan
    out["bottom_rate_singular"] = float(bottom[sing].float().mean()) if bool(sing.any()) else math.nan
    if bool(sing.any()):
        # Stateless orientation: sign(N) on the canonical D → +0 side (matches the lifting convention).
        reported = infinity_sign(N, torch.ones_like(bottom), None)
        out["sign_accuracy"] = float((reported[sing].float() == targets.infinity_sign[sing].float()).float().mean())
    else:
        out["sign_accuracy"] = math.nan
    accepted = fin & ~bottom
    if bool(accepted.any()):
        err = (res.decoded[accepted] - targets.numerator[accepted].to(res.decoded.dtype)).abs()
        out["mae_accepted"] = float(err.mean())
    else:
        out["mae_accepted"] = math.nan
    return out


def iterate_batches(x: Tensor, batch_size: int) -> Iterable[Tensor]:
    """Plain sequential batches (no shuffling), e.g. for inference over held-out data."""
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]
