"""Hostile: leaves the interpreter at import, skipping every handler."""

import os

os._exit(3)
