"""The DeepSpeed training engine: ZeRO stages 0-3, bf16, CPU optimizer/parameter offload, behind
the same calls as ``TorchTrainEngine`` (``engine: deepspeed`` on the actor).

Same math as the torch engine. Every mini-batch is exactly one DeepSpeed optimizer step: the
engine sets DeepSpeed's gradient-accumulation steps to the number of micro-batches of the
mini-batch and marks the accumulation boundary itself on the last one. Each micro-batch loss is
weighted by its share of ``tensors[weight_key].sum()`` within the mini-batch and passed to
``engine.backward(..., scale_wrt_gas=False)``, so DeepSpeed does not divide it again by the
accumulation steps. DeepSpeed clips at ``max_grad_norm``, averages gradients over data-parallel
ranks, and steps a ``LambdaLR`` over ``roll.engines.torch_engine.lr_lambda``.

JIT builds. DeepSpeed compiles C++ ops on first use (cached in ~/.cache/torch_extensions). Two are
avoided here:

* the shared-memory allreduce (``deepspeed_shm_comm``, +25 s) that DeepSpeed's CPU accelerator
  builds when its communication backend starts. It only speeds up collectives between CPU ranks on
  one host; unless ``cpu_shm_comm`` is set, the op is marked incompatible in DeepSpeed's op table
  before the backend starts, so collectives go through plain gloo.
* DeepSpeed's own Adam (FusedAdam / cpu_adam, +40 s): with ``torch_optimizer`` (default) a
  ``torch.optim.AdamW`` is the client optimizer. Under ``offload_optimizer`` it then runs on the
  CPU master weights (``zero_force_ds_cpu_optimizer: false``): correct, slower than
  DeepSpeedCPUAdam on large models. ``torch_optimizer: false`` selects DeepSpeed's AdamW
  (DeepSpeedCPUAdam with offload), which JIT-builds on first use.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from roll.config.base import ConfigBase
from roll.devices.offload import OffloadManager, OffloadState
from roll.engines.base import LossFn
from roll.engines.logprobs import response_logprobs
from roll.engines.steps import lr_lambda, mini_batch_rows, run_mini_batches, slice_rows
from roll.engines.weights import tensors_to_numpy
from roll.errors import CheckpointError
from roll.models.lora import apply_lora, merged_state_dict

if TYPE_CHECKING:  # roll.engines.config imports DeepSpeedConfig from here: no import cycle
    from roll.engines.config import OptimConfig

CHECKPOINT_TAG = "engine"


class DeepSpeedConfig(ConfigBase):
    """How DeepSpeed shards and places the actor's training state (ZeRO stage, offload, bf16)."""

    zero_stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 also gradients, "
        "3 also parameters.",
    )
    offload_optimizer: bool = Field(
        False, description="Keep optimizer state and fp32 master weights in CPU memory (ZeRO 1-3)."
    )
    offload_params: bool = Field(
        False, description="Keep parameters in CPU memory between uses (ZeRO-3 only)."
    )
    bf16: bool = Field(
        False,
        description="DeepSpeed bf16 (ZeRO 1-3): bf16 weights and gradients, fp32 master weights and "
        "optimizer state. Gradients accumulate in bf16 unless extra sets "
        "data_types.grad_accum_dtype: fp32. For bf16 compute over fp32 weights use train.dtype: bf16.",
    )
    torch_optimizer: bool = Field(
        True,
        description="Use torch.optim.AdamW as the client optimizer (no JIT-built DeepSpeed Adam); "
        "false selects DeepSpeed's AdamW (FusedAdam, or DeepSpeedCPUAdam with offload_optimizer), "
        "built on first use.",
    )
    allgather_bucket_size: int | None = Field(
        None, gt=0, description="Elements per ZeRO all-gather bucket; null keeps DeepSpeed's default."
    )
    reduce_bucket_size: int | None = Field(
        None, gt=0, description="Elements per ZeRO gradient-reduce bucket; null keeps DeepSpeed's default."
    )
    cpu_shm_comm: bool = Field(
        False,
        description="On CPU ranks, let DeepSpeed JIT-build its shared-memory allreduce (+25 s on first "
        "use, faster collectives between ranks of one host); false uses gloo as is.",
    )
    extra: dict[str, Any] = Field(
        {},
        description="Merged (recursively) into the generated DeepSpeed JSON config last, for options "
        "this section does not name; keys are passed to DeepSpeed unchecked.",
    )

    @model_validator(mode="after")
    def _check(self) -> "DeepSpeedConfig":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                "deepspeed.offload_params needs deepspeed.zero_stage: 3; set zero_stage to 3 or "
                "offload_params to false"
            )
        if self.bf16 and self.zero_stage == 0:
            # ZeRO-0 bf16 keeps parameters as views into a flat buffer with no offload support.
            raise ValueError(
                "deepspeed.bf16 needs ZeRO: set deepspeed.zero_stage to 1, 2 or 3, or use "
                "train.dtype: bf16 (autocast over fp32 weights) with zero_stage 0"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError(
                "deepspeed.offload_optimizer needs ZeRO: set deepspeed.zero_stage to 1, 2 or 3, "
                "or offload_optimizer to false"
            )
        return self

    def ds_config(self, optim: OptimConfig) -> dict[str, Any]:
        """The DeepSpeed JSON config. Accumulation steps start at 1; each train_step sets them."""
        zero: dict[str, Any] = {"stage": self.zero_stage}
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if self.offload_params:
            zero["offload_param"] = {"device": "cpu"}
        if self.allgather_bucket_size is not None:
            zero["allgather_bucket_size"] = self.allgather_bucket_size
        if self.reduce_bucket_size is not None:
            zero["reduce_bucket_size"] = self.reduce_bucket_size
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": optim.micro_batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": optim.max_grad_norm or 0.0,
            "zero_optimization": zero,
            "bf16": {"enabled": self.bf16},
            "zero_force_ds_cpu_optimizer": not self.torch_optimizer,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        if optim.dtype == "bf16":
            # Same autocast as TorchTrainEngine; no module list, so gradients are reduced in fp32.
            config["torch_autocast"] = {
                "enabled": True,
                "dtype": "bfloat16",
                "lower_precision_safe_modules": [],
            }
        if not self.torch_optimizer:
            config["optimizer"] = {
                "type": "AdamW",
                "params": {
                    "lr": optim.lr,
                    "betas": list(optim.betas),
                    "eps": optim.eps,
                    "weight_decay": optim.weight_decay,
                },
            }
        return merge_config(config, self.extra)


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``; nested dicts merge key by key, other values replace."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def free_tcp_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def start_deepspeed_comm(cpu_shm_comm: bool) -> bool:
    """Make sure a torch.distributed group exists and DeepSpeed's comm layer uses it.

    Without a group (a single process outside a worker group) a world-1 gloo group is started on a
    free local port. Returns True when this call created the group (the caller destroys it).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and not cpu_shm_comm:
        # The CPU comm backend builds this op whenever it is marked compatible (no setting skips it).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Ray gives each worker its own device, visible as index 0; DeepSpeed reads the index here.
    os.environ.setdefault("LOCAL_RANK", "0")
    created = not dist.is_initialized()
    if created:
        backend = "gloo" if get_accelerator().device_name() == "cpu" else "nccl"
        dist.init_process_group(backend, init_method=free_tcp_address(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False, verbose=False)
    # ZeRO calls these on every step; torch's rename notice would flood worker logs.
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        category=FutureWarning,
    )
    return created


class DeepSpeedTrainEngine:
    """Trains ``model`` with DeepSpeed. ``total_steps`` = optimizer steps in the run (for the schedule).

    As TorchTrainEngine: fp32 master weights whatever the checkpoint's dtype, ``train.lora``
    adapters (only they train), ``train.dtype: bf16`` autocast (DeepSpeed's ``torch_autocast``,
    gradients still reduced in fp32). ``self.model`` is the Hugging Face (or peft) module; under
    ZeRO-3 its parameters are partitioned: read weights with ``state_dict_numpy()`` or inside
    ``with engine.gathered_weights():``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: OptimConfig,
        ds: DeepSpeedConfig,
        total_steps: int,
        role: str,
    ) -> None:
        import deepspeed

        self.cfg = cfg
        self.ds = ds
        self.role = role
        self._owns_group = start_deepspeed_comm(ds.cpu_shm_comm)
        model = model.float()  # fp32 master weights; DeepSpeed casts to bf16 itself under ds.bf16
        if cfg.lora is not None:
            model = apply_lora(model, cfg.lora)
        trainable = [p for p in model.parameters() if p.requires_grad]
        schedule = lr_lambda(cfg, max(1, total_steps))
        if ds.torch_optimizer:
            client_optimizer = torch.optim.AdamW(
                trainable, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
            )
            scheduler = torch.optim.lr_scheduler.LambdaLR(client_optimizer, schedule)
        else:
            client_optimizer = None

            def scheduler(optimizer):  # DeepSpeed builds its optimizer, then calls this with it
                return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=None if client_optimizer else trainable,
            optimizer=client_optimizer,
            lr_scheduler=scheduler,
            config=ds.ds_config(cfg),
            dist_init_required=False,
        )
        self.model = self.engine.module
        self.device = self.engine.device
        self.offloader = self._offload_manager()

    # ---- inference-mode passes --------------------------------------------------------------
    @torch.no_grad()
    def forward_logprobs(self, tensors: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        """[B, R] float32 log-probs of the response tokens, micro-batched."""
        self.offloader.require_active("forward_logprobs")
        self.engine.eval()
        parts = []
        rows = tensors["input_ids"].shape[0]
        for start in range(0, rows, self.cfg.micro_batch_size):
            micro = slice_rows(tensors, start, start + self.cfg.micro_batch_size)
            parts.append(
                response_logprobs(
                    self.engine,
                    micro["input_ids"].to(self.device),
                    micro["attention_mask"].to(self.device),
                    micro["response_mask"].shape[1],
                    temperature,
                )
            )
        return torch.cat(parts, dim=0)

    @torch.no_grad()
    def reference_logprobs(self, tensors: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        """Log-probs under the base model (LoRA adapters disabled): the LoRA reference, no copy."""
        with self.model.disable_adapter():
            return self.forward_logprobs(tensors, temperature)

    # ---- optimisation ----------------------------------------------------------------------
    def train_step(
        self, tensors: dict[str, torch.Tensor], loss_fn: LossFn, weight_key: str
    ) -> dict[str, float]:
        """Run ``epochs × mini_batches`` optimizer steps over ``tensors`` (as TorchTrainEngine).

        ``loss_fn(model, micro)`` gets the DeepSpeed engine as ``model`` (call it like the HF
        module). Returns stats averaged over micro-batches (share-weighted) plus
        ``actor/grad_norm`` (before clipping), ``actor/lr`` and ``time/train_compute``.
        """
        self.offloader.require_active("train_step")
        self.engine.train()
        mini_size = mini_batch_rows(tensors["input_ids"].shape[0], self.cfg)
        micro_batches = -(-mini_size // self.cfg.micro_batch_size)
        # DeepSpeed's accumulation steps = micro-batches per mini-batch (bookkeeping and sample
        # counts); the boundary itself is set explicitly in _optimizer_step.
        self.engine.set_train_batch_size(
            self.cfg.micro_batch_size * micro_batches * self.engine.dp_world_size
        )
        stats = run_mini_batches(
            tensors, self.cfg, lambda mini, totals: self._optimizer_step(mini, loss_fn, weight_key, totals)
        )
        stats["actor/lr"] = float(self.scheduler.get_last_lr()[0])
        return stats

    def _optimizer_step(self, mini, loss_fn: LossFn, weight_key: str, totals: dict) -> float:
        weights = mini[weight_key].float()
        total_weight = weights.sum().clamp(min=1e-8)
        rows = weights.shape[0]
        starts = list(range(0, rows, self.cfg.micro_batch_size))
        norm = None
        for start in starts:
            last = start == starts[-1]
            self.engine.set_gradient_accumulation_boundary(last)
            micro = {
                k: v.to(self.device)
                for k, v in slice_rows(mini, start, start + self.cfg.micro_batch_size).items()
            }
            share = float(weights[start : start + self.cfg.micro_batch_size].sum() / total_weight)
            loss, stats = loss_fn(self.engine, micro)
            self.engine.backward(loss * share, scale_wrt_gas=False)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value) * share
            if last:
                norm = self._plain_grad_norm()
            self.engine.step()
        ds_norm = self.engine.get_global_grad_norm()
        return float(ds_norm if ds_norm is not None else norm)

    def _plain_grad_norm(self) -> float | None:
        """Norm of the reduced module gradients where DeepSpeed does not report one (ZeRO-0 fp32:
        the client optimizer steps on plain ``.grad``s and DeepSpeed keeps no norm)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return None
        return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))

    # ---- state --------------------------------------------------------------------------------
    def gathered_weights(self) -> contextlib.AbstractContextManager:
        """Context in which ``self.model``'s parameters are whole on every rank (ZeRO-3 gathers
        them, read-only; other stages hold them whole already): for exports and checksums."""
        import deepspeed

        params = list(self.model.parameters()) if self.ds.zero_stage == 3 else []
        return deepspeed.zero.GatheredParameters(params, enabled=bool(params))

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        """Reloaded for the duration when offloaded: a colocated role is checkpointed (and may
        publish weights) while it sleeps, and ZeRO state must be on its device for that."""
        offloaded = self.offloader.state is OffloadState.OFFLOADED
        if offloaded:
            self.offloader.reload()
        try:
            yield
        finally:
            if offloaded:
                self.offloader.offload()

    def state_dict_numpy(self) -> dict[str, np.ndarray]:
        """Full weights under plain HF names (LoRA merged) on every rank, as numpy; bf16 travels as
        int16 bit patterns. Collective under ZeRO-3: every rank calls it."""
        with self._active(), self.gathered_weights():
            # Own copies: under ZeRO-3 the gathered storage is released when the context exits.
            tensors = {k: v.detach().to("cpu", copy=True) for k, v in merged_state_dict(self.model).items()}
        return tensors_to_numpy(tensors)

    def save_checkpoint(self, folder: Path) -> None:
        """Model, optimizer and LR schedule into ``folder`` (shared by all ranks; each writes its
        shards). Collective: every rank calls it."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        with self._active():
            self.engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG)

    def load_checkpoint(self, folder: Path) -> None:
        """Restore what save_checkpoint wrote (same ZeRO stage and data-parallel size)."""
        if not (Path(folder) / CHECKPOINT_TAG).is_dir():
            raise CheckpointError(
                f"no DeepSpeed checkpoint '{CHECKPOINT_TAG}' in {folder}; resume from a folder that "
                "save_checkpoint wrote with the deepspeed engine"
            )
        with self._active():
            self.engine.load_checkpoint(
                str(folder), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
            )

    # ---- offload ------------------------------------------------------------------------------
    def _offload_manager(self) -> OffloadManager:
        """State machine and byte accounting over the module, the optimizer state, the fp32
        master weights and (ZeRO-3) the parameter partitions."""
        if self.ds.zero_stage == 0:
            manager = OffloadManager(self.role, self.device)
        else:
            manager = _ZeroOffloadManager(self.role, self.device, self.engine, self.ds.offload_params)
        manager.track_module("model", self.model)
        manager.track_optimizer("optimizer", self.engine.basic_optimizer)
        state = torch.nn.Module()  # holds DeepSpeed's own tensors (by reference) for the manager
        for i, tensor in enumerate(self._deepspeed_tensors()):
            state.register_buffer(f"t{i}", tensor, persistent=False)
        manager.track_module("deepspeed_state", state)
        return manager

    def _deepspeed_tensors(self) -> list[torch.Tensor]:
        """Tensors DeepSpeed keeps beside the module's parameters: fp32 master weights (ZeRO-1/2:
        the client optimizer's parameters; ZeRO-3: its flat partitions, handed to the optimizer one
        sub-group at a time) and ZeRO-3's parameter partitions. None at ZeRO-0 (fp32 only), where
        the optimizer steps the module's own parameters."""
        if self.ds.zero_stage == 3:
            masters = list(self.engine.optimizer.fp32_partitioned_groups_flat)
            return masters + [p.ds_tensor for p in self.model.parameters()]
        module_params = {id(p) for p in self.model.parameters()}
        groups = self.engine.basic_optimizer.param_groups
        return [p for group in groups for p in group["params"] if id(p) not in module_params]

    def offload(self) -> dict[str, Any]:
        self.offloader.offload()
        return self.offloader.stats()

    def reload(self) -> dict[str, Any]:
        self.offloader.reload()
        return self.offloader.stats()

    def destroy(self) -> None:
        """Release DeepSpeed's hooks and buffers; end the process group if this engine started it."""
        import deepspeed.comm

        self.engine.destroy()
        if self._owns_group and dist.is_initialized():
            deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's cached subgroups
        self._owns_group = False


class _ZeroOffloadManager(OffloadManager):
    """OffloadManager's state machine and accounting; DeepSpeed moves the data.

    ZeRO keeps parameters as views into flat buffers, so moving tensors one by one would break
    them: on an accelerator ``engine.offload_states()`` / ``reload_states()`` move everything.
    DeepSpeed refuses that under ``offload_params``; parameters and (with ``offload_optimizer``)
    optimizer state already live in host memory then, so only the state changes.
    """

    def __init__(self, name: str, device: torch.device | str, engine: Any, offload_params: bool) -> None:
        super().__init__(name, device)
        self._engine = engine
        self._deepspeed_moves = self.device.type != "cpu" and not offload_params

    @property
    def moves_data(self) -> bool:
        return False

    def offload(self) -> int:
        nbytes = super().offload()  # checks the state, counts the bytes still on the device
        if self._deepspeed_moves:
            self._engine.offload_states()
        return nbytes

    def reload(self) -> int:
        nbytes = super().reload()
        if self._deepspeed_moves:
            self._engine.reload_states()
        return nbytes
