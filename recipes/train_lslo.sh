#!/usr/bin/env bash
# METHOD=lslo of recipes/train.sh (see there for every variable).
METHOD=lslo exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
