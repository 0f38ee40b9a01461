"""Kept: a value derived from a module tree (a decode step's plan), taken again while the tree
and the step it was derived for stay as they were, checked in a few microseconds.

A decode step of PaliGemma-3B reads the same 18 blocks' ~250 modules every step; walking them
to see that nothing changed (~40 us a block warm, ~130 us in a running int4 step, whose weight
stream evicts the interpreter's data and code from the caches) cost ~3% of the step. Instead:

- `generation()` counts every parameter, buffer or submodule set on any module in this
  process: torch's global registration hooks (nn.Module.__setattr__, register_parameter,
  register_buffer, register_module, set_submodule all call them), registered on import. A
  value kept at one generation is stale at any other.
- the forward (pre-)hook dicts of the tree are held and must stay empty: a hook registered
  anywhere in it must run, so the Python path takes the step.
- `step` is the caller's key of everything else it derived the value from (dtypes, rows, the
  cache's layout, switches, module attributes read): compared with ==.

Not seen: a tensor written into a module's dicts directly (`m._parameters[name] = t`, as
nn.Module._apply does for a dtype or device change, which also changes the step's dtype or
device, so `step` sees it) and a module's class assigned (`m.__class__ = C`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn
from torch.nn.modules import module as torch_module

_generation = [0]


def generation() -> int:
    """How many parameters, buffers and submodules were set on modules so far (any module)."""
    return _generation[0]


def _count(*_args) -> None:  # a registration hook: returning None keeps the value set
    _generation[0] += 1


torch_module.register_module_parameter_registration_hook(_count)
torch_module.register_module_buffer_registration_hook(_count)
torch_module.register_module_module_registration_hook(_count)


class Kept(NamedTuple):
    """`value`, derived from `root`'s module tree at `generation` for a step keyed `step`."""

    generation: int
    hooks: list[dict]  # every module's forward hooks and forward pre-hooks (all empty)
    step: tuple
    value: Any

    @classmethod
    def of(cls, root: nn.Module, at: int, step: tuple, value: Any) -> Kept:
        """Kept `value`, derived at generation `at` (read before deriving, so that a module
        set while it was derived makes it stale)."""
        hooks = []
        for m in root.modules():
            hooks += (m._forward_hooks, m._forward_pre_hooks)
        return cls(at, hooks, step, value)

    def holds(self, step: tuple) -> bool:
        """Nothing set on any module since, no hook registered in the tree, the same step."""
        if self.generation != _generation[0] or self.step != step:
            return False
        return not any(map(len, self.hooks))
