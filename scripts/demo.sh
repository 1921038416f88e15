#!/usr/bin/env bash
# Quick start 1: set up, generate a demo database, cluster it, show what was stored.
EXTRAS="" source "$(dirname "$0")/_venv.sh"
mkdir -p out
DB=out/demo.sqlite
[ -f "$DB" ] || .venv/bin/gpu-cluster demo-db "$DB"
.venv/bin/gpu-cluster plan "$DB" --downsample 10
.venv/bin/gpu-cluster cluster "$DB" --downsample 10 --replace
.venv/bin/gpu-cluster status "$DB"
