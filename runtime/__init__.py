"""Everything that runs tasks: the serial runner, the policy and the executors.

``mergeagg.run`` (re-exported by the package) is the entry point; see ``docs/runtime.md``.
The tree and ring all-reduce live in :mod:`mergeagg.runtime.allreduce` (imported when
used: every worker process imports this package when it starts).
"""

from mergeagg.runtime.api import Result, run
from mergeagg.runtime.report import Report
from mergeagg.runtime.session import Session

__all__ = ["run", "Result", "Report", "Session"]
