"""Everything that runs tasks: the serial runner, the policy and the executors.

``mergeagg.run`` (re-exported by the package) is the entry point; see ``docs/runtime.md``.
"""

from mergeagg.runtime.allreduce import allreduce
from mergeagg.runtime.api import Result, run
from mergeagg.runtime.report import Report
from mergeagg.runtime.session import Session

__all__ = ["run", "Result", "Report", "Session", "allreduce"]
