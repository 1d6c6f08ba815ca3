"""Browser forms of the registry; rules stay in services."""

from __future__ import annotations

from typing import Any

from django import forms

from registry.models import ModelFormat, ModelVersion, RegisteredModel, Visibility
from registry.sources import SOURCE_KEYS, source_from_lines
from registry.text_tasks import TextTask

TAGS_HELP = "Comma-separated; key=value tags (team=search, dataset=reviews-v2) work too."


class ModelCreateForm(forms.Form):
    name = forms.CharField(max_length=64, help_text="Letters, digits, '.', '_' or '-'. Used in URLs.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    tags = forms.CharField(required=False, help_text="Comma-separated.")
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.PRIVATE)


class InlineEditForm(forms.Form):
    """Description and tags: what the inline edits of a model and of a version share."""

    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    tags = forms.CharField(required=False, help_text=TAGS_HELP)

    @classmethod
    def of(cls, obj: RegisteredModel | ModelVersion, prefix: str, **initial: Any) -> InlineEditForm:
        """The form filled with the object's current values, its ids prefixed (two forms on a page stay apart)."""
        tags = ", ".join(sorted(tag.name for tag in obj.tags.all()))
        return cls(initial={"description": obj.description, "tags": tags, **initial}, auto_id=f"{prefix}-%s")


class ModelEditForm(InlineEditForm):
    """The model page's inline edit: what a maintainer may change without the admin."""

    visibility = forms.ChoiceField(choices=Visibility.choices)


class VersionEditForm(InlineEditForm):
    """The version page's inline edit (the artifact, signature and source stay as uploaded)."""


class VersionUploadForm(forms.Form):
    file = forms.FileField(
        help_text="TorchScript (torch.jit.save, .pt), torch.export (torch.export.save, .pt2), ONNX (.onnx, or "
        "with its external data as one .zip or .tar.gz), or a Hugging Face save_pretrained directory packed as one "
        ".zip or .tar.gz.",
        widget=forms.ClearableFileInput(attrs={"accept": ".pt,.pt2,.pth,.onnx,.zip,.tar.gz,.tgz"}),
    )
    format = forms.ChoiceField(choices=[("", "detect from the file"), *ModelFormat.choices], required=False)
    task = forms.ChoiceField(
        choices=[("", "infer from config.json"), *TextTask.choices],
        required=False,
        help_text="Hugging Face models only: what the model does. Left to infer, it follows from config.json's "
        "architectures (BertForMaskedLM → fill-mask, BertModel → feature extraction). The signature, labels "
        "(id2label) and an example text follow from the archive; leave signature and labels empty.",
    )
    signature = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 4, "placeholder": '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]}'}
        ),
        required=False,
        help_text="Inputs (and optionally outputs) with name, datatype and shape; -1 marks a variable size. "
        "ONNX models: read from the graph when left empty.",
    )
    example_input = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": '{"inputs": [{"name": "x", "datatype": "FP32", "data": [[0.1, 0.2]]}]}'}
        ),
        required=False,
        help_text="Or an example input to infer the signature from (its first dimension becomes the batch).",
    )
    labels = forms.CharField(required=False, help_text="Class names in output order, comma-separated (optional).")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    tags = forms.CharField(required=False, help_text=TAGS_HELP)
    # Source metadata (registry.sources): the named keys, then any key=value lines. The page's
    # script sends them to the API as one JSON object `source`; without it, source() does.
    source_run_url = forms.CharField(
        required=False,
        label=f"Source: {SOURCE_KEYS['run_url']}",
        help_text="A link to the training run (http:// or https://), e.g. the experiment tracker's page.",
        widget=forms.URLInput(attrs={"data-source-key": "run_url", "placeholder": "https://"}),
    )
    source_git_commit = forms.CharField(
        required=False,
        label=f"Source: {SOURCE_KEYS['git_commit']}",
        widget=forms.TextInput(attrs={"data-source-key": "git_commit"}),
    )
    source_dataset = forms.CharField(
        required=False,
        label=f"Source: {SOURCE_KEYS['dataset']}",
        widget=forms.TextInput(attrs={"data-source-key": "dataset"}),
    )
    source_run_id = forms.CharField(
        required=False,
        label=f"Source: {SOURCE_KEYS['run_id']}",
        widget=forms.TextInput(attrs={"data-source-key": "run_id"}),
    )
    source_more = forms.CharField(
        required=False,
        label="Source: more",
        help_text="key=value per line (framework=pytorch-2.13, notebook_url=https://…); *_url values are links.",
        widget=forms.Textarea(attrs={"rows": 2, "data-source-lines": "", "placeholder": "key=value"}),
    )

    def source(self) -> dict[str, str]:
        """The source fields as one object (the service checks keys, values and URLs)."""
        data = self.cleaned_data
        named = {key: data[f"source_{key}"] for key in SOURCE_KEYS if data.get(f"source_{key}")}
        return {**source_from_lines(data.get("source_more") or ""), **named}


class AliasSetForm(forms.Form):
    alias = forms.CharField(max_length=32)
    version = forms.IntegerField(min_value=1)
    force = forms.BooleanField(required=False)


class VersionSettingsForm(forms.Form):
    """A version's serving settings; an empty field leaves its value as it is."""

    max_batch_size = forms.IntegerField(required=False, help_text="Rows stacked into one forward pass (1-4096).")
    max_batch_delay_ms = forms.IntegerField(
        required=False, help_text="How long the gateway may hold a request to fill a batch (0-1000 ms)."
    )
    max_tokens_default = forms.IntegerField(
        required=False, help_text="Text generation: max_tokens of a request that leaves it out."
    )
    max_tokens_limit = forms.IntegerField(
        required=False, help_text="Text generation: the most max_tokens a request may ask for (within the context)."
    )
