"""Reusable @task building blocks, one module per thing they touch.

Each task is a plain function with typed parameters wrapped by Prefect; tests call `task.fn` where the
orchestration is not what is tested. Remediation must never reuse a cached answer (a health probe in a
verification loop asks the same question twice and wants two answers), so caching is off everywhere.
"""

from prefect.cache_policies import NO_CACHE

NO_CACHE_POLICY = NO_CACHE
