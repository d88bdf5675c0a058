"""What the chart's objects say: serving pods, storage, security, Ray, examples, monitors, NOTES.

Every object comes from the session's renders of helpers/chart_values.py's value sets (the
`rendered` fixture in conftest.py); test_chart.py validates the same objects.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers.chart_values import EXAMPLE_DATA, VALUE_SETS
from helpers.helm import (
    HELM,
    NO_HELM,
    RELEASE,
    REPO,
    Doc,
    Renderer,
    by_kind,
    containers,
    env_of,
    one,
    pod_specs,
    ray_pods,
    render_notes,
    unique_docs,
)

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)

# -- what the objects say -------------------------------------------------------------------------


def test_serving_pods_run_gateway_and_engine_in_one_container(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default"]
    deployment = one(docs, "Deployment", "-serving")
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["command"] == [
        "tuneloop",
        "serve",
        "--model",
        "smollm2-135m",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    env = env_of(gateway)
    assert env["TUNELOOP_ALLOW_REMOTE_BIND"] == "1"
    assert env["TUNELOOP_ENGINE_PORT"] == "8100"
    assert env["TUNELOOP_METRICS_PUBLIC"] == "0"
    assert env["TUNELOOP_DB_URL"] == {"secretKeyRef": {"name": f"{RELEASE}-tuneloop-db", "key": "url"}}
    assert gateway["image"] == "ghcr.io/tuneloop/tuneloop:0.1.0-gpu"
    assert [p["containerPort"] for p in gateway["ports"]] == [8000]  # the engine port never leaves the pod
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/cache"]]
    assert env["TUNELOOP_MODELS_DIR"].startswith("/cache/")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]

    service = one(docs, "Service", "-serving")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8000, "http")]
    exposed = [
        p.get("containerPort")
        for d in docs
        for pod in pod_specs(d)
        for c in containers(pod)
        for p in c.get("ports", [])
    ]
    exposed += [p["port"] for s in by_kind(docs, "Service") for p in s["spec"]["ports"]]
    assert 8100 not in exposed


def test_gpu_off_runs_the_cpu_image_without_gpu_requests(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu-off"]
    (gateway,) = one(docs, "Deployment", "-serving")["spec"]["template"]["spec"]["containers"]
    assert gateway["image"] == "ghcr.io/tuneloop/tuneloop:0.1.0"
    assert "nvidia.com/gpu" not in json.dumps(docs)


def test_serving_scales_with_an_hpa_instead_of_replicas(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["everything-on"]
    assert "replicas" not in one(docs, "Deployment", "-serving")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-tuneloop-serving"
    assert hpa["spec"]["metrics"][0]["type"] == "Pods"
    (gateway,) = one(docs, "Deployment", "-serving")["spec"]["template"]["spec"]["containers"]
    env = env_of(gateway)
    assert env["TUNELOOP_ENGINE_MAX_MODEL_LEN"] == "4096"
    assert env["TUNELOOP_ENGINE_KV_CACHE_BYTES"] == "4294967296"
    assert env["TUNELOOP_METRICS_PUBLIC"] == "1"


def test_control_plane_is_one_replica_that_submits_to_the_ray_cluster(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default"]
    deployment = one(docs, "Deployment", "-control")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    (control,) = pod["containers"]
    assert control["command"] == ["tuneloop", "control", "--host", "0.0.0.0", "--port", "8080"]
    env = env_of(control)
    cluster = one(docs, "RayCluster")["metadata"]["name"]
    assert env["TUNELOOP_RAY_ADDRESS"] == f"http://{cluster}-head-svc:8265"
    token_file = Path(env["RAY_AUTH_TOKEN_PATH"])
    (mount,) = [m for m in control["volumeMounts"] if m["mountPath"] == str(token_file.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == one(docs, "RayCluster")["spec"]["authOptions"]["secretName"]
    assert one(docs, "Service", "-control")["spec"]["ports"][0]["port"] == 8080
    control_off = one(rendered["everything-off"], "Deployment", "-control")
    assert "TUNELOOP_RAY_ADDRESS" not in env_of(control_off["spec"]["template"]["spec"]["containers"][0])


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["everything-on"]
    job = one(docs, "Job", "-db-upgrade")
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["tuneloop", "db", "upgrade"]
    # A hook runs before the release's own objects exist: nothing of the chart but the DB Secret.
    assert "serviceAccountName" not in pod
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    secret = one(docs, "Secret", "-db")
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(hooks["helm.sh/hook-weight"])
    assert (
        env_of(pod["containers"][0])["TUNELOOP_DB_URL"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    )


def _tuneloop_containers(docs: list[Doc]) -> list[tuple[str, Doc, Doc]]:
    """(object name, pod, container) of every container that runs tuneloop with its state env."""
    out = []
    for doc in docs:
        for pod in pod_specs(doc):
            for c in containers(pod):
                if "TUNELOOP_ARTIFACTS" in env_of(c):
                    out.append((doc["metadata"]["name"], pod, c))
    return out


def test_s3_storage_environment(rendered: dict[str, list[Doc]]) -> None:
    found = _tuneloop_containers(rendered["s3-storage"])
    assert len({name for name, _, _ in found}) >= 3  # serving, control, Ray
    for name, _, container in found:
        env = env_of(container)
        assert env["TUNELOOP_ARTIFACTS"] == "s3://team-bucket/tuneloop", name
        assert env["AWS_ENDPOINT_URL"] == "http://minio.storage.svc:9000", name
        assert env["AWS_DEFAULT_REGION"] == "us-east-1"
        assert env["AWS_ACCESS_KEY_ID"] == {
            "secretKeyRef": {"name": "tuneloop-s3", "key": "AWS_ACCESS_KEY_ID"}
        }
        assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "tuneloop-s3"
    # No keys configured: none passed (workload identity through the ServiceAccount).
    assert all("AWS_ACCESS_KEY_ID" not in env_of(c) for _, _, c in _tuneloop_containers(rendered["default"]))


def test_every_tuneloop_pod_shares_one_capture_store(
    rendered: dict[str, list[Doc]], renderer: Renderer
) -> None:
    # Serving replicas and the control plane read and write the same captured requests and feedback
    # (tests/helm/test_chart_topology.py runs it): by default the registry's database, from its Secret.
    found = _tuneloop_containers(rendered["default"])
    assert {"tl-tuneloop-serving", "tl-tuneloop-control"} <= {name for name, _, _ in found}
    for name, _, container in found:
        env = env_of(container)
        assert env["TUNELOOP_CAPTURE_DB_URL"] == env["TUNELOOP_DB_URL"], name
    own = {"database": {"capture": {"secretName": "capture-db", "secretKey": "dsn"}}}
    for name, _, container in _tuneloop_containers(renderer.docs(own)):
        assert env_of(container)["TUNELOOP_CAPTURE_DB_URL"] == {
            "secretKeyRef": {"name": "capture-db", "key": "dsn"}
        }, name


@pytest.mark.parametrize(
    ("value_set", "claim"),
    [("volume-storage", f"{RELEASE}-tuneloop-artifacts"), ("existing-claims", "shared-artifacts")],
)
def test_volume_storage_mounts_one_read_write_many_claim(
    rendered: dict[str, list[Doc]], value_set: str, claim: str
) -> None:
    docs = rendered[value_set]
    found = _tuneloop_containers(docs)
    assert {n for n, _, _ in found} >= {
        f"{RELEASE}-tuneloop-serving",
        f"{RELEASE}-tuneloop-control",
        f"{RELEASE}-tuneloop-ray",
    }
    for name, pod, container in found:
        assert env_of(container)["TUNELOOP_ARTIFACTS"] == "/artifacts"
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/artifacts"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim, name
    claims = by_kind(docs, "PersistentVolumeClaim")
    if value_set == "volume-storage":
        (pvc,) = claims
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "nfs"
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert claims == []


def test_every_pod_runs_non_root_with_a_read_only_root_and_no_capabilities(
    rendered: dict[str, list[Doc]],
) -> None:
    pods = 0
    for set_name, doc in unique_docs(rendered):
        for pod in pod_specs(doc):
            pods += 1
            assert pod["securityContext"]["runAsNonRoot"] is True, f"[{set_name}] {doc['metadata']['name']}"
            # KubeRay's autoscaler sidecar needs the head's token; every other pod goes without.
            assert pod.get("automountServiceAccountToken") is False or doc["kind"] in ("RayCluster", "RayJob")
            for c in containers(pod):
                ctx = c["securityContext"]
                where = f"[{set_name}] {doc['kind']} {doc['metadata']['name']} / {c['name']}"
                assert ctx["readOnlyRootFilesystem"] is True, where
                assert ctx["allowPrivilegeEscalation"] is False, where
                assert ctx["capabilities"]["drop"] == ["ALL"], where
                # With a read-only root, HOME and /tmp must be writable volumes.
                mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert {"/tmp", "/home/tuneloop"} <= mounted, where
    assert pods > 10


def test_network_policies_close_the_engine_and_keep_ray_inside_the_namespace(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["default"]
    serving = one(docs, "NetworkPolicy", "-serving")
    (rule,) = serving["spec"]["ingress"]
    assert rule["ports"] == [
        {"port": "http", "protocol": "TCP"}
    ]  # the gateway only; the engine is on loopback
    assert "from" not in rule  # the public API: anyone may call it, keys guard it
    assert serving["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "serving"

    ray = one(docs, "NetworkPolicy", "-ray")
    namespace_only, operator = ray["spec"]["ingress"]
    assert namespace_only == {"from": [{"podSelector": {}}]}  # same namespace, every port
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]
    assert all("namespaceSelector" in peer for peer in operator["from"])
    ray_pod_labels = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert ray["spec"]["podSelector"]["matchLabels"].items() <= ray_pod_labels.items()

    control = one(docs, "NetworkPolicy", "-control")
    (rule,) = control["spec"]["ingress"]
    assert {"podSelector": {}} in rule["from"] and rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    restricted = one(rendered["everything-on"], "NetworkPolicy", "-serving")
    assert restricted["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}
    ]


def test_ray_cluster_has_head_cpu_and_gpu_groups(rendered: dict[str, list[Doc]]) -> None:
    cluster = one(rendered["default"], "RayCluster")["spec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["cpu", "gpu"]
    gpu = cluster["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    assert gpu["image"].endswith("-gpu") and gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "TUNELOOP_DB_URL" in env_of(head["containers"][0])  # `tuneloop train` publishes to the registry
    assert [g["groupName"] for g in one(rendered["gpu-off"], "RayCluster")["spec"]["workerGroupSpecs"]] == [
        "cpu"
    ]
    # With Ray's autoscaler, KubeRay gives the head its own ServiceAccount with the RBAC it needs.
    autoscaled = one(rendered["everything-on"], "RayCluster")["spec"]
    assert "serviceAccountName" not in autoscaled["headGroupSpec"]["template"]["spec"]
    assert autoscaled["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] is True


def test_example_ray_job_trains_on_its_config_map(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["everything-on"]
    job = one(docs, "RayJob")
    assert job["spec"]["entrypoint"] == "tuneloop train /etc/tuneloop/job/job.yaml"
    config = one(docs, "ConfigMap", "-train")
    spec = yaml.safe_load(config["data"]["job.yaml"])
    assert spec["data"]["train"] == "train.jsonl" and config["data"]["train.jsonl"] == EXAMPLE_DATA
    assert config["data"]["job.yaml"].startswith("# Run by the RayJob")
    for pod in ray_pods(job["spec"]["rayClusterSpec"]):
        (volume,) = [v for v in pod["volumes"] if v.get("configMap")]
        assert volume["configMap"]["name"] == config["metadata"]["name"]
        assert {"name": volume["name"], "mountPath": "/etc/tuneloop/job", "readOnly": True} in pod[
            "containers"
        ][0]["volumeMounts"]
    assert len(job["metadata"]["name"]) <= 47


def test_example_ray_job_refuses_a_data_file_it_does_not_carry(renderer: Renderer) -> None:
    proc = renderer.result({"training": {"exampleJob": {"enabled": True}}})
    assert proc.returncode != 0
    assert "training.exampleJob.files" in proc.stderr and "train.jsonl" in proc.stderr


def test_evaluation_cronjob_runs_tuneloop_eval_run(rendered: dict[str, list[Doc]]) -> None:
    cron = one(rendered["everything-on"], "CronJob")
    assert cron["spec"]["timeZone"] == "Europe/Paris" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = pod_specs(cron)[0]["containers"]
    assert container["command"] == ["tuneloop", "eval", "run", "--suite", "golden"]


def test_service_monitors_scrape_gateway_engine_and_control_plane(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default"]
    monitors = {
        m["metadata"]["name"].removeprefix(f"{RELEASE}-tuneloop-"): m for m in by_kind(docs, "ServiceMonitor")
    }
    assert set(monitors) == {"gateway", "engine", "control"}
    serving_labels = one(docs, "Service", "-serving")["metadata"]["labels"]
    control_labels = one(docs, "Service", "-control")["metadata"]["labels"]
    expected = {
        "gateway": ("/metrics", serving_labels),
        "engine": ("/metrics/engine", serving_labels),
        "control": ("/metrics", control_labels),
    }
    jobs = set()
    for name, (path, labels) in expected.items():
        spec = monitors[name]["spec"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        (endpoint,) = spec["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == ("http", path)
        jobs.add(endpoint["relabelings"][0]["replacement"])
        if name != "control":  # the gateway's metrics need an admin key unless made public
            assert endpoint["authorization"]["credentials"] == {
                "name": f"{RELEASE}-tuneloop-metrics-key",
                "key": "api-key",
            }
    assert len(jobs) == 3  # gateway and engine share a target: distinct job labels keep their series apart


# -- NOTES ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", ["default", "everything-on", "everything-off"])
def test_notes_tell_how_to_call_the_endpoint_and_submit_training(tmp_path: Path, value_set: str) -> None:
    notes = render_notes(tmp_path, VALUE_SETS[value_set])
    assert 'OpenAI(base_url="http://127.0.0.1:8000/v1"' in notes
    assert "kubectl -n ml port-forward svc/tl-tuneloop-serving 8000:8000" in notes
    assert "exec deploy/tl-tuneloop-control -- tuneloop keys create --admin" in notes
    if value_set == "everything-off":
        assert "ray job submit" not in notes and "kuberay" not in notes
    else:
        assert "helm repo add kuberay https://ray-project.github.io/kuberay-helm/" in notes
        assert "helm install kuberay-operator kuberay/kuberay-operator" in notes
        assert "ray job submit --address http://127.0.0.1:8265" in notes
        assert "port-forward svc/tl-tuneloop-ray-head-svc 8265:8265" in notes
    if value_set == "everything-on":
        assert "kubectl -n ml get rayjob tl-tuneloop-train" in notes
        assert "at http://tuneloop.example.com/v1" in notes
    assert ("helm get values tl" in notes) == bool(VALUE_SETS[value_set].get("database", {}).get("url"))


def test_notes_warn_that_a_database_url_value_keeps_its_password_in_the_release(tmp_path: Path) -> None:
    values = {**VALUE_SETS["default"], "database": {"url": "postgresql://u:hunter2@db/t"}}
    notes = render_notes(tmp_path, values)
    assert "WARNING: database.url" in notes and "helm get values tl" in notes and "hunter2" not in notes


def test_helm_installer_is_idempotent() -> None:
    """scripts/install-helm.sh does nothing, quickly, when helm is already in place."""
    if str(REPO / ".venv" / "bin" / "helm") != HELM:
        pytest.skip(f"helm comes from {HELM}, not from scripts/install-helm.sh")
    started = time.monotonic()
    proc = subprocess.run([REPO / "scripts" / "install-helm.sh"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert time.monotonic() - started < 5


def test_evaluation_reaches_the_gateway_with_the_admin_key(rendered: dict[str, list[Doc]]) -> None:
    """The suites call the serving Service with an admin key; with CronJobs on, the control plane's
    own scheduler is switched off so the suites do not run twice."""
    docs = rendered["everything-on"]
    cron = one(docs, "CronJob")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    control = one(docs, "Deployment", "-control")["spec"]["template"]["spec"]["containers"][0]
    service = one(docs, "Service", "-serving")["metadata"]["name"]
    for env in (env_of(container), env_of(control)):
        assert env["TUNELOOP_GATEWAY_URL"] == f"http://{service}:8000"
        assert env["TUNELOOP_EVAL_KEY"]["secretKeyRef"]["name"].endswith("-metrics-key")
    assert env_of(control)["TUNELOOP_SCHEDULER"] == "off"
    default_control = one(rendered["default"], "Deployment", "-control")["spec"]["template"]["spec"]
    assert "TUNELOOP_SCHEDULER" not in env_of(default_control["containers"][0])
