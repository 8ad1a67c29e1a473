"""What the fake RBG controller does, per released controller version (github.com/sgl-project/rbg), so that the
k8s backend is tested against each behaviour users actually run. docs/rbg-controllers.md tables them, with the
upstream file each one follows.
"""

from __future__ import annotations

from dataclasses import dataclass

OLD_PREFIX = "rolebasedgroup.workloads.x-k8s.io/"  # api/workloads/v1alpha1/constant.go (v0.3 - v0.6)
NEW_PREFIX = "rbg.workloads.x-k8s.io/"  # api/workloads/constants/constants.go RBGPrefix (v0.7+)


@dataclass(frozen=True)
class RbgProfile:
    """One controller version's observable behaviour (every field is something pdlab could trip over)."""

    name: str
    follows: str  # the upstream tag read
    versions: tuple[str, ...]  # RoleBasedGroup versions the CRD serves
    storage: str  # the CRD's storage version
    conversion_webhook: bool  # other versions are converted by the controller's webhook (it can be down)
    name_label: str  # the group label on workloads, pods and the selector of the headless Service
    role_label: str
    compatible_service_name: bool  # `s-<group>-<role>` unless a Service `<group>-<role>` exists
    observed_generation: bool  # status.observedGeneration written
    updated_replicas: bool  # roleStatuses[].updatedReplicas written (and only refreshed with replicas/ready)
    dependency_event: bool  # a Warning DependencyNotMet event on the RBG while a dependency is not ready
    status_first: bool  # status is written from the workloads before roles are reconciled (each pass)
    ready_needs_spec_replicas: bool  # Ready also needs the role's desired replicas == workload replicas
    v1alpha2_workload: str  # "StatefulSet" or "RoleInstanceSet" for groups created as v1alpha2
    controller: str  # the event source component

    @property
    def ready_reason(self) -> tuple[str, str]:
        return "AllRolesReady", "RoleNotReady"


PROFILES: dict[str, RbgProfile] = {
    "v0.4": RbgProfile(
        name="v0.4", follows="v0.4.0", versions=("v1alpha1",), storage="v1alpha1", conversion_webhook=False,
        name_label=OLD_PREFIX + "name", role_label=OLD_PREFIX + "role", compatible_service_name=False,
        observed_generation=False, updated_replicas=False, dependency_event=False, status_first=False,
        ready_needs_spec_replicas=False, v1alpha2_workload="StatefulSet", controller="rolebasedgroup-controller"),
    "v0.6": RbgProfile(
        name="v0.6", follows="v0.6.0", versions=("v1alpha1",), storage="v1alpha1", conversion_webhook=False,
        name_label=OLD_PREFIX + "name", role_label=OLD_PREFIX + "role", compatible_service_name=True,
        observed_generation=True, updated_replicas=True, dependency_event=True, status_first=True,
        ready_needs_spec_replicas=True, v1alpha2_workload="StatefulSet", controller="rolebasedgroup-controller"),
    "v0.8": RbgProfile(
        name="v0.8", follows="v0.8.0-alpha.5", versions=("v1alpha1", "v1alpha2"), storage="v1alpha2",
        conversion_webhook=True, name_label=NEW_PREFIX + "group-name", role_label=NEW_PREFIX + "role-name",
        compatible_service_name=True, observed_generation=True, updated_replicas=True, dependency_event=True,
        status_first=True, ready_needs_spec_replicas=True, v1alpha2_workload="RoleInstanceSet",
        controller="rbg-controller"),
}
DEFAULT = "v0.8"

# behaviour → upstream file(s) it follows, for docs/rbg-controllers.md (paths at the profile's tag)
SOURCES: dict[str, str] = {
    "labels": "api/workloads/v1alpha1/constant.go (v0.4, v0.6); api/workloads/constants/{constants,label}.go (v0.8)",
    "service naming": "pkg/reconciler/sts_reconciler.go (v0.4); pkg/utils/service_utils.go "
                      "GetCompatibleHeadlessServiceName (v0.6, v0.8)",
    "service ownership": "sts_reconciler.go constructServiceApplyConfiguration (v0.4); "
                         "pkg/reconciler/svc_reconciler.go (v0.6, v0.8): owner = workload, no ports",
    "status": "internal/controller/workloads/rolebasedgroup_controller.go updateRBGStatus",
    "role status": "pkg/reconciler/sts_reconciler.go ConstructRoleStatus; pkg/reconciler/common.go (v0.8)",
    "dependencies": "pkg/dependency/dependency.go CheckDependencyReady + the workload's CheckWorkloadReady",
    "events": "internal/controller/workloads/event.go",
    "workloads": "pkg/reconciler/sts_reconciler.go; pkg/reconciler/roleinstanceset_reconciler.go (v0.8, v1alpha2)",
    "pod naming": "pkg/reconciler/roleinstance/utils/instance_utils.go FormatComponentPodName, "
                  "roleinstance/core/instance_core.go setComponentPodIdentity (v0.8)",
    "CRD versions": "config/crd/bases/workloads.x-k8s.io_rolebasedgroups.yaml; "
                    "config/crd/patches/webhook_in_rolebasedgroups.yaml (v0.8)",
}


def profile(name: str | None) -> RbgProfile:
    """The profile called `name` (None: the newest); an unknown name fails with the known ones."""
    key = name or DEFAULT
    if key not in PROFILES:
        raise ValueError(f"unknown RBG controller profile '{key}': use one of {', '.join(PROFILES)}")
    return PROFILES[key]


def conversion_failure(service: str = "rbgs-webhook-service.rbgs-system.svc") -> str:
    """The API server's message when the RBG conversion webhook cannot be reached."""
    return (f'conversion webhook for workloads.x-k8s.io/v1alpha2, Kind=RoleBasedGroup failed: Post '
            f'"https://{service}:443/convert?timeout=30s": dial tcp 10.96.112.9:443: connect: connection refused')
