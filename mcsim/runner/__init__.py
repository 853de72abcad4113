"""The runner: from a scenario to a result store.

* :mod:`mcsim.runner.plan`: the tasks of a scenario (sweep point, trial block, image shard).
* :mod:`mcsim.runner.worker`: the :class:`~mcsim.runner.worker.Worker` that runs tasks (model and
  data loaded once); executors wrap it.
* :mod:`mcsim.runner.jobs`: the job queue of both executors (groups, retries).
* :mod:`mcsim.runner.local`: the local executor (worker processes on this machine).
* :mod:`mcsim.runner.ray_executor`: the Ray executor (a pool of Ray actors, on this machine or a cluster).
* :mod:`mcsim.runner.store`: the Zarr result store, its ledger of finished tasks, and
  :func:`~mcsim.runner.store.open_result`.
* :mod:`mcsim.runner.events`: what a run reports (the CLI draws it).
* :mod:`mcsim.runner.driver`: ties them together: preflight, resume, phases.

The runner knows no physics: it asks the engine for converted models and counts correct answers.
"""
