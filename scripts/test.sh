#!/usr/bin/env bash
# Quick start 2: set up with the test extra and run the test suite (CPU only).
EXTRAS="[test]" source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m pytest -q "$@"
