"""The model sandbox: model code runs only in model hosts that hold no secret.

- policy: what a host restricts itself to (Landlock, seccomp, no capabilities);
- channel: the msgpack frames between a host and its trusted parent;
- spawn: the parent's side (scrubbed environment, settings, file policy, start/stop);
- host / hosted: the host process itself (serving loops, or a task's requests);
- supervisor: the serving host of a Celery pool process, kept up;
- client: validation, batch jobs and evaluations through a host of their own.
"""
