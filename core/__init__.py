"""Shared plumbing at the bottom of the import graph: settings helpers, errors, Redis, throttles.

Nothing here imports an app of the portal; every app may import from here.
"""
