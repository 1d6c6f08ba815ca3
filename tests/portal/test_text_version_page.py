"""The version page of Hugging Face text models: the text try-it form and the snippets."""

from __future__ import annotations

import pytest

from portal import text_models
from registry.text_tasks import TextTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def page(client, owner):
    client.force_login(owner)

    def get(version):
        response = client.get(f"/models/{version.model.name}/versions/{version.version}/")
        assert response.status_code == 200
        return response.content.decode()

    return get


def test_fill_mask_page_prefills_an_example_with_the_mask_and_names_the_marker(page, text_version, demo_dirs):
    version = text_version("bert-mlm", TextTask.FILL_MASK, demo_dirs[TextTask.FILL_MASK])
    html = page(version)
    assert 'id="try-it-text-form"' in html and 'data-task="fill-mask"' in html
    assert "Paris is the [MASK] of France.</textarea>" in html
    assert 'id="try-it-mask-note"' in html and "The mask marker is <code>[MASK]</code>" in html
    assert 'id="try-it-top-k"' in html and 'value="5"' in html
    assert 'id="try-it-form"' not in html  # the tensor form's JSON box
    assert "/api/v1/models/bert-mlm/predict/?version=1" in html
    assert "Fill-mask (masked language model)" in html
    assert "Vocabulary" in html and "at most 64 per text" in html


def test_fill_mask_snippets_call_the_friendly_endpoint_and_v2_with_bytes(page, text_version, demo_dirs):
    html = page(text_version("bert-mlm", TextTask.FILL_MASK, demo_dirs[TextTask.FILL_MASK]))
    assert "curl -s &#x27;http://testserver/api/v1/models/bert-mlm/predict/?version=1&#x27;" in html
    assert "&quot;inputs&quot;: &quot;Paris is the [MASK] of France.&quot;" in html
    assert "&quot;parameters&quot;: {&quot;top_k&quot;: 5}" in html
    assert "import requests" in html and "answer[&quot;token_str&quot;]" in html
    assert "httpclient.InferInput(&quot;text&quot;, [1], &quot;BYTES&quot;)" in html
    assert 'id="snippet-openai"' not in html


def test_classifier_page_has_top_k_one_and_no_mask_note(page, text_version, demo_dirs):
    html = page(text_version("reviews", TextTask.TEXT_CLASSIFICATION, demo_dirs[TextTask.TEXT_CLASSIFICATION]))
    assert 'data-task="text-classification"' in html
    assert 'id="try-it-mask-note"' not in html
    assert 'id="try-it-top-k"' in html and 'value="1"' in html
    assert "answer[&quot;label&quot;]" in html


def test_token_classification_page_has_no_top_k(page, text_version, tmp_path):
    directory = text_models.bert_save(tmp_path / "tagger", "token-classification", labels=["O", "B-PER"])
    html = page(text_version("tagger", TextTask.TOKEN_CLASSIFICATION, directory))
    assert 'data-task="token-classification"' in html and 'id="try-it-top-k"' not in html


def test_embeddings_page_shows_the_openai_client_against_v1(page, text_version, tmp_path):
    directory = text_models.bert_save(tmp_path / "encoder", "feature-extraction")
    html = page(text_version("encoder", TextTask.FEATURE_EXTRACTION, directory))
    assert 'id="snippet-openai"' in html
    assert "OpenAI(base_url=&quot;http://testserver/v1&quot;, api_key=os.environ[&quot;MAAS_TOKEN&quot;])" in html
    # v1 holds production: the model's name alone addresses it.
    assert "client.embeddings.create(model=&#x27;encoder&#x27;, input=[" in html
    assert 'id="try-it-top-k"' not in html


def test_a_quote_in_the_example_is_escaped_for_the_shell(page, text_version, demo_dirs):
    version = text_version("bert-mlm", TextTask.FILL_MASK, demo_dirs[TextTask.FILL_MASK])
    version.example_input = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["It's the [MASK]."]}]
    version.save(update_fields=["example_input"])
    html = page(version)
    assert "It&#x27;\\&#x27;&#x27;s the [MASK]." in html


def test_tensor_versions_keep_their_json_form(page, ready_version):
    html = page(ready_version())
    assert 'id="try-it-form"' in html and 'id="try-it-text-form"' not in html
    assert 'client.infer("iris"' in html.replace("&quot;", '"')


def test_the_delete_button_asks_through_a_script_not_an_inline_handler(page, ready_version):
    html = page(ready_version())
    assert "onsubmit" not in html and 'data-confirm="Delete version 1 and its artifact?"' in html


def test_the_mask_marker_recorded_by_validation_is_the_one_shown(page, text_version, demo_dirs):
    version = text_version("bert-mlm", TextTask.FILL_MASK, demo_dirs[TextTask.FILL_MASK])
    version.validation = {**version.validation, "mask_token": "<mask>"}
    version.save(update_fields=["validation"])
    assert "The mask marker is <code>&lt;mask&gt;</code>" in page(version)
