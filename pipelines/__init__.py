"""Inference pipelines. Pure model code: no Pub/Sub, Firestore, HTTP or environment access.

Each pipeline is a subpackage whose ``__init__`` exposes a cheap ``SPEC`` (see ``core.spec``);
``pipelines.registry`` finds the built-in ones and third-party plugins.
"""
