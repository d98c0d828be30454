"""The HTTP API: what apps and servers without the Firebase SDK call, with a Firebase ID token.

* :mod:`api.app`: the FastAPI application (routes, CORS, the error shape);
* :mod:`api.auth`: who is calling (Firebase ID tokens, verified with ``firebase-admin``);
* :mod:`api.jobs`: create, read, list, cancel, results and the event stream of a job;
* :mod:`api.signing`: short-lived V4 signed URLs for uploads and results;
* :mod:`api.models`: the request and response bodies.
* :mod:`api.openai_speech`: OpenAI's ``POST /v1/audio/speech`` on the ``tts`` pipeline.

Creating a job here writes the job document exactly as a client app does and then runs the
job-created handler in-process (``functions.handlers.handle_job_created``), so validation and
quotas have one code path, and the answer says at once whether the job was queued or why not.
"""
