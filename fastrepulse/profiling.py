"""NVTX ranges around the three stages of `repel`, visible in Nsight Systems per call.

The range objects are built once; entering one without a profiler attached is a no-op call into
libnvToolsExt (well under a microsecond).
"""

from __future__ import annotations

import nvtx

GRAM_RANGE = nvtx.annotate("fastrepulse.gram", domain="fastrepulse")
SOLVE_RANGE = nvtx.annotate("fastrepulse.solve", domain="fastrepulse")
APPLY_RANGE = nvtx.annotate("fastrepulse.apply", domain="fastrepulse")
