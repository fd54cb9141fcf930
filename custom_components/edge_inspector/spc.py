"""Statistical process control on the defect rate: a p-chart.

The centre line p̄ is the defect rate over a baseline window (the last 7 days up to the last
hour); the current subgroup is the last hour's inspections. With n inspections in the subgroup
the 3-sigma control limits are p̄ ± 3·sqrt(p̄(1-p̄)/n). The process is out of control when the
current rate is above the upper limit. Too few inspections give no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

BASELINE = timedelta(days=7)
SUBGROUP = timedelta(hours=1)
MIN_BASELINE = 100
MIN_SUBGROUP = 20


@dataclass(frozen=True, slots=True)
class PChart:
    p_bar: float
    ucl: float
    lcl: float
    rate: float
    n: int

    @property
    def out_of_control(self) -> bool:
        return self.rate > self.ucl


def p_chart(
    baseline_inspections: int, baseline_failed: int, inspections: int, failed: int
) -> PChart | None:
    """The chart for one subgroup, or None when there is too little data for a verdict."""
    if baseline_inspections < MIN_BASELINE or inspections < MIN_SUBGROUP:
        return None
    p_bar = baseline_failed / baseline_inspections
    sigma = math.sqrt(p_bar * (1 - p_bar) / inspections)
    return PChart(
        p_bar=p_bar,
        ucl=min(1.0, p_bar + 3 * sigma),
        lcl=max(0.0, p_bar - 3 * sigma),
        rate=failed / inspections,
        n=inspections,
    )
