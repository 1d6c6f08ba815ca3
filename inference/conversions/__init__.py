"""Conversions: a ready version turned into a derived one (ONNX, ONNX int8, fp16) by a tracked run.

- recipes: which targets a source may take, their options and tolerances, the comparison (pure).
- export: what the sandboxed host does (export, quantise, time, compare); imports torch and onnx.
- work: the tracked run's steps on a worker, and the child version it stores at the end.
- services: start, cancel, list, lineage (what views, the API and the command call).

Import from the modules: this package's own import stays free of models and torch.
"""
