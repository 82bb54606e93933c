"""Per-group outcome codes of the B x B solvers, shared by the host and the device solver.

A solver reports one code per group instead of raising, so that a pipeline can leave a failed group as it was
(its ``P - I`` is 0, or the apply skips it) and report once per call, while `fastrepulse.repel` raises.
"""

SOLVED = 0
"""All steps done, P - I finite. Zero, so that ``status.any()`` says whether some group failed."""
NON_FINITE = 1
"""The steps diverged: a NaN or Inf appeared in the iteration (scale too large for the iterations)."""
NOT_CONVERGED = 2
"""The device solver's Jacobi eigendecomposition ran out of sweeps."""
BAD_SAMPLES = 3
"""The input is not a Gram matrix of usable samples: NaN or Inf entries, or a zero sample under the cosine kernel."""
MAY_OVERFLOW = 4
"""P - I is finite, but x + (P - I) x may exceed the largest value of x's dtype (a bound from the Gram diagonal):
the result has to be checked before it is written."""
