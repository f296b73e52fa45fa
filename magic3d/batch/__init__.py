"""``magic3d batch``: many prompts to assets, resumably, locally or on a Ray cluster.

The flow, one module per step:

    input.py       read and check the prompt file (every line before anything runs)
    sources.py     what a line starts from besides its prompt (a run to edit, a mesh, the --from model)
    planners.py    each job planned by its single command's planner: up front, and again where it runs
    manifest.py    batch.sqlite: each job's state, leases, results (a killed driver loses nothing)
    run.py         the driver: options, retries, timeouts, a backend, the summary
    job.py         one job as every backend runs it (the real pipeline, or a hook)
    local_backend.py / ray_backend.py   where jobs run: warm worker processes here, or Ray actors
    worker.py      a local worker: job after job in one process, the prior kept loaded
    report.py      what the watcher sees: JSON events (magic3d/events.schema.json) or bars
    gallery.py     world.usda and index.html over the finished assets
    cli.py         the typer command
"""

from magic3d.batch.run import BatchOptions, BatchSummary, run_batch

__all__ = ["BatchOptions", "BatchSummary", "run_batch"]
