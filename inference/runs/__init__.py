"""The tracked-run engine: one lifecycle and one chunked loop for every kind of long run.

Batch jobs (inference) and evaluation runs (monitoring) are its kinds today; generation
batches and model conversions are next. A kind is a concrete model on `TrackedRun` (or
`ResumableRun`, when it saves outputs in parts as it goes) plus a `ChunkedWork` that says
what one chunk does and what is stored at the end; `work_run` does the rest.

- models: status, timestamps, progress, attempts, the claiming worker, the error.
- lifecycle: claim, heartbeat, checkpoint, fail, retry limit, cancel, enqueue, stale sweep.
- loop: the chunked forward loop.
- arrays: the one `.npz` upload reader (with its decompression-size check), row checks,
  and the runs' stored files.

Import from the modules: `inference.models` imports `inference.runs.models` while apps
load, so this package's own import must stay free of models, Celery tasks and torch.
"""
