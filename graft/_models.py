"""The API's own response models (app.schemas), the one source of truth for results.

They are imported on first use, so `import graft` stays quick and a script that only
needs the exceptions never loads them. app.schemas imports nothing but pydantic.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.schemas.datasets import DatasetRead as DatasetRead
    from app.schemas.evaluations import EvaluationRead as EvaluationRead
    from app.schemas.jobs import JobEventRead as JobEventRead
    from app.schemas.jobs import JobRead as JobRead
    from app.schemas.models import ModelRead as ModelRead
    from app.schemas.models import PredictResponse as PredictResponse
    from app.schemas.searches import SearchRead as SearchRead
    from app.schemas.teams import ApiKeyCreated as ApiKeyCreated
    from app.schemas.teams import ApiKeyRead as ApiKeyRead
    from app.schemas.teams import OwnTeamRead as OwnTeamRead
    from app.schemas.teams import TeamRead as TeamRead
    from app.schemas.teams import UsageRead as UsageRead

_HOMES = {
    "DatasetRead": "app.schemas.datasets",
    "EvaluationRead": "app.schemas.evaluations",
    "JobEventRead": "app.schemas.jobs",
    "JobRead": "app.schemas.jobs",
    "ModelRead": "app.schemas.models",
    "PredictResponse": "app.schemas.models",
    "SearchRead": "app.schemas.searches",
    "ApiKeyCreated": "app.schemas.teams",
    "ApiKeyRead": "app.schemas.teams",
    "OwnTeamRead": "app.schemas.teams",
    "TeamRead": "app.schemas.teams",
    "UsageRead": "app.schemas.teams",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def job_event(data: str | dict[str, Any]) -> JobEventRead:
    """An event as the API sends it (a JSON text or its parsed object)."""
    fields = json.loads(data) if isinstance(data, str) else data
    # A name of this module's own is not looked up through its __getattr__.
    model: type[JobEventRead] = __getattr__("JobEventRead")
    return model.model_validate(fields)
