"""Rules about the ORDER of stages, by what the stages mean, not where they sit.

The gate runs stages strictly in file order, so a file in which prod comes before the
approval, or a check before the deploy it checks, would do exactly that. Refused here:

* a stage of a protected environment (prod) that is not after a passed approval: the file
  needs an approval stage, and every prod stage comes after it;
* a staging stage after a prod stage (prod before staging);
* a check (without an explicit ``url``) whose deploy has not run before it: an earlier deploy stage of the check's
  environment (target ``staging`` -> staging, ``canary``/``prod`` -> prod), deploying the
  check's ``service`` when it names one;
* a traffic change for a service no earlier deploy stage of its environment deployed.

The gate enforces the first rule again at run time, whatever the file says
(``gate_flow.start``): a protected stage never starts without a valid approval.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

from shared.domain.pipeline_schema import Invalid


class Stage(Protocol):
    """What these rules read of a stage (``pipeline.Stage``, which imports this module to check its order)."""

    id: str
    environment: str
    kind: Any  # pipeline.StageKind, a str enum
    params: Mapping[str, Any]

PROTECTED_ENVIRONMENTS = ("prod",)
CHECK_TARGET_ENVIRONMENT = {"staging": "staging", "canary": "prod", "prod": "prod"}


def is_protected(stage: Stage) -> bool:
    """A stage that needs a passed approval before it starts (the approval itself does not)."""
    return stage.environment in PROTECTED_ENVIRONMENTS and stage.kind.value != "approval"


def check_order(stages: tuple[Stage, ...]) -> None:
    approval = next((i for i, s in enumerate(stages) if s.kind.value == "approval"), None)
    deployed: dict[str, set[str]] = {}  # environment -> services an earlier deploy stage deployed
    seen_prod = None
    for i, stage in enumerate(stages):
        where = ("stages", i)
        if is_protected(stage) and (approval is None or i < approval):
            problem = ("no approval stage comes before it" if approval is None
                       else f"it comes before the approval stage '{stages[approval].id}'")
            raise Invalid(where + ("environment",), f"stage '{stage.id}': environment: a prod stage must run "
                                                    f"only after a passed approval, but {problem}")
        if stage.environment == "prod" and seen_prod is None:
            seen_prod = stage
        if stage.environment == "staging" and seen_prod is not None:
            raise Invalid(where + ("environment",), f"stage '{stage.id}': environment: staging comes after the "
                                                    f"prod stage '{seen_prod.id}'; staging must pass before prod")
        kind = stage.kind.value
        if kind == "check" and not stage.params.get("url"):  # an explicit url checks no deploy of ours
            env = CHECK_TARGET_ENVIRONMENT.get(str(stage.params.get("target")), stage.environment)
            service = stage.params.get("service")
            if env not in deployed or (service and service not in deployed[env]):
                what = f"service {service!r}" if service else f"anything in {env}"
                raise Invalid(where + ("params", "target"), f"stage '{stage.id}': params.target: no earlier deploy "
                                                            f"stage of {env} deploys {what}; a check comes after "
                                                            "the deploy it checks")
        if kind == "traffic":
            missing = [s for s in stage.params.get("services", ()) if s not in deployed.get(stage.environment, set())]
            if missing:
                raise Invalid(where + ("params", "services"), f"stage '{stage.id}': params.services: "
                                                              f"{', '.join(missing)} not deployed by an earlier deploy "
                                                              f"stage of {stage.environment}")
        if kind == "deploy":
            deployed.setdefault(stage.environment, set()).update(str(s) for s in stage.params.get("services", ()))
