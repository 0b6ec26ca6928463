#!/usr/bin/env bash
# METHOD=lslo_prune of recipes/train.sh (see there for every variable).
METHOD=lslo_prune exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
