"""Moving weights between workers as numpy arrays (zero-copy in Ray's object store).

bf16 has no numpy dtype: such tensors travel as int16 bit patterns and are viewed back as bf16
by the receiver, whose own parameter dtype says how to read them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def state_to_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return tensors_to_numpy(module.state_dict())


def tensors_to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        out[name] = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return out


@torch.no_grad()
def load_numpy_state(module: torch.nn.Module, state: dict[str, np.ndarray]) -> int:
    """Copy ``state`` into ``module``'s tensors in place; returns the bytes copied.

    Tied weights appear once per name in ``state_dict()``; copying both is harmless.
    """
    targets = module.state_dict()
    missing = sorted(set(targets) - set(state))
    if missing:
        raise KeyError(f"weight update lacks {len(missing)} tensors, e.g. {missing[:3]}")
    copied = 0
    for name, target in targets.items():
        with warnings.catch_warnings():  # read-only object-store arrays: we only copy from them
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(np.asarray(state[name]))
        if target.dtype == torch.bfloat16 and src.dtype == torch.int16:
            src = src.view(torch.bfloat16)
        target.copy_(src.to(target.dtype))
        copied += target.numel() * target.element_size()
    return copied
