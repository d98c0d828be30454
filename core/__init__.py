"""The ground floor: the vocabulary every other package shares, importing nothing of ours.

* :mod:`core.contract`: the job document (the public API), its states and allowed transitions;
* :mod:`core.errors`: the named errors a job can end with;
* :mod:`core.spec`: what a pipeline is (``PipelineSpec``, ``RunContext``, ``RunResult``);
* :mod:`core.work`: one kind of leased work (a job, or one part of it), addressed by one value;
* :mod:`core.lifecycle`: every decision of a running attempt as a pure function of the typed
  document; :mod:`core.recovery`, the moves made from outside one (recovery, transitions); and
  :mod:`core.decisions`, what those decisions take and give;
* :mod:`core.patch`: typed writes to the job document (unknown fields refused);
* :mod:`core.routes`: topic, subscription and push-path names, built in one place;
* :mod:`core.pubsub`: Pub/Sub's limits on a route's settings, written once.

``pipelines/`` and ``infra/`` both stand on this package; it depends on pydantic and the
standard library only.
"""
