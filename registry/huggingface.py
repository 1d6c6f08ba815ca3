"""Hugging Face model archives: what an uploaded `save_pretrained` directory holds, checked.

Everything here reads the archive (registry.archives) and its config.json; nothing loads
a model or imports model code. An archive is refused when it could run code on a worker
(pickle weights, custom code through `auto_map`, an architecture the installed
transformers lacks) or could not be served (no safetensors, no tokenizer, a shard index
naming a missing shard, a task that is not served or contradicts the architecture).
The same checks run at upload and again when a worker unpacks the stored archive.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from core.errors import InvalidInput
from registry.archives import WHOLE, ArchiveListing, archive_scan
from registry.text_tasks import (
    LATER_TASKS,
    TASK_ALIASES,
    TEXT_INPUT,
    TextTask,
    labels_from_config,
    task_from_architectures,
    task_signature,
)

CONFIG = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")
# Weight formats that unpickle (or, for TensorFlow/Flax, are not loaded here at all).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".h5", ".msgpack")
# The bytes of a safetensors file read at upload: its header's length and (usually) the header.
SAFETENSORS_HEAD = 256 * 1024
SHARD_RE = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")
# transformers' mapping (in transformers.models.auto.modeling_auto) of the model types it has an
# auto class for, per task (fill-mask needs a masked-LM head…).
TASK_MODEL_TYPES: dict[str, str] = {
    TextTask.FILL_MASK: "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    TextTask.TEXT_CLASSIFICATION: "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    TextTask.TOKEN_CLASSIFICATION: "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    TextTask.FEATURE_EXTRACTION: "MODEL_MAPPING_NAMES",
    TextTask.TEXT_GENERATION: "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
}
# The example text each task is validated with when the uploader gives none.
EXAMPLE_TEXTS: dict[str, str] = {
    TextTask.FILL_MASK: "Paris is the {mask} of France.",
    TextTask.TEXT_CLASSIFICATION: "This movie was wonderful and the actors were great.",
    TextTask.TOKEN_CLASSIFICATION: "Alice lives in London and works at Acme.",
    TextTask.FEATURE_EXTRACTION: "The portal serves language models to every team.",
    TextTask.TEXT_GENERATION: "Once upon a time, the portal",
}
DEFAULT_MASK_TOKEN = "[MASK]"  # noqa: S105 (a token of text, not a secret)
SAVE_HINT = "Save the model with model.save_pretrained(directory) and tokenizer.save_pretrained(directory)."


@dataclass(frozen=True)
class HuggingFaceArchive:
    """A checked Hugging Face archive: its config, task, files and what follows from them."""

    kind: str  # "zip" or "tar.gz"
    root: str  # the top-level folder stripped from the names ("" when the files are at the root)
    files: dict[str, int]  # path relative to the model directory → uncompressed size
    total_bytes: int
    config: dict[str, Any]
    task: str
    signature: dict[str, list[dict[str, Any]]]
    labels: list[str]
    mask_token: str | None

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


def _refuse(message: str, field: str = "file") -> InvalidInput:
    return InvalidInput(message, field=field)


def hf_wanted(name: str) -> int:
    """What a check reads of a member: config.json, shard indexes and tokenizer configs whole,
    the head of each top-level safetensors file (its header), nothing of the rest."""
    if name == CONFIG or name in TOKENIZER_CONFIGS or ("/" not in name and name.endswith(INDEX_SUFFIX)):
        return WHOLE
    if "/" not in name and name.endswith(WEIGHTS_SUFFIX):
        return SAFETENSORS_HEAD
    return 0


def _json_member(listing: ArchiveListing, name: str) -> dict[str, Any] | None:
    raw = listing.contents.get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refuse(f"{name} in the archive is not valid JSON ({exc}).") from None
    if not isinstance(value, dict):
        raise _refuse(f"{name} in the archive is not a JSON object.")
    return value


def _pickles_check(listing: ArchiveListing) -> None:
    pickled = sorted(name for name in listing.files if name.lower().endswith(PICKLE_SUFFIXES))
    if pickled:
        raise _refuse(
            f"The archive contains {pickled[0]!r}, a pickle-based (or non-PyTorch) weight file; "
            "weights are accepted only as safetensors (save_pretrained(..., safe_serialization=True)). "
            f"Remove {', '.join(repr(name) for name in pickled)} from the directory and upload it again."
        )


def _weights_check(listing: ArchiveListing) -> None:
    root_files = {name for name in listing.files if "/" not in name}
    indexes = sorted(name for name in root_files if name.endswith(INDEX_SUFFIX))
    weights = {name for name in root_files if name.endswith(WEIGHTS_SUFFIX)}
    if not weights:
        raise _refuse(f"The archive holds no *.safetensors weights at the model directory's top level. {SAVE_HINT}")
    shards: set[str] = set()
    for index_name in indexes:
        index = _json_member(listing, index_name) or {}
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise _refuse(f"{index_name} has no weight_map naming the shards.")
        for shard in sorted({str(value) for value in weight_map.values()}):
            if shard not in root_files:
                raise _refuse(f"{index_name} names the shard {shard!r}, which is missing from the archive.")
            shards.add(shard)
    for name in sorted(weights):
        _safetensors_header_check(name, listing.files[name], listing.contents.get(name, b""))
    unindexed = sorted(name for name in weights - shards if SHARD_RE.search(name))
    if unindexed:
        raise _refuse(
            f"{unindexed[0]!r} is one shard of sharded weights, but the archive has no "
            "model.safetensors.index.json naming the shards; upload the whole save_pretrained directory."
        )


def _safetensors_header_check(name: str, size: int, head: bytes) -> None:
    """Refuse a file named .safetensors that is not one: an 8-byte header length, then a JSON
    header whose tensors lie inside the file. (Loading never unpickles; this names the file early.)"""
    problem = f"{name!r} is not a valid safetensors file"
    if size < 8 or len(head) < 8:
        raise _refuse(f"{problem} (too short).")
    length = int.from_bytes(head[:8], "little")
    if length < 2 or 8 + length > size:
        raise _refuse(f"{problem} (its header length {length} does not fit the file's {size} bytes).")
    if len(head) < 8 + length:
        return  # a header larger than what was read: its bounds were checked, safetensors checks the rest
    try:
        header = json.loads(head[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _refuse(f"{problem} (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise _refuse(f"{problem} (its header is not a JSON object).")
    data_bytes = size - 8 - length
    for tensor, spec in header.items():
        if tensor == "__metadata__":
            continue
        offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(offset, int) for offset in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise _refuse(f"{problem} (tensor {tensor!r} lies outside the file).")


@functools.cache
def _transformers() -> Any:
    """transformers, imported at the first Hugging Face upload rather than with this module: every
    web process, worker and model host imports the registry, and the library takes seconds to import."""
    import transformers

    return transformers


@functools.cache
def _transformers_names() -> frozenset[str]:
    """The public names of the installed transformers (listing its lazy module costs ~0.2 s once)."""
    return frozenset(dir(_transformers()))


def _config_model_types() -> Mapping[str, object]:
    """The model types the installed transformers has a configuration class for."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return CONFIG_MAPPING_NAMES


def _task_model_types(task: str) -> Mapping[str, object]:
    """The model types the installed transformers has an auto class for, for `task`."""
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, TASK_MODEL_TYPES[task])  # type: ignore[no-any-return]


def _config_check(config: dict[str, Any]) -> None:
    version = _transformers().__version__
    if "auto_map" in config:
        raise _refuse(
            "config.json declares auto_map (model code shipped inside the archive); trust_remote_code is never "
            f"enabled, so only architectures of the installed transformers {version} are served."
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise _refuse(f"config.json has no model_type; it is not a transformers configuration. {SAVE_HINT}")
    if model_type not in _config_model_types():
        raise _refuse(
            f"config.json's model_type {model_type!r} needs code outside the installed transformers {version} "
            "(custom code is never run)."
        )
    architectures = config.get("architectures")
    if architectures is None:
        return
    if not isinstance(architectures, list) or not all(isinstance(name, str) for name in architectures):
        raise _refuse("config.json's architectures must be a list of class names.")
    unknown = [name for name in architectures if name not in _transformers_names()]
    if unknown:
        raise _refuse(
            f"config.json's architecture {unknown[0]!r} needs code outside the installed transformers {version} "
            "(custom code is never run)."
        )


def _tokenizer_check(listing: ArchiveListing) -> None:
    root = {name for name in listing.files if "/" not in name}
    if not (
        "tokenizer.json" in root
        or "vocab.txt" in root
        or {"vocab.json", "merges.txt"} <= root
        or any(name.endswith(".model") for name in root)
    ):
        raise _refuse(
            "The archive is missing tokenizer files: it needs tokenizer.json, vocab.txt, vocab.json with "
            f"merges.txt, or a sentencepiece *.model beside config.json. {SAVE_HINT}"
        )
    for name in TOKENIZER_CONFIGS:
        if "auto_map" in (_json_member(listing, name) or {}):
            raise _refuse(
                f"{name} declares auto_map (tokenizer code shipped inside the archive); "
                "trust_remote_code is never enabled."
            )


def hf_files_check(listing: ArchiveListing) -> dict[str, Any]:
    """The archive's config after every safety and completeness check; InvalidInput naming the problem.

    This is what a worker repeats when it unpacks a stored archive: it depends on the
    files alone, not on what the uploader declared.
    """
    _pickles_check(listing)
    config = _json_member(listing, CONFIG)
    if config is None:
        nested = sorted(name for name in listing.files if name.endswith("/" + CONFIG))
        where = f" (found only {nested[0]!r}; put the model's files at the archive's top level)" if nested else ""
        raise _refuse(f"The archive has no config.json at the model directory's top level{where}. {SAVE_HINT}")
    _weights_check(listing)
    _config_check(config)
    _tokenizer_check(listing)
    return config


def task_parse(raw: str | None) -> str | None:
    """A declared task in canonical form (aliases resolved), None when none was declared."""
    if raw is None or not str(raw).strip():
        return None
    task = str(raw).strip().lower()
    task = TASK_ALIASES.get(task, task)
    if task in LATER_TASKS:
        raise _refuse(f"The task {task!r} cannot be uploaded yet: {LATER_TASKS[task]}.", "task")
    if task not in TextTask.values:
        choices = ", ".join([*TextTask.values, *TASK_ALIASES])
        raise _refuse(f"task {raw!r} is not one of {choices}.", "task")
    return task


def hf_task(config: dict[str, Any], declared: str | None) -> str:
    """The task to serve: the declared one (checked against the architecture) or the one it implies."""
    task = task_parse(declared)
    architectures = config.get("architectures") or []
    inferred = task_from_architectures(architectures)
    if task is None:
        if inferred is None:
            named = f" ({', '.join(architectures)})" if architectures else " (config.json names no architectures)"
            raise _refuse(
                f"The task cannot be inferred from the architecture{named}; declare it as one of "
                f"{', '.join(TextTask.values)}.",
                "task",
            )
        if inferred in LATER_TASKS:
            raise _refuse(
                f"{architectures[0]} is a {inferred} model, which cannot be uploaded yet: {LATER_TASKS[inferred]}.",
                "task",
            )
        task = inferred
    # Any encoder yields embeddings (its base model loads from a checkpoint with a head),
    # but a head task needs the architecture that carries that head.
    elif task != TextTask.FEATURE_EXTRACTION and inferred is not None and inferred != task:
        raise _refuse(
            f"The task {task!r} contradicts config.json's architecture {architectures[0]} (a {inferred} model); "
            f"declare {inferred!r} or leave the task to be inferred.",
            "task",
        )
    model_type = str(config.get("model_type"))
    if model_type not in _task_model_types(task):
        raise _refuse(
            f"The installed transformers {_transformers().__version__} has no {task} model "
            f"for model_type {model_type!r}.",
            "task",
        )
    return task


def _mask_token(listing: ArchiveListing) -> str | None:
    for name in TOKENIZER_CONFIGS:
        token = (_json_member(listing, name) or {}).get("mask_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and token:
            return token
    return None


def hf_archive(listing: ArchiveListing, task: str | None = None) -> HuggingFaceArchive:
    """Check a scanned archive and derive its task, signature and labels."""
    config = hf_files_check(listing)
    resolved = hf_task(config, task)
    classifying = resolved in (TextTask.TEXT_CLASSIFICATION, TextTask.TOKEN_CLASSIFICATION)
    return HuggingFaceArchive(
        kind=listing.kind,
        root=listing.root,
        files=dict(listing.files),
        total_bytes=listing.total_bytes,
        config=config,
        task=resolved,
        signature=task_signature(resolved, config),
        labels=labels_from_config(config) if classifying else [],
        mask_token=_mask_token(listing),
    )


def hf_inspect(stream: IO[bytes], task: str | None = None) -> HuggingFaceArchive:
    """Scan an uploaded archive stream (nothing is written) and check it as a Hugging Face model."""
    return hf_archive(archive_scan(stream, hf_wanted), task)


def hf_example_text(archive: HuggingFaceArchive) -> str:
    """The text a version is validated with when the uploader gives none."""
    return EXAMPLE_TEXTS[archive.task].format(mask=archive.mask_token or DEFAULT_MASK_TOKEN)


def hf_example(archive: HuggingFaceArchive, example: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The example input stored with the version: the uploader's text (checked) or the task's default.

    A text example is one BYTES tensor named `text` holding UTF-8 strings.
    """
    if not example:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [1], "data": [hf_example_text(archive)]}]
    if len(example) != 1 or example[0]["name"] != TEXT_INPUT or example[0]["datatype"] != "BYTES":
        raise _refuse(
            f'A Hugging Face model\'s example_input is one BYTES input named "{TEXT_INPUT}": '
            f'{{"inputs": [{{"name": "{TEXT_INPUT}", "datatype": "BYTES", "data": ["a sentence"]}}]}}.',
            "example_input",
        )
    texts = example[0]["data"]
    if archive.task == TextTask.FILL_MASK and archive.mask_token:
        missing = next((text for text in texts if archive.mask_token not in text), None)
        if missing is not None:
            raise _refuse(f"The fill-mask example {missing!r} has no mask token {archive.mask_token}.", "example_input")
    return example


__all__ = [
    "HuggingFaceArchive",
    "hf_archive",
    "hf_example",
    "hf_example_text",
    "hf_files_check",
    "hf_inspect",
    "hf_task",
    "hf_wanted",
    "task_parse",
]
