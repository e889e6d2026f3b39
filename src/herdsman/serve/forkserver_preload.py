"""Imported by the gateway's fork server at its start (see herdsman.serve.preload)."""

from herdsman.serve.preload import preload

preload()
