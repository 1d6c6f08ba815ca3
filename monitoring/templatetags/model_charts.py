"""What the model page's monitoring charts need to know about the model (loaded by _model_charts.html)."""

from __future__ import annotations

from django import template

from registry.models import RegisteredModel
from registry.text_tasks import TextTask

register = template.Library()


@register.simple_tag
def model_generates(model: RegisteredModel) -> bool:
    """True when some version of the model generates text (its page shows the generation charts)."""
    return model.versions.filter(task=TextTask.TEXT_GENERATION).exists()
