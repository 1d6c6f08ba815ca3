"""The version page's snippets run as pasted, with the token in MAAS_TOKEN (no placeholder to edit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from registry.views import _snippets, grpc_address

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]


def test_the_curl_and_python_snippets_answer_as_pasted(gateway_url, token, served, tmp_path):
    snippets = _snippets(served, gateway_url)
    env = {**os.environ, "MAAS_TOKEN": token}
    curl = subprocess.run(["/bin/bash", "-c", snippets["curl"]], env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert curl.returncode == 0, curl.stderr
    answer = json.loads(curl.stdout)
    assert answer["model_name"] == "iris" and answer["outputs"][0]["name"] == "output__0", answer

    script = tmp_path / "snippet.py"
    script.write_text(snippets["python"])
    python = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert python.returncode == 0, python.stderr
    assert "[[" in python.stdout  # the printed output array


def test_the_grpc_snippet_answers_as_pasted(grpc_address, token, served, tmp_path):
    snippets = _snippets(served, "http://127.0.0.1:1", grpc_address)
    script = tmp_path / "snippet_grpc.py"
    script.write_text(snippets["grpc"])
    python = subprocess.run([sys.executable, str(script)], env={**os.environ, "MAAS_TOKEN": token},
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert python.returncode == 0, python.stderr
    assert "[[" in python.stdout


def test_the_grpc_address_is_the_pages_host_on_grpc_binds_port(settings):
    settings.GRPC_BIND = "0.0.0.0:8001"
    assert grpc_address("https://portal.example.com") == "portal.example.com:8001"
    assert grpc_address("http://[::1]:8000") == "[::1]:8001"
    settings.GRPC_BIND = ""
    assert grpc_address("https://portal.example.com") == ""
