"""Device buffers that a patched pipeline reuses from block to block and call to call (the device solver's path).

The device path of one repelled block writes three intermediates: the Gram kernel's partial sums, the solver's
P - I and the solver's per-group status. The first two are consumed within the block, in stream order, so one
buffer per shape serves every block. Statuses are read only when the pipeline call ends (one transfer for the
call), so each block of a call takes a slot of its own; the slots are handed out again by the next call. After
the first call of a shape, a repelled forward allocates nothing: its buffers stay put from call to call.
"""

from __future__ import annotations

import torch

Key = tuple[str, tuple[int, ...], torch.dtype, torch.device]
"""A buffer's name, shape, dtype and device."""


class Workspaces:
    """Buffers by name, shape, dtype and device; status slots by call (`release_statuses` when a call ends)."""

    def __init__(self) -> None:
        self._buffers: dict[Key, torch.Tensor] = {}
        self._statuses: dict[tuple[int, torch.device], list[torch.Tensor]] = {}  # by groups and device
        self._taken: dict[tuple[int, torch.device], int] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The uninitialised buffer `name` of this shape, dtype and device, the same tensor every time."""
        key = (name, shape, dtype, device)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return self._buffers[key]

    def status(self, groups: int, device: torch.device) -> torch.Tensor:
        """A status slot [groups] (int32) that no other block of this call holds."""
        key = (groups, device)
        slots = self._statuses.setdefault(key, [])
        taken = self._taken.get(key, 0)
        if taken == len(slots):
            slots.append(torch.empty(groups, dtype=torch.int32, device=device))
        self._taken[key] = taken + 1
        return slots[taken]

    def release_statuses(self) -> None:
        """Hand every status slot out again: the call that held them has read them."""
        self._taken.clear()
