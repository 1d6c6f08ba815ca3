"""The version page of a text-generation version: the chat playground and its snippets."""

from __future__ import annotations

import ast
import json
import re
import shlex
from html import unescape
from typing import Any

import pytest
from django.urls import reverse

from registry import services
from registry.models import ModelVersion
from registry.text_tasks import TextTask
from registry.views import _snippets

pytestmark = pytest.mark.django_db


@pytest.fixture
def generative(ready_version: Any) -> ModelVersion:
    """A ready version marked text-generation (the page reads only its task, fields and validation)."""
    made = ready_version()
    ModelVersion.objects.filter(pk=made.pk).update(task=TextTask.TEXT_GENERATION, max_tokens_default=40,
                                                   max_tokens_limit=300)  # fmt: skip
    made.refresh_from_db()
    return made


def page(client: Any, owner: Any, version: ModelVersion) -> str:
    client.force_login(owner)
    response = client.get(reverse("registry:version-detail", args=[version.model.name, version.version]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_text_generation_version_page_has_the_chat_playground(client, owner, generative):
    html = page(client, owner, generative)
    chat_url = reverse("inference:playground-chat", args=["iris", generative.version])
    assert f'id="chat" data-chat-url="{chat_url}"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    for control in ("chat-input", "chat-send", "chat-stop", "chat-temperature"):
        assert f'id="{control}"' in html, control
    # The version's own max_tokens default and limit.
    assert re.search(r'id="chat-max-tokens"[^>]*max="300"[^>]*value="40"', html)
    # Its script is a file of the portal (CSP: no inline script), and no other try-it form is shown.
    assert "registry/chat.js" in html and "<script>" not in html
    assert 'id="try-it-form"' not in html and 'id="try-it-text-form"' not in html
    assert 'id="chat-no-template"' not in html


def test_a_model_without_a_chat_template_is_flagged_on_its_playground(client, owner, generative):
    ModelVersion.objects.filter(pk=generative.pk).update(validation={**generative.validation, "chat_template": False})
    generative.refresh_from_db()
    assert 'id="chat-no-template"' in page(client, owner, generative)


def test_the_portal_limits_apply_when_the_version_sets_none(client, owner, generative, settings):
    ModelVersion.objects.filter(pk=generative.pk).update(max_tokens_default=None, max_tokens_limit=None)
    settings.GENERATION_MAX_TOKENS_DEFAULT, settings.GENERATION_MAX_TOKENS_LIMIT = 64, 512
    generative.refresh_from_db()
    assert re.search(r'id="chat-max-tokens"[^>]*max="512"[^>]*value="64"', page(client, owner, generative))


def test_other_versions_have_no_playground(client, owner, ready_version):
    html = page(client, owner, ready_version())
    assert 'id="chat"' not in html and "registry/chat.js" not in html


def test_the_generation_snippets_stream_a_chat_completion_of_this_version(generative):
    snippets = _snippets(generative, "http://portal.test")
    assert set(snippets) == {"curl", "openai"}
    argv = shlex.split(snippets["curl"].replace("\\\n", " "))
    assert argv[:3] == ["curl", "-sN", "http://portal.test/v1/chat/completions"]
    assert "Authorization: Bearer $MAAS_TOKEN" in argv
    body = json.loads(argv[argv.index("-d") + 1])
    assert body["model"] == "iris:1" and body["stream"] is True and body["messages"][0]["role"] == "user"

    tree = ast.parse(snippets["openai"])
    calls = {ast.unparse(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
    client = calls["OpenAI"]
    assert {k.arg: ast.literal_eval(k.value) for k in client.keywords if k.arg == "base_url"} == {
        "base_url": "http://portal.test/v1"
    }
    create = {k.arg: k.value for k in calls["client.chat.completions.create"].keywords}
    assert ast.literal_eval(create["model"]) == "iris:1" and ast.literal_eval(create["stream"]) is True
    assert 'os.environ["MAAS_TOKEN"]' in snippets["openai"]


def test_the_snippets_name_the_model_alone_once_the_version_is_production(owner, generative):
    services.alias_set(actor=owner, model=generative.model, name="production", version_number=generative.version)
    snippets = _snippets(generative, "http://portal.test")
    assert '"model": "iris",' in snippets["curl"]
    assert "model='iris'," in snippets["openai"]


def test_the_page_shows_the_snippets_with_the_page_address(client, owner, generative):
    html = unescape(page(client, owner, generative))
    assert "curl -sN 'http://testserver/v1/chat/completions'" in html
    assert 'OpenAI(base_url="http://testserver/v1"' in html
