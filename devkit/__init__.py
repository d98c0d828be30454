"""The development kit: what the tests, the benchmarks, ``make demo`` and ``make faults`` share.

- :mod:`~devkit.flaky`: the fault-injection stand-in pipelines (``flaky``, ``flakyslow``,
  ``flakyparts``), loaded through ``PLUGINS=devkit.flaky:SPEC,...``.
- :mod:`~devkit.tiny_diffusers`, :mod:`~devkit.tiny_vibevoice`: tiny random-weight models built
  locally; :mod:`~devkit.gpu`: real weights from a local directory for the GPU tests.
- :mod:`~devkit.speech`, :mod:`~devkit.media_files`, :mod:`~devkit.sample_images`,
  :mod:`~devkit.video_server`: offline speech, media files, sample images, and a local video server.
- :mod:`~devkit.firebase_auth`, :mod:`~devkit.app_check`: users, ID tokens and App Check tokens
  for the emulators; :mod:`~devkit.webapp`: the web client driven headless;
  :mod:`~devkit.apiserver`: the API served in-process with its own settings;
  :mod:`~devkit.fuzz`: the API fuzzed from its OpenAPI document.
- :mod:`~devkit.memdoc`: an in-memory job document for replaying the life cycle;
  :mod:`~devkit.batching`: batching on vs off at the same offered load.
- :mod:`~devkit.fleet`: several GPU service instances on one local stack behind a
  least-connections front, their Firestore calls counted (``bench/scale.py``).

It stands on the production packages and none of them imports it (``tests/unit/test_architecture.py``
holds that arrow); it imports nothing from ``tests``, ``bench`` or ``scripts``. The images do not
ship it (``.dockerignore`` lists what they copy).
"""
