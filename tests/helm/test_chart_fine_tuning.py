"""The chart and the OpenAI fine-tuning API: the gateway serves /v1/files and /v1/fine_tuning under the
serving hosts, and its pods can submit to the RayCluster (address, token file) as the control plane does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.helm import Renderer, env_of, one

Doc = dict[str, Any]


def serving_pod(docs: list[Doc]) -> Doc:
    pod: Doc = one(docs, "Deployment", "-serving")["spec"]["template"]["spec"]
    return pod


def ingress_paths(docs: list[Doc]) -> dict[str, list[str]]:
    rules = one(docs, "Ingress")["spec"]["rules"]
    return {rule["host"]: [p["path"] for p in rule["http"]["paths"]] for rule in rules}


def test_gateway_pods_submit_fine_tuning_jobs_to_the_ray_cluster(renderer: Renderer) -> None:
    docs = renderer.docs({})
    pod = serving_pod(docs)
    (gateway,) = pod["containers"]
    env = env_of(gateway)
    assert env["TUNELOOP_FINE_TUNING"] == "scoped" and env["TUNELOOP_FINE_TUNING_MAX_ACTIVE"] == "2"
    assert env["TUNELOOP_FILES_MAX_BYTES"] == str(32 * 2**20)
    cluster = one(docs, "RayCluster")
    assert env["TUNELOOP_RAY_ADDRESS"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert env["TUNELOOP_JOB_REGISTRY_CREDENTIALS"] == "cluster"  # jobs never carry the registry URL
    token_file = Path(env["RAY_AUTH_TOKEN_PATH"])
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(token_file.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert (
        mount["readOnly"] and volume["secret"]["secretName"] == cluster["spec"]["authOptions"]["secretName"]
    )


def test_fine_tuning_off_or_without_a_ray_cluster_leaves_the_routes_refusing(renderer: Renderer) -> None:
    for values in (
        {"serving": {"fineTuning": {"enabled": False}}},
        {"training": {"rayCluster": {"enabled": False}}},
    ):
        (gateway,) = serving_pod(renderer.docs(values))["containers"]
        env = env_of(gateway)
        assert env["TUNELOOP_FINE_TUNING"] == "off", values
        assert "TUNELOOP_RAY_ADDRESS" not in env and "RAY_AUTH_TOKEN_PATH" not in env
        assert all(m["name"] != "ray-auth" for m in gateway["volumeMounts"])


def test_ingress_routes_the_fine_tuning_paths_under_the_same_host(renderer: Renderer) -> None:
    # The default host routes `/`: everything, the fine-tuning API included, goes to the gateway.
    assert ingress_paths(renderer.docs({"serving": {"ingress": {"enabled": True}}})) == {
        "tuneloop.example.com": ["/"]
    }
    narrow = {
        "enabled": True,
        "hosts": [{"host": "llm.example.com", "paths": [{"path": "/v1/chat", "pathType": "Prefix"}]}],
    }
    assert ingress_paths(renderer.docs({"serving": {"ingress": narrow}})) == {
        "llm.example.com": ["/v1/chat", "/v1/files", "/v1/fine_tuning"]
    }
    off = {"serving": {"ingress": narrow, "fineTuning": {"enabled": False}}}
    assert ingress_paths(renderer.docs(off)) == {"llm.example.com": ["/v1/chat"]}
    backends = {
        p["backend"]["service"]["name"]
        for p in one(renderer.docs({"serving": {"ingress": narrow}}), "Ingress")["spec"]["rules"][0]["http"][
            "paths"
        ]
    }
    assert backends == {one(renderer.docs({}), "Service", "-serving")["metadata"]["name"]}
