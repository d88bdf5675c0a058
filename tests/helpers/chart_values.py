"""The value sets and optional features the chart tests render: each object is validated in all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.helm import (
    CHART,
    Doc,
    Values,
    by_kind,
    named,
    pod_specs,
)

# Helm's longest release name: every derived name must still be a valid Kubernetes name.
LONG_RELEASE = "a-release-name-of-fifty-three-characters-for-the-test"

# -- the value sets every rendered object is validated in

EXAMPLE_DATA = (
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
)

VALUE_SETS: dict[str, Values] = {
    "default": {},
    "gpu-off": {"gpu": {"enabled": False}},
    "s3-storage": {
        "artifacts": {
            "type": "s3",
            "s3": {
                "url": "s3://team-bucket/tuneloop",
                "endpointUrl": "http://minio.storage.svc:9000",
                "region": "us-east-1",
                "credentials": {"secretName": "tuneloop-s3"},
            },
        }
    },
    "volume-storage": {"artifacts": {"type": "volume", "volume": {"storageClassName": "nfs", "size": "1Ti"}}},
    "existing-claims": {
        "artifacts": {"type": "volume", "volume": {"existingClaim": "shared-artifacts"}},
        "models": {"cache": {"existingClaim": "model-cache"}},
    },
    "ingress-on": {
        "serving": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"},
                "tls": [{"hosts": ["tuneloop.example.com"], "secretName": "tuneloop-tls"}],
            }
        }
    },
    "monitoring-off": {
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "dashboards": {"enabled": False},
        }
    },
    "everything-on": {
        "database": {"url": "postgresql+psycopg://tuneloop:secret@postgres:5432/tuneloop"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/tuneloop"}},
        "imagePullSecrets": [{"name": "registry"}],
        "extraEnv": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "serving": {
            "metricsPublic": True,
            "engine": {
                "maxModelLen": 4096,
                "dtype": "bfloat16",
                "maxLoraRank": 64,
                "startTimeoutSeconds": 600,
            },
            "maxInFlight": 128,
            "ingress": {"enabled": True},
            "autoscaling": {
                "enabled": True,
                "metrics": [
                    {
                        "type": "Pods",
                        "pods": {
                            "metric": {"name": "tuneloop_requests_in_flight"},
                            "target": {"type": "AverageValue", "averageValue": "8"},
                        },
                    }
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
            },
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
                        ]
                    }
                }
            },
        },
        "gpu": {"nodeSelector": {"nvidia.com/gpu.present": "true"}},
        "evaluation": {
            "schedule": {"external": True, "timeZone": "Europe/Paris"},
            "extraArgs": ["--suite", "golden"],
        },
        "training": {
            "rayCluster": {"autoscaling": {"enabled": True}},
            "exampleJob": {"enabled": True, "files": {"train.jsonl": EXAMPLE_DATA}},
        },
        "monitoring": {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}}},
        "networkPolicy": {"servingFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}]},
    },
    "everything-off": {
        "gpu": {"enabled": False},
        "serviceAccount": {"create": False},
        "database": {"migrations": {"enabled": False}},
        "models": {"pull": {"enabled": False}},
        "serving": {"podDisruptionBudget": {"enabled": False}},
        "training": {"rayCluster": {"enabled": False}},
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "dashboards": {"enabled": False},
        },
        "networkPolicy": {"enabled": False},
    },
}


# -- each optional feature: on, it renders; off, nothing


@dataclass(frozen=True)
class Feature:
    id: str
    on: Values
    off: Values
    select: Callable[[list[Doc]], list[Any]]
    needs_monitoring_files: bool = False

    def chart(self, monitoring_chart: Path) -> Path:
        return monitoring_chart if self.needs_monitoring_files else CHART


def _serving_gpus(docs: list[Doc]) -> list[Any]:
    (deployment,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-serving")]
    (gateway,) = deployment["spec"]["template"]["spec"]["containers"]
    return [v for k, v in gateway["resources"].get("limits", {}).items() if k == "nvidia.com/gpu"]


def _worker_group(name: str) -> Callable[[list[Doc]], list[Any]]:
    return lambda docs: [
        g
        for c in by_kind(docs, "RayCluster")
        for g in c["spec"]["workerGroupSpecs"]
        if g["groupName"] == name
    ]


def _init_containers(docs: list[Doc]) -> list[Any]:
    return [c for d in docs for pod in pod_specs(d) for c in pod.get("initContainers", [])]


def _ray_auth(docs: list[Doc]) -> list[Any]:
    clusters = by_kind(docs, "RayCluster")
    return named("Secret", "-ray-auth")(docs) + [
        c["spec"]["authOptions"] for c in clusters if "authOptions" in c["spec"]
    ]


def _ray_autoscaling(docs: list[Doc]) -> list[Any]:
    return [c for c in by_kind(docs, "RayCluster") if c["spec"]["enableInTreeAutoscaling"]]


def _created_artifacts_claim(docs: list[Doc]) -> list[Any]:
    return named("PersistentVolumeClaim", "-artifacts")(docs)


def _metrics_auth(docs: list[Doc]) -> list[Any]:
    return [
        e["authorization"]
        for m in by_kind(docs, "ServiceMonitor")
        for e in m["spec"]["endpoints"]
        if "authorization" in e
    ]


MONITORING_OFF = VALUE_SETS["monitoring-off"]
FEATURES = [
    Feature("gpu", {}, {"gpu": {"enabled": False}}, lambda d: _serving_gpus(d) + _worker_group("gpu")(d)),
    Feature("hpa", {"serving": {"autoscaling": {"enabled": True}}}, {}, named("HorizontalPodAutoscaler")),
    Feature(
        "pdb", {}, {"serving": {"podDisruptionBudget": {"enabled": False}}}, named("PodDisruptionBudget")
    ),
    Feature("ingress", {"serving": {"ingress": {"enabled": True}}}, {}, named("Ingress")),
    Feature("service-account", {}, {"serviceAccount": {"create": False}}, named("ServiceAccount")),
    Feature("migrations", {}, {"database": {"migrations": {"enabled": False}}}, named("Job", "-db-upgrade")),
    Feature(
        "database-secret",
        {"database": {"url": "postgresql+psycopg://u:p@db/tuneloop"}},
        {},
        named("Secret", "-db"),
    ),
    Feature("artifacts-claim", {"artifacts": {"type": "volume"}}, {}, _created_artifacts_claim),
    Feature(
        "artifacts-existing-claim",
        {"artifacts": {"type": "volume"}},
        {"artifacts": {"type": "volume", "volume": {"existingClaim": "mine"}}},
        _created_artifacts_claim,
    ),
    Feature("model-pull", {}, {"models": {"pull": {"enabled": False}}}, _init_containers),
    Feature("ray-cluster", {}, {"training": {"rayCluster": {"enabled": False}}}, named("RayCluster")),
    Feature("ray-auth", {}, {"training": {"rayCluster": {"auth": {"enabled": False}}}}, _ray_auth),
    Feature(
        "ray-autoscaling",
        {"training": {"rayCluster": {"autoscaling": {"enabled": True}}}},
        {},
        _ray_autoscaling,
    ),
    Feature(
        "ray-cpu-workers",
        {},
        {"training": {"rayCluster": {"cpuWorkers": {"enabled": False}}}},
        _worker_group("cpu"),
    ),
    Feature(
        "ray-gpu-workers",
        {},
        {"training": {"rayCluster": {"gpuWorkers": {"enabled": False}}}},
        _worker_group("gpu"),
    ),
    Feature(
        "example-ray-job",
        {"training": {"exampleJob": {"enabled": True, "files": {"train.jsonl": EXAMPLE_DATA}}}},
        {},
        lambda d: named("RayJob")(d) + named("ConfigMap", "-train")(d),
    ),
    Feature("evaluation-cronjob", {"evaluation": {"schedule": {"external": True}}}, {}, named("CronJob")),
    Feature("service-monitors", {}, MONITORING_OFF, named("ServiceMonitor")),
    Feature("metrics-key", {}, {"serving": {"metricsPublic": True}}, _metrics_auth),
    Feature("prometheus-rule", {}, MONITORING_OFF, named("PrometheusRule"), needs_monitoring_files=True),
    Feature("dashboards", {}, MONITORING_OFF, named("ConfigMap", "-dashboards"), needs_monitoring_files=True),
    Feature("network-policies", {}, {"networkPolicy": {"enabled": False}}, named("NetworkPolicy")),
]
