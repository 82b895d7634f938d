"""Checking student backprop submissions: sandboxed runner, adapters, checks, diagnosis, reports."""
