"""Browser forms of batch jobs; rules stay in the jobs services."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from inference.jobs import MAX_CHUNK_SIZE
from inference.models import DataFormat
from registry import selectors
from registry.access import Action


class BatchJobForm(forms.Form):
    model = forms.ChoiceField(help_text="The models you may run predictions on.")
    version = forms.IntegerField(min_value=1, required=False, help_text="A version number, or leave empty.")
    alias = forms.CharField(
        max_length=32, required=False, help_text="Used when no version is given; default: production."
    )
    file = forms.FileField(
        help_text=".npz with one array per input (rows first), or JSON lines with one object "
        '{"<input name>": [...]} per example; for a text-generation model, JSON lines of '
        '{"prompt": "..."} or {"messages": [...]}.'
    )
    result_format = forms.ChoiceField(choices=[("", "same as the input"), *DataFormat.choices], required=False)
    chunk_size = forms.IntegerField(
        min_value=1,
        max_value=MAX_CHUNK_SIZE,
        required=False,
        help_text="Rows per forward pass (text generation: rows per progress update); default: the version's "
        "batch size (text generation: GENERATION_MAX_SEQUENCES).",
    )
    max_tokens = forms.IntegerField(
        min_value=1,
        required=False,
        help_text="Text generation: the most tokens a line may generate when it does not say; default: the model's.",
    )
    temperature = forms.FloatField(
        min_value=0.0,
        max_value=2.0,
        required=False,
        help_text="Text generation: the temperature of lines that do not say (0 = greedy); default: 1.",
    )

    def __init__(self, user: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only models the user may predict with: a viewer's job would be refused.
        names = [model.name for model in selectors.models_permitting(user, Action.PREDICT)]
        cast(forms.ChoiceField, self.fields["model"]).choices = [(name, name) for name in names]
