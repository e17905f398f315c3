"""Tests of tools/: the offline evaluation, export and training helpers."""
