"""The serving pages through Django's test client: the Deploy form on the models page,
a deployment's page and its actions (same checks and messages as the API), and tenancy."""

from __future__ import annotations

import pytest
from django.test import Client

from serving.models import Deployment
from tests.conftest import add_host

pytestmark = pytest.mark.django_db


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_deploy_from_the_models_page_then_scale_and_delete(cast, version):
    add_host("cpu-1", cpu_slots=4)
    bob = browser(cast.bob)
    page = bob.get("/models/")
    assert page.status_code == 200 and b"Deploy" in page.content and b"tiny-v1" in page.content
    made = bob.post(f"/models/versions/{version.pk}/deploy/", {"name": "chat", "replicas": "2"})
    dep = Deployment.objects.get(name="chat")
    assert made.status_code == 302 and made["Location"] == f"/deployments/{dep.pk}/"
    assert (dep.min_replicas, dep.max_replicas) == (2, 2)
    page = bob.get(f"/deployments/{dep.pk}/")
    assert page.status_code == 200
    for text in (b"Playground", b"deploying", b"Created with revision 1", b"Roll out"):
        assert text in page.content, text
    assert b"chat" in bob.get("/deployments/").content
    scaled = bob.post(
        f"/deployments/{dep.pk}/action/",
        {"action": "scale", "min_replicas": "0", "max_replicas": "3"},
        follow=True,
    )
    dep.refresh_from_db()
    assert (dep.min_replicas, dep.max_replicas) == (0, 3) and b"scale requested" in scaled.content
    bad = bob.post(
        f"/deployments/{dep.pk}/action/", {"action": "rollout", "max_batch_size": "0"}, follow=True
    )
    assert b"max_batch_size" in bad.content and dep.revisions.count() == 1
    gone = bob.post(f"/deployments/{dep.pk}/action/", {"action": "delete"}, follow=True)
    assert b"Deleting chat" in gone.content
    assert Deployment.objects.get(pk=dep.pk).state == "DELETING"


def test_bad_deploy_input_is_a_message_and_nothing_is_created(cast, version):
    add_host("cpu-1", cpu_slots=4)
    bob = browser(cast.bob)
    url = f"/models/versions/{version.pk}/deploy/"
    page = bob.post(url, {"name": "Not A Slug", "replicas": "1"}, follow=True)
    assert b"name:" in page.content and b"slug" in page.content
    page = bob.post(url, {"name": "ok", "quantization": "int4"}, follow=True)
    assert b"needs a GPU" in page.content
    assert not Deployment.objects.exists()


def test_other_projects_see_no_page_and_viewers_cannot_change(cast, version):
    add_host("cpu-1", cpu_slots=4)
    browser(cast.bob).post(f"/models/versions/{version.pk}/deploy/", {"name": "chat"})
    dep = Deployment.objects.get(name="chat")
    dave = browser(cast.dave)
    assert dave.get(f"/deployments/{dep.pk}/").status_code == 404
    assert dave.post(f"/deployments/{dep.pk}/action/", {"action": "delete"}).status_code == 404
    assert dave.post(f"/models/versions/{version.pk}/deploy/", {"name": "x"}).status_code == 404
    assert b"tiny" not in dave.get("/models/").content
    carol = browser(cast.carol)
    refused = carol.post(f"/deployments/{dep.pk}/action/", {"action": "delete"}, follow=True)
    assert b"role" in refused.content.lower()
    assert Deployment.objects.get(pk=dep.pk).state != "DELETING"


def test_the_admin_shows_a_deployment_and_deletes_it_through_the_service(cast, version):
    add_host("cpu-1", cpu_slots=4)
    browser(cast.bob).post(f"/models/versions/{version.pk}/deploy/", {"name": "chat"})
    dep = Deployment.objects.get(name="chat")
    olga = browser(cast.olga)
    page = olga.get(f"/admin/serving/deployment/{dep.pk}/change/")
    assert page.status_code == 200 and b"Created with revision 1" in page.content
    done = olga.post(
        "/admin/serving/deployment/",
        {"action": "delete_through_service", "_selected_action": [dep.pk]},
        follow=True,
    )
    assert b"draining, then deleted" in done.content
    assert Deployment.objects.get(pk=dep.pk).state == "DELETING"


def test_the_models_page_creates_uploads_shows_lineage_and_deletes(cast, version, tmp_path):
    import io

    from serving.models import Model, ModelVersion
    from tests.registry.test_registry import hf_dir, tar_of

    add_host("cpu-1", cpu_slots=4)
    bob = browser(cast.bob)
    bob.post("/models/new/", {"name": "uploaded", "project": "alpha"})
    model = Model.objects.get(name="uploaded")
    dup = bob.post("/models/new/", {"name": "uploaded", "project": "alpha"}, follow=True)
    assert b"already" in dup.content and Model.objects.filter(name="uploaded").count() == 1
    archive = io.BytesIO(tar_of(hf_dir(tmp_path / "hf")))
    archive.name = "model.tgz"
    done = bob.post(f"/models/{model.pk}/upload/", {"archive": archive}, follow=True)
    assert b"uploaded v1 registered" in done.content, done.content[:2000]
    pickle = io.BytesIO(tar_of(hf_dir(tmp_path / "bad", extra={"optimizer.pt": b"x"})))
    pickle.name = "bad.tgz"
    refused = bob.post(f"/models/{model.pk}/upload/", {"archive": pickle}, follow=True)
    assert b"Upload to alpha/uploaded" in refused.content and model.versions.count() == 1
    bob.post(f"/models/versions/{version.pk}/deploy/", {"name": "chat"})
    page = bob.get("/models/").content.decode()
    assert '<a href="/deployments/' in page and ">chat</a>" in page  # version -> deployment
    assert f"/api/v1/models/{model.pk}/versions/1/download/" in page
    # Deleting needs a project admin, and a served version is refused (409), not a 500.
    alice = browser(cast.alice)
    busy = alice.post(f"/models/versions/{version.pk}/delete/", follow=True)
    assert b"is served by deployment chat" in busy.content
    Deployment.objects.filter(name="chat").update(state="DELETED")
    alice.post(f"/models/versions/{version.pk}/delete/")
    assert not ModelVersion.objects.filter(pk=version.pk).exists()
    assert not Deployment.objects.filter(name="chat").exists()  # its history went with it
    carol = browser(cast.carol).get("/models/").content.decode()
    assert 'class="fields upload"' not in carol and 'class="fields deploy"' not in carol


def test_the_deploy_forms_prefix_affinity_box_sets_the_flag(cast, version):
    add_host("cpu-1", cpu_slots=4)
    bob = browser(cast.bob)
    assert b'name="prefix_affinity"' in bob.get("/models/").content
    url = f"/models/versions/{version.pk}/deploy/"
    bob.post(url, {"name": "plain"})
    bob.post(url, {"name": "sticky", "prefix_affinity": "on"})
    configs = {
        d.name: d.revisions.get().config
        for d in Deployment.objects.filter(project=version.model.project)
    }
    assert configs["sticky"].get("prefix_affinity") is True
    assert not configs["plain"].get("prefix_affinity")
