"""The control API's token in the chart: one Secret, mounted into the control plane as the file
TUNELOOP_CONTROL_TOKEN_FILE names, and the same Secret as Alertmanager's bearer credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from helpers.helm import (
    HELM,
    NO_HELM,
    RELEASE,
    Doc,
    Renderer,
    by_kind,
    env_of,
    one,
    render_notes,
)

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)
FULL = f"{RELEASE}-tuneloop"


def _control_token_mount(docs: list[Doc]) -> tuple[str, str]:
    """(Secret name, key) the control container reads its token from, following env -> mount -> volume."""
    pod = one(docs, "Deployment", "-control")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    token_path = env_of(container)["TUNELOOP_CONTROL_TOKEN_FILE"]
    folder, _, file_name = token_path.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == file_name]
    return volume["secret"]["secretName"], item["key"]


def test_the_control_plane_reads_its_token_from_a_generated_secret(renderer: Renderer) -> None:
    docs = renderer.docs({})
    name, key = _control_token_mount(docs)
    secret = one(docs, "Secret", "-control-token")
    assert (name, key) == (secret["metadata"]["name"], "token") == (f"{FULL}-control-token", "token")
    assert len(secret["data"]["token"]) >= 48
    kubernetes_validate.validate(secret, "1.33", strict=True)
    assert not by_kind(docs, "AlertmanagerConfig")  # off by default: the CRD is a prerequisite


def test_an_existing_secret_is_used_and_none_is_made(renderer: Renderer) -> None:
    values = {"control": {"auth": {"existingSecret": "ops-control", "secretKey": "bearer"}}}
    docs = renderer.docs(values)
    assert _control_token_mount(docs) == ("ops-control", "bearer")
    assert not [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-control-token")]


@pytest.mark.parametrize("auth", [{}, {"existingSecret": "ops-control", "secretKey": "bearer"}])
def test_alertmanager_sends_the_control_token_to_the_webhook(
    renderer: Renderer, auth: dict[str, Any]
) -> None:
    values = {"control": {"auth": auth}, "monitoring": {"alertmanagerConfig": {"enabled": True}}}
    docs = renderer.docs(values)
    config = one(docs, "AlertmanagerConfig")
    assert config["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    spec = config["spec"]
    (receiver,) = spec["receivers"]
    assert spec["route"]["receiver"] == receiver["name"]
    assert spec["route"]["matchers"] == [{"name": "alias", "matchType": "=~", "value": ".+"}]
    (webhook,) = receiver["webhookConfigs"]
    service = one(docs, "Service", "-control")
    (port,) = service["spec"]["ports"]
    assert webhook["url"] == f"http://{service['metadata']['name']}:{port['port']}/v1/alerts"
    authorization = webhook["httpConfig"]["authorization"]
    assert authorization["type"] == "Bearer"
    credentials = authorization["credentials"]
    assert (credentials["name"], credentials["key"]) == _control_token_mount(docs)


def test_jobs_from_the_control_plane_leave_the_registry_url_to_the_cluster(renderer: Renderer) -> None:
    """The RayCluster's pods have TUNELOOP_DB_URL from the database Secret, so the control plane's
    submissions put no registry URL (nor its password) in a job's runtime env."""
    docs = renderer.docs({})
    (control,) = one(docs, "Deployment", "-control")["spec"]["template"]["spec"]["containers"]
    assert env_of(control)["TUNELOOP_JOB_REGISTRY_CREDENTIALS"] == "cluster"
    database = env_of(control)["TUNELOOP_DB_URL"]
    head = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert env_of(head)["TUNELOOP_DB_URL"] == database  # the same Secret and key


@pytest.mark.parametrize("alertmanager", [False, True])
def test_notes_say_where_the_webhook_token_is(tmp_path: Path, alertmanager: bool) -> None:
    notes = render_notes(tmp_path, {"monitoring": {"alertmanagerConfig": {"enabled": alertmanager}}})
    assert "http://tl-tuneloop-control.ml.svc:8080/v1/alerts" in notes
    assert "Secret tl-tuneloop-control-token (key token)" in notes
    assert ("AlertmanagerConfig tl-tuneloop-control routes" in notes) is alertmanager
